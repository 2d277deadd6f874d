# syntax=docker/dockerfile:1
# The `tokentally` binary on a small Debian runtime (used by docker-compose.yml).
#   docker build -t tokentally .
#   docker run --rm tokentally --help
#
# Stage 1 builds with the Rust toolchain (the bundled librdkafka is compiled
# with cc/make, against the system's zlib, OpenSSL and libzstd); stage 2
# keeps only the binary, the OpenSSL and zstd libraries (Kafka's TLS, SASL
# and zstd compression), CA certificates (the roots every TLS client trusts) and
# curl (for health checks), and runs as a non-root user.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl-dev libzstd-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tokentally \
    && install -m 0755 target/release/tokentally /usr/local/bin/tokentally

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl libssl3 libzstd1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/tokentally tokentally \
    && mkdir -p /var/lib/tokentally/alerts /etc/tokentally \
    && chown -R tokentally:tokentally /var/lib/tokentally
COPY --from=builder /usr/local/bin/tokentally /usr/local/bin/tokentally
USER tokentally
WORKDIR /var/lib/tokentally
# 8080: gateway HTTP ingest; 9101-9104: /metrics of gateway, aggregate, alerts, simulate.
EXPOSE 8080 9101 9102 9103 9104
ENTRYPOINT ["tokentally"]
CMD ["--help"]
