#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine (the CI box has no GPU):
#   GPU tests (bf16, fused varlen attention, checkpointing, Liger, accelerate launch,
#   FSDP1/FSDP2 accelerate configs; ZeRO-2/3 too where deepspeed is installed),
#   the whole CLI loop on the GPU, and the trainer benchmark on builtin:tiny and on a
#   ~200M-parameter random Llama (MFU). Logs go to $OUT (or ./gpu-check-out).
# Python packages the machine lacks travel as wheels in .whl/ (see bench/RESULTS.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L; python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"

echo "== GPU tests"
SECONDS=0
timeout 400 python3 -m pytest -p no:cacheprovider -q -s -m gpu -rs --durations=0 tests/test_trainer_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | grep -v -i warn

echo "GPU tests took ${SECONDS}s"
echo "== the CLI loop on the GPU"
(
  export BRIGHTRUN_HOME=/tmp/brightrun-gpu-home; rm -rf "$BRIGHTRUN_HOME"
  br() { python3 -m brightrun_cli "$@"; }
  br hosts check local
  br dataset add examples/support_conversations.jsonl --name support --base-model builtin:tiny >/dev/null
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -o -E "H100|H200" || echo H100)
  job=$(br train --dataset support --preset tiny --set precision=bf16 --set gpu_type="$gpu" --detach --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  timeout 90 python3 -m brightrun_cli watch "$job" --json | tail -c 1500; echo
  br jobs show "$job"
  grep -E "device|precision|attention|liger" "$BRIGHTRUN_HOME"/runs/*/trainer.log | head
) 2>&1 | tee "$OUT/gpu_cli.log"

echo "== trainer benchmark, builtin:tiny"
timeout 90 python3 bench/bench_trainer.py --steps 30 --warmup-steps 3 2>&1 | grep -v -i -E "warn|it/s|examples/s" | tee "$OUT/bench_tiny.log"
echo "== trainer benchmark, random Llama ~200M"
python3 scripts/make_random_llama.py /tmp/llama-200m --hidden 1024 --layers 16 --heads 16 --kv-heads 4
timeout 120 python3 bench/bench_trainer.py --steps 40 --warmup-steps 3 --batch 32 --base-model /tmp/llama-200m 2>&1 | grep -v -i -E "warn|it/s|examples/s" | tee "$OUT/bench_200m.log"
