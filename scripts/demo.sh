#!/usr/bin/env bash
# The main job end to end on the built-in defaults, offline, on the CPU:
#   dataset add (prints its stats) -> estimate -> train -> watch -> models show/export -> costs -> notifications
# It uses a throwaway registry home (.demo-home, recreated each run) unless BRIGHTRUN_HOME is set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${BRIGHTRUN_HOME:-}" ]; then
  export BRIGHTRUN_HOME=$PWD/.demo-home
  rm -rf "$BRIGHTRUN_HOME"
fi
export HF_HUB_OFFLINE=1
br() { printf '\n\033[1m$ brightrun %s\033[0m\n' "$*" >&2; .venv/bin/brightrun "$@"; }

br dataset add examples/support_conversations.jsonl --name support-demo --base-model builtin:tiny
br estimate --dataset support-demo --preset tiny
job=$(br train --dataset support-demo --preset tiny --detach --json | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["id"])')
echo "queued job $job" >&2
br watch "$job"
br models list
model=$(.venv/bin/brightrun models list --json | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)[0]["id"])')
br models show "$model"
br models export "$model" "$BRIGHTRUN_HOME/exported-adapter" --force
br costs
br notifications --limit 8
echo "demo registry: $BRIGHTRUN_HOME (adapter exported to $BRIGHTRUN_HOME/exported-adapter)" >&2
