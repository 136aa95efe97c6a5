# pgway container image: a static binary on an empty (scratch) base.
#
# Normal build (needs a registry for the Rust image):
#   docker build -t pgway .
#   podman build --format docker -t pgway .    # --format docker keeps the HEALTHCHECK
#
# From a static binary built beforehand (no registry needed; what deploy/check.sh does):
#   RUSTFLAGS='-C target-feature=+crt-static' \
#     cargo build --release --locked --target x86_64-unknown-linux-gnu
#   mkdir -p /tmp/ctx && strip -o /tmp/ctx/pgway target/x86_64-unknown-linux-gnu/release/pgway
#   podman build --format docker --target prebuilt -f Dockerfile -t pgway /tmp/ctx
#
# Both produce the same image: the `runtime` stage below with /pgway added, from the `build`
# stage by default (the last stage), or from the build context's file `pgway` with
# `--target prebuilt`, which never builds nor pulls the Rust stage. (A stage chosen through
# an ARG in FROM would be neater, but buildah, podman's builder, does not follow such a
# reference when it skips unused stages.)

# ---- build: a glibc static release binary (no libc needed at run time) --------------------
FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
COPY . .
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    host="$(rustc -vV | sed -n 's/^host: //p')" \
    && RUSTFLAGS='-C target-feature=+crt-static' \
       cargo build --release --locked --bin pgway --target "$host" \
    && mkdir -p /out \
    && strip --strip-all -o /out/pgway "target/$host/release/pgway" \
    && /out/pgway --version

# ---- runtime: everything but the binary --------------------------------------------------
FROM scratch AS runtime
LABEL org.opencontainers.image.title="pgway" \
      org.opencontainers.image.description="A gRPC gateway for PostgreSQL" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed, numeric non-root UID/GID (so Kubernetes' runAsNonRoot can check it). The image
# has no /etc/passwd: nothing in pgway needs a user name.
USER 65532:65532
# gRPC (PGWAY_GRPC_ADDR), the PostgreSQL door (PGWAY_PG_ADDR) and Prometheus metrics at
# /metrics (PGWAY_METRICS_ADDR).
EXPOSE 50051/tcp 6432/tcp 9090/tcp
# Readiness: SERVING once the database answers. Change -addr if PGWAY_GRPC_ADDR moves the port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/pgway", "probe", "-service=pgway.v1.Database"]
# pgway handles SIGTERM itself as PID 1: NOT_SERVING at once, in-flight calls get
# PGWAY_SHUTDOWN_GRACE (default 20s), then exit 0. Give `docker/podman stop -t` more than that
# (twice the grace covers a stream still open when the grace ends).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/pgway"]
CMD ["serve"]

# ---- prebuilt: the runtime with a static binary handed in as `pgway` in the build context -
FROM runtime AS prebuilt
COPY --chmod=0555 pgway /pgway

# ---- the default image: the runtime with the binary from the build stage -----------------
FROM runtime
COPY --from=build --chmod=0555 /out/pgway /pgway
