# syntax=docker/dockerfile:1
#
# scopegate container image: a release build on Debian 12, run on distroless
# (glibc + libgcc + CA certificates, no shell, no package manager) as the
# nonroot user (UID/GID 65532).
#
#   docker build -t scopegate:dev .
#   docker run --rm -p 9001:9001 -p 9090:9090 scopegate:dev serve --policies /policies  # + a volume
#
# Dependencies are compiled in their own layer (cargo-chef), so a change to
# src/ rebuilds only scopegate itself.

ARG RUST_VERSION=1.95
ARG CARGO_CHEF_VERSION=0.1.78

# --- toolchain + cargo-chef ----------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS chef
ARG CARGO_CHEF_VERSION
# cmake for aws-lc-sys (the crypto backend of the JWT verifier and of rustls).
# Unpinned on purpose: the Debian release pins it, and builds stay reproducible
# enough through the pinned base image tag.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /build

# --- the dependency recipe: changes only when Cargo.toml / Cargo.lock do -----
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# --- build ---------------------------------------------------------------------
FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
# Dependencies only: this layer is reused until the recipe changes.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin scopegate
# Sources (the context is filtered by .dockerignore).
COPY . .
RUN cargo build --release --locked --bin scopegate \
 && cp target/release/scopegate /scopegate \
 && /scopegate --version

# --- runtime -------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="scopegate" \
      org.opencontainers.image.description="Bearer-token (JWT) validation for Envoy and Istio ext_authz" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/scopegate/scopegate" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=builder /scopegate /usr/local/bin/scopegate
USER 65532:65532
# 9001: gRPC ext_authz (+ grpc.health.v1, reflection); 9090: /healthz /readyz /metrics.
EXPOSE 9001 9090
ENTRYPOINT ["/usr/local/bin/scopegate"]
CMD ["serve", "--kubernetes"]
