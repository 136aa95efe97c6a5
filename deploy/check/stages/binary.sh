# shellcheck shell=bash
# Stage binary: a static release binary is built for x86_64-unknown-linux-gnu, glibc-static
# (no INTERP, nothing NEEDED), at $CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/pgway
# (default target/): keep CARGO_TARGET_DIR between runs and the build is incremental.

define_stage binary "the static release binary builds (+crt-static) and links nothing dynamically"

stage_binary() {
    local start elf
    log "static release binary"
    start=$(now_ms)
    if ! RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --locked --bin pgway --target "$TARGET" >"$WORK/cargo.log" 2>&1; then
        tail -n 60 "$WORK/cargo.log"
        die "cargo build --release --target $TARGET (static)"
    fi
    grep -E '^\s*(warning|Finished)' "$WORK/cargo.log" | tail -n 5 || true
    [ -x "$BINARY" ] || die "no binary at $BINARY"
    elf="$(readelf -l -d "$BINARY" 2>&1 || true)"
    if grep -q 'INTERP\|(NEEDED)' <<<"$elf"; then
        die "$BINARY is dynamically linked"
    fi
    ok "static binary $(du -h "$BINARY" | cut -f1) built in $(( ($(now_ms) - start) / 1000 ))s"
}
