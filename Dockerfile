# defender-proxy container image: a static-ish Rust binary on distroless, running as non-root.
#   docker build -t defender-proxy .
# The image's config is deploy/container/proxy.toml: it listens on 0.0.0.0:8080 and requires
# the inbound key, read from /run/secrets/defender-proxy-key. README.md ("Container") has the
# `docker run` line.

FROM docker.io/library/rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock proxy.toml ./
COPY src ./src
COPY crates ./crates
RUN cargo build --release --locked \
    && cp target/release/defender-proxy /defender-proxy \
    && strip /defender-proxy

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /defender-proxy /usr/local/bin/defender-proxy
COPY deploy/container/proxy.toml /etc/defender-proxy/proxy.toml
USER 65532:65532
EXPOSE 8080 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/defender-proxy", "health", "--url", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/defender-proxy"]
CMD ["run", "--config", "/etc/defender-proxy/proxy.toml"]
