# trustgate: the single exposed container.
#
# Stage 1 compiles one static binary (glibc, +crt-static: no libc in the image, DNS still works
# through /etc/hosts and the /etc/resolv.conf Docker provides). Stage 2 ships that binary alone:
# no shell, no package manager, no system trust store, no CA keys, non-root.
#
# Build:  docker build -t trustgate .
# Run:    see docker/compose.yml and README ("Run it with Docker").

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    triple="$(uname -m)-unknown-linux-gnu" \
 && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --bin trustgate --target "$triple" \
 && cp "target/$triple/release/trustgate" /trustgate

# docker/e2e.sh builds this stage alone from a prebuilt binary (no registry there): keep the
# single COPY line below as it is.
FROM scratch AS runtime
COPY --from=build /trustgate /trustgate
LABEL org.opencontainers.image.title="trustgate" \
      org.opencontainers.image.description="TLS reverse proxy that trusts only your internal CA for upstreams" \
      org.opencontainers.image.licenses="Apache-2.0"
# 65532: the conventional "nonroot" uid; no /etc/passwd is needed for a numeric user.
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/trustgate"]
CMD ["run", "-c", "/etc/trustgate/trustgate.toml"]
