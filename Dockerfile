# syntax=docker/dockerfile:1.7
# The devcycle image: the one `devcycle` binary on a small Debian runtime,
# running as an unprivileged user, with bubblewrap for executors' sandboxes.
#
# Reproducible build (docs/deploy.md, "Image"):
#   docker buildx build \
#     --build-arg SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) \
#     --output type=image,name=devcycle:0.1.0,rewrite-timestamp=true .
# Base images are exact tags; CI should pin them to digests by passing
# RUST_IMAGE=...@sha256:... and RUNTIME_IMAGE=...@sha256:...
# (`docker buildx imagetools inspect <tag>` prints the digest).
ARG RUST_IMAGE=docker.io/library/rust:1.95.0-trixie
ARG RUNTIME_IMAGE=docker.io/library/debian:13.4-slim

# ---------------------------------------------------------------- build
FROM ${RUST_IMAGE} AS build
ARG SOURCE_DATE_EPOCH=0
ENV SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH} \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    # No build path or user name in the binary: the same source gives the same bytes.
    RUSTFLAGS="--remap-path-prefix=/src=/devcycle --remap-path-prefix=/usr/local/cargo=/cargo"
# librdkafka is built from source by rdkafka-sys (make, a C compiler, zlib);
# protox compiles the protos, so no protoc is needed.
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        build-essential pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release -p devcycle-cli --bin devcycle \
 && install -D -m 0755 target/release/devcycle /out/devcycle

# -------------------------------------------------------------- runtime
FROM ${RUNTIME_IMAGE} AS runtime
ARG SOURCE_DATE_EPOCH=0
# Extra Debian packages the agents need, e.g. "python3 git" for the shipped
# examples/agents; none by default to keep the image small.
ARG EXTRA_PACKAGES=""
# ca-certificates: http agents and external JWKS (rustls reads the system
# roots where webpki roots are not used); bubblewrap: the executor's sandbox;
# tini: reaps orphaned agent processes as PID 1 and forwards signals;
# tzdata: the time zones of cron schedules.
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        ca-certificates bubblewrap tini tzdata zlib1g ${EXTRA_PACKAGES} \
 && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log /var/cache/ldconfig/aux-cache \
 && groupadd --system --gid 10001 devcycle \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/devcycle --shell /usr/sbin/nologin devcycle \
 # Mount points owned by the user, so fresh named volumes inherit it.
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/devcycle /etc/devcycle/pki /var/run/devcycle
COPY --from=build /out/devcycle /usr/local/bin/devcycle
COPY examples/agents /usr/share/devcycle/agents
ENV DEVCYCLE_DATA_DIR=/var/lib/devcycle \
    DEVCYCLE_EXECUTOR__AGENT_DIR=/usr/share/devcycle/agents \
    DEVCYCLE_LOG__FORMAT=json
USER 10001:10001
WORKDIR /var/lib/devcycle
# 7400 gateway, 7401 registry, 7402 scheduler, 7403 executor, 7410 health, 9464 metrics
EXPOSE 7400 7401 7402 7403 7410 9464
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/devcycle"]
CMD ["--help"]
