# syntax=docker/dockerfile:1
# Build one service of the workspace:
#   docker build --build-arg SERVICE=command-service -t bank/command-service:dev .
#   docker build --build-arg SERVICE=query-service   -t bank/query-service:dev .
ARG RUST_VERSION=1.95
ARG SERVICE

FROM rust:${RUST_VERSION}-bookworm AS builder
ARG SERVICE
WORKDIR /build
ENV SQLX_OFFLINE=true
RUN case "${SERVICE}" in \
      command-service|query-service) ;; \
      *) echo "SERVICE must be command-service or query-service (got '${SERVICE}')" >&2; exit 1 ;; \
    esac
COPY . .
# The registry and the target directory are BuildKit caches: a source change rebuilds only the
# workspace crates (and vendor/, the patched dependencies), without a dependency-only layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --package "${SERVICE}" --bin "${SERVICE}" \
 && install -D -m 0755 "target/release/${SERVICE}" "/out/${SERVICE}"

FROM debian:bookworm-slim AS runtime
# Unpinned on purpose: bookworm security updates replace exact versions.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 bank \
 && useradd --system --uid 10001 --gid bank --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin bank
ENV LOG_FORMAT=json \
    RUST_LOG=info
USER 10001:10001
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["/bin/sh", "-c", "curl -fsS -o /dev/null \"http://127.0.0.1:${HTTP_PORT}/health/live\" || exit 1"]

FROM runtime AS command-service
ENV HTTP_PORT=8081
COPY --from=builder /out/command-service /usr/local/bin/command-service
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/command-service"]

FROM runtime AS query-service
ENV HTTP_PORT=8082
COPY --from=builder /out/query-service /usr/local/bin/query-service
EXPOSE 8082
ENTRYPOINT ["/usr/local/bin/query-service"]

# The image that `docker build --build-arg SERVICE=...` produces.
FROM ${SERVICE}
