#!/usr/bin/env bash
# The main job end to end on the built-in defaults, offline, on the CPU:
#   dataset add (prints its stats) -> estimate -> train -> watch (gated on the answers) -> models show
#   (base vs tuned answers side by side, exact-match rate) -> models try -> export -> costs -> notifications
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
br watch "$job" --require "exact_match>base"
br models list
model=$(.venv/bin/brightrun models list --json | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)[0]["id"])')
br models show "$model"
.venv/bin/brightrun models show "$model" --json > "$BRIGHTRUN_HOME/model.json"
.venv/bin/python - "$BRIGHTRUN_HOME/model.json" >&2 <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))["eval"]
print(f"\nexact match on {e['sample_count']} held-out questions: base {e['base']['exact_match']:.0%} -> tuned {e['tuned']['exact_match']:.0%}")
for s in e["samples"][:3]:
    print(f"  Q: {s['prompt'][-1]['content']}\n     reference: {s['reference'][:90]}\n     base:  {s['base']['answer'][:90]}\n     tuned: {s['tuned']['answer'][:90]}")
PY
br models try "$model" "Where is my order 80239?" --base
br models export "$model" "$BRIGHTRUN_HOME/exported-adapter" --force
br costs
br notifications --limit 8
echo "demo registry: $BRIGHTRUN_HOME (adapter exported to $BRIGHTRUN_HOME/exported-adapter)" >&2
