#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels a lent GPU machine lacks, for scripts/gpu_check.sh,
# which installs them there with --no-index --no-deps. That machine has no network; its image
# (Python 3.12, torch 2.11 + CUDA 13.0, transformers 5.17, peft 0.21, accelerate 1.15, typer,
# rich, pytest, ...: .library/device/KINDS.md) lacks brightrun's registry and metrics
# libraries, TRL, Liger and bitsandbytes. Run here, where PyPI is reachable:
#     bash scripts/gpu_wheels.sh            then carry ".whl" with the run (under 20 MB)
# bitsandbytes ships one kernel library per CUDA release (43 MB); only the CUDA 13 ones and
# the CPU one are kept (scripts/slim_wheel.py), so the carried tree stays under the 64 MiB limit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
mkdir -p .whl
download() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$@"
}
# brightrun's own needs beyond the image (versions as in this project's venv)
download msgspec==0.23.0 sqlmodel==0.0.50 SQLAlchemy==2.1.9 pydantic==2.14.4 pydantic_core==2.50.5 \
  annotated-types==0.8.0 typing-inspection==0.4.5 tomli_w==1.2.0 datasets==5.2.0 dill==0.4.1 \
  multiprocess==0.70.19 nltk==3.10.4 gguf==0.19.0
"$PY" -m pip wheel -q --no-deps -w .whl rouge_score==0.1.2  # published as a source archive only
# the bench's baselines and kernels, and QLoRA
download trl==1.16.0 liger-kernel==0.8.5 bitsandbytes==0.50.2
"$PY" scripts/slim_wheel.py .whl/bitsandbytes-*.whl 'bitsandbytes/libbitsandbytes_(cuda13[0-9]|cpu)\.so$' 'bitsandbytes/libbitsandbytes_.*\.so$'
du -sh .whl; ls .whl
