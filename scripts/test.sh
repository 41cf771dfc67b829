#!/usr/bin/env bash
# Sets up everything the tests need, then runs all of them: the fast ones and the
# slow ones (real CPU training, sshd, tmux, crash and concurrency tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh
exec .venv/bin/python -m pytest -m "slow or not slow" -q --durations=25 "$@"
