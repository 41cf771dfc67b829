#!/usr/bin/env bash
# The main job end to end on the built-in defaults, in a throwaway home (.demo-home).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export BRIGHTRUN_HOME=${BRIGHTRUN_HOME:-$PWD/.demo-home}
br() { echo "+ brightrun $*" >&2; .venv/bin/brightrun "$@"; }
br --help >/dev/null
echo "demo: the loop grows as its parts land" >&2
