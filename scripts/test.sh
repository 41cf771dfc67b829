#!/usr/bin/env bash
# Sets up everything the tests need, then runs all of them: the fast ones and the
# slow ones (real CPU training, sshd, tmux, crash and concurrency tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh
# Two workers (BRIGHTRUN_TEST_WORKERS to change), each on its own share of the CPUs; tests
# sharing the Slurm cluster or the GGUF conversion stay on one worker (tests/conftest.py).
# On this project's 2-core CI machine: 18.5 min instead of 28 in series.
exec .venv/bin/python -m pytest -m "slow or not slow" -q --durations=25 \
  -n "${BRIGHTRUN_TEST_WORKERS:-2}" --dist loadgroup "$@"
