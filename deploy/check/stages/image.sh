# shellcheck shell=bash
# Stage image: the runtime image is built with podman from the binary stage's binary, with
# the Dockerfile's `prebuilt` target (nothing pulled), and its config is checked (user,
# ports, healthcheck, entrypoint, stop signal, one layer: deploy/check/image_config.py).
# The image is removed on exit unless PGWAY_CHECK_KEEP_IMAGE=1.

define_stage image "the runtime image builds from the binary with podman (nothing pulled) and its config is right" \
    tools="podman" after="binary"

IMAGE_MB=""     # for the run stage's closing line

stage_image() {
    local start image_bytes
    log "runtime image (podman, from the prebuilt binary, nothing pulled)"
    on_exit cleanup_image
    # What an interrupted earlier run may have left.
    podman rm -f -t 0 "$CONTAINER" >/dev/null 2>&1 || true
    podman secret rm "$SECRET" >/dev/null 2>&1 || true
    podman secret rm "$TOKENS_SECRET" >/dev/null 2>&1 || true
    podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
    podman images -aq --no-trunc | sort -u >"$WORK/images.before"
    mkdir -p "$WORK/context"
    # Stripped, as the Dockerfile's build stage does (the release profile keeps std's symbols).
    strip --strip-all -o "$WORK/context/pgway" "$BINARY"
    start=$(now_ms)
    podman build --quiet --pull=never --format docker --target prebuilt \
        -f "$ROOT/Dockerfile" -t "$IMAGE" "$WORK/context" >/dev/null ||
        die "podman build"
    image_bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
    IMAGE_MB=$(awk -v b="$image_bytes" 'BEGIN { printf "%.1f", b / 1000000 }')
    ok "image $IMAGE built in $(( ($(now_ms) - start) / 1000 ))s: $IMAGE_MB MB ($image_bytes bytes)"
    if python3 "$CHECK_DIR/image_config.py" "$IMAGE"; then
        ok "image config: user, ports, healthcheck, entrypoint, stop signal"
    else
        bad "image config"
    fi
}
