#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine (the CI box has no GPU):
#
#   bash scripts/gpu_check.sh [SECTION ...]        default: tests cli bench-tiny
#
# Sections (seconds on one H200, measured or planned; a lent machine gets ~15 minutes in all,
# and one `run` call at most 600 s, so split long selections over two calls):
#   tests       every GPU test (bf16, fused varlen attention, checkpointing, Liger, accelerate
#               launch, FSDP1/FSDP2; ZeRO-2/3 where deepspeed is installed; the qlora ones)  ~330
#   cli         the whole CLI loop on the GPU (dataset add, train, watch, jobs show)             ~40
#   bench-tiny  bench_trainer.py on builtin:tiny and a ~200M random Llama                          ~120
#   qlora       issue 18's GPU tests (fused loss in bf16, QLoRA 4bit/8bit/QDoRA on builtin:tiny and
#               a random Llama-3.2-1B shape: trains, loads with peft, merges; 204 s on 2026-12-04, QDoRA
#               142 s of it) and `train --set quantization=4bit` through the CLI, then `models merge`  ~260
#   bench-1b    bench_trainer.py on a random Llama-3.2-1B shape: brightrun, TRL, Trainer+peft, and
#               each knob (micro-batch fitted, compiled layers, fused loss off, activation offload);
#               one configuration takes 25-45 s, compiled layers over 65 s                     ~330
#   bench-8b    the same on a random Llama-3.1-8B shape (made and saved in 19 s): the three methods
#               and the fitted micro-batch; 30-42 s a configuration                               ~200
# BENCH_1B_S / BENCH_8B_S cap a bench's seconds; BENCH_{1B,8B}_METHODS and _KNOBS choose its rows
# (bench_trainer.py --methods / --knobs; an empty knobs list runs the methods only).
# A 15-minute lease holds about two of qlora, bench-1b, bench-8b (bench/RESULTS.md: what ran on 2026-12-04).
# Logs and the benches' JSON go to $OUT (or ./gpu-check-out). Python packages the machine lacks
# travel as wheels in .whl/ (scripts/gpu_wheels.sh fills it; carry ".whl").
# DEADLINE_S=N: the whole script ends within N seconds: each section's timeout is cut to what is
# left, a section that cannot start in time is skipped, and the benches skip configurations that
# would not finish (their rows so far are already in $OUT), so a lease's last minutes are not lost.
set -uo pipefail
cd "$(dirname "$0")/.."
BEGAN=$(date +%s)
# budget N: N seconds, or what is left before DEADLINE_S less a margin to report, if that is less
budget() {
  local n=$1
  if [ -n "${DEADLINE_S:-}" ]; then
    local left=$(( DEADLINE_S - ($(date +%s) - BEGAN) - 10 ))
    [ "$left" -lt "$n" ] && n=$left
  fi
  [ "$n" -lt 1 ] && n=1
  echo "$n"
}
OUT=${OUT:-$PWD/gpu-check-out}; mkdir -p "$OUT"
SECTIONS=${*:-tests cli bench-tiny}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L; python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
python3 -c "import importlib.metadata as m
for p in ('bitsandbytes', 'liger-kernel', 'trl', 'deepspeed', 'datasets', 'pyarrow', 'huggingface_hub', 'triton'):
    try: print(p, m.version(p))
    except m.PackageNotFoundError: print(p, 'not installed')"
QUIET="warn|it/s|examples/s|Loading weights|Writing model"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -o -E "H100|H200" || echo H100)
section() { echo "== $1 ($(date -u +%H:%M:%S), $(( $(date +%s) - BEGAN )) s in)"; SECONDS=0; }

for s in $SECTIONS; do
if [ "$(budget 30)" -lt 30 ]; then echo "== $s skipped: DEADLINE_S=$DEADLINE_S reached"; continue; fi
case $s in
tests)
  section "GPU tests"
  timeout "$(budget 500)" python3 -m pytest -p no:cacheprovider -q -s -m gpu -rs --durations=0 tests/test_trainer_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | grep -v -i warn
  echo "GPU tests took ${SECONDS}s" ;;
cli)
  section "the CLI loop on the GPU"
  (
    export BRIGHTRUN_HOME=/tmp/brightrun-gpu-home; rm -rf "$BRIGHTRUN_HOME"
    br() { python3 -m brightrun_cli "$@"; }
    br hosts check local
    br dataset add examples/support_conversations.jsonl --name support --base-model builtin:tiny >/dev/null
    job=$(br train --dataset support --preset tiny --set precision=bf16 --set gpu_type="$gpu" --detach --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    timeout "$(budget 90)" python3 -m brightrun_cli watch "$job" --json | tail -c 1500; echo
    br jobs show "$job"
    grep -E "device|precision|attention|liger" "$BRIGHTRUN_HOME"/runs/*/trainer.log | head
  ) 2>&1 | tee "$OUT/gpu_cli.log"
  echo "CLI loop took ${SECONDS}s" ;;
bench-tiny)
  section "trainer benchmark, builtin:tiny"
  timeout "$(budget 120)" python3 bench/bench_trainer.py --steps 30 --warmup-steps 3 2>&1 | grep -v -i -E "$QUIET" | tee "$OUT/bench_tiny.log"
  section "trainer benchmark, random Llama ~200M"
  python3 scripts/make_random_llama.py /tmp/llama-200m --hidden 1024 --layers 16 --heads 16 --kv-heads 4
  timeout "$(budget 180)" python3 bench/bench_trainer.py --steps 40 --warmup-steps 3 --batch 32 --base-model /tmp/llama-200m 2>&1 | grep -v -i -E "$QUIET" | tee "$OUT/bench_200m.log" ;;
qlora)
  section "QLoRA, QDoRA and the fused loss: GPU tests"
  timeout "$(budget 300)" python3 -m pytest -p no:cacheprovider -q -s -m gpu -rs --durations=0 tests/test_trainer_gpu.py -k "fused_head or qlora" 2>&1 | tee "$OUT/qlora_tests.log" | grep -v -i warn
  echo "QLoRA tests took ${SECONDS}s"
  section "QLoRA through the CLI: train --set quantization=4bit, then models merge"
  (
    export BRIGHTRUN_HOME=/tmp/brightrun-qlora-home; rm -rf "$BRIGHTRUN_HOME"
    br() { python3 -m brightrun_cli "$@"; }
    br hosts check local | grep -E "bitsandbytes|gpus"
    br dataset add examples/support_conversations.jsonl --name support --base-model builtin:tiny >/dev/null
    job=$(br train --dataset support --preset tiny --set precision=bf16 --set quantization=4bit --set num_epochs=1 --set gpu_type="$gpu" --detach --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    timeout "$(budget 120)" python3 -m brightrun_cli watch "$job" --json | tail -c 600; echo
    br jobs show "$job" | head -20
    grep -E "quantization|DoRA|fused" "$BRIGHTRUN_HOME"/runs/*/trainer.log | head
    model=$(br models list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
    br models merge "$model" /tmp/qlora-merged && ls /tmp/qlora-merged
  ) 2>&1 | tee "$OUT/qlora_cli.log"
  echo "QLoRA CLI took ${SECONDS}s" ;;
bench-1b)
  section "LoRA throughput: random Llama-3.2-1B shape, bf16, packed to 2048"
  b=$(budget "${BENCH_1B_S:-560}"); timeout $((b + 5)) python3 bench/bench_trainer.py --shape llama-3.2-1b --models-dir /tmp/bench-models \
    --rows 8 --seq 2048 --steps 6 --warmup-steps 3 --methods "${BENCH_1B_METHODS:-brightrun,trl-flex,trl,hf}" \
    --knobs "${BENCH_1B_KNOBS-all}" --deadline-s "$b" --json "$OUT/bench_1b.json" --profile "$OUT/profile_1b.txt" 2>&1 | grep -v -i -E "$QUIET" | tee "$OUT/bench_1b.log" ;;
bench-8b)
  section "LoRA throughput: random Llama-3.1-8B shape, bf16, packed to 2048"
  b=$(budget "${BENCH_8B_S:-560}"); timeout $((b + 5)) python3 bench/bench_trainer.py --shape llama-3.1-8b --models-dir /tmp/bench-models \
    --rows 2 --seq 2048 --steps 5 --warmup-steps 3 --methods "${BENCH_8B_METHODS:-brightrun,trl-flex,trl,hf}" \
    --knobs "${BENCH_8B_KNOBS-rows=fit}" --deadline-s "$b" --json "$OUT/bench_8b.json" --profile "$OUT/profile_8b.txt" 2>&1 | grep -v -i -E "$QUIET" | tee "$OUT/bench_8b.log" ;;
*) echo "unknown section '$s' (tests, cli, bench-tiny, qlora, bench-1b, bench-8b)"; exit 2 ;;
esac; done
