# syntax=docker/dockerfile:1
#
# Images of capture and of the operator, from one Dockerfile: pick one with
# --target (BuildKit builds only the stages that target needs).
#
#   docker build --target capture  -t capture:0.1.0 .
#   docker build --target operator -t capture-operator:0.1.0 .
#
# The build runs the cargo command CI uses, for one binary. The runtime image
# is distroless (glibc and libgcc, no shell) and runs as uid 65532.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS source
# rdkafka builds librdkafka with its own configure script and make; zstd and
# zlib are compiled with cc, and TLS/SASL link OpenSSL. The rust image has
# all of it (gcc, g++, make, perl, pkg-config, libssl-dev). zlib is linked
# statically because the runtime image has no libz; libssl3 it has.
ENV LIBZ_SYS_STATIC=1
# Libraries the binary may link dynamically: those of the runtime image.
ENV RUNTIME_LIBS='linux-vdso|ld-linux|libc\.so|libm\.so|libgcc_s\.so|libstdc\+\+\.so|libdl\.so|libpthread\.so|librt\.so|libssl\.so\.3|libcrypto\.so\.3'
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY capture capture
COPY operator operator

FROM source AS build-capture
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p capture --bin capture \
    && install -D target/release/capture /out/capture
RUN if ldd /out/capture | grep -vE "$RUNTIME_LIBS"; then \
        echo "capture links libraries the runtime image lacks (above)" >&2; exit 1; \
    fi

FROM source AS build-operator
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p operator --bin operator \
    && install -D target/release/operator /out/operator
RUN if ldd /out/operator | grep -vE "$RUNTIME_LIBS"; then \
        echo "operator links libraries the runtime image lacks (above)" >&2; exit 1; \
    fi

FROM ${RUNTIME_IMAGE} AS operator
COPY --from=build-operator /out/operator /usr/local/bin/operator
USER 65532:65532
# /metrics, /healthz and /readyz.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/operator"]

# Last, so that a build without --target gives capture.
FROM ${RUNTIME_IMAGE} AS capture
COPY --from=build-capture /out/capture /usr/local/bin/capture
USER 65532:65532
# Listen on every interface in a container (the binary's default is
# 127.0.0.1:3000); the operator sets this variable itself too.
ENV CAPTURE_ADDRESS=0.0.0.0:3000
# The allocator returns freed memory after 1 ms instead of 10, so a burst
# of large requests stays within the memory budget (docs/reliability.md,
# "Memory"); the operator sets it too.
ENV MIMALLOC_PURGE_DELAY=1
EXPOSE 3000
ENTRYPOINT ["/usr/local/bin/capture"]
