# syntax=docker/dockerfile:1
# mono-proxy sidecar image: a static-enough release binary on debian-slim, running as non-root.
#
#   docker build -t mono-proxy .
#   docker run --rm -p 127.0.0.1:8080:8080 -e MONO_SEC_KEY=live_sk_... mono-proxy
#
# See docs/deploy.md for Kubernetes (native sidecar) and docker compose examples.

# ---- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml names the benches, so they must exist for the manifest to load.
COPY benches ./benches
# Cache mounts keep the registry and compiled dependencies between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mono-proxy \
    && install -D -m 0755 target/release/mono-proxy /out/mono-proxy \
    && strip /out/mono-proxy

# ---- run ---------------------------------------------------------------------------------
FROM debian:bookworm-slim
# CA roots for the upstream are compiled in (webpki-roots); ca-certificates is here for any
# `ca_file` an operator points at the system bundle, and costs a few hundred KiB.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 mono-proxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin mono-proxy
COPY --from=build /out/mono-proxy /usr/local/bin/mono-proxy

# Inside a container the proxy must listen beyond loopback to be reachable through a published
# port or from another container. Anything that reaches port 8080 can spend the Mono key: keep
# it on a trusted network, set MONO_PROXY_LISTEN=127.0.0.1:8080 when the app shares the network
# namespace (a Kubernetes pod), or require [[clients]] tokens. See docs/deploy.md.
# The admin listener stays on the container's loopback (the HEALTHCHECK runs inside): beyond
# loopback it requires [admin] token. For kubelet httpGet probes or Prometheus, set
# MONO_PROXY_ADMIN_LISTEN=0.0.0.0:9901 and MONO_PROXY_ADMIN_TOKEN (docs/deploy.md).
ENV MONO_PROXY_LISTEN=0.0.0.0:8080 \
    MONO_PROXY_ADMIN_LISTEN=127.0.0.1:9901 \
    MONO_PROXY_PUBLIC_BASE_URL=http://127.0.0.1:8080 \
    MONO_PROXY_LOG_FORMAT=json
EXPOSE 8080 9901
USER 10001:10001

# The binary probes its own admin listener: the address comes from the same environment
# (MONO_PROXY_ADMIN_LISTEN) and config as the proxy's, so moving the port moves the probe.
# `--ready` probes /readyz instead (a Kubernetes readiness exec probe).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/mono-proxy", "healthcheck"]

# SIGTERM: /readyz turns 503, in-flight requests drain ([server] drain_timeout), exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/mono-proxy"]
