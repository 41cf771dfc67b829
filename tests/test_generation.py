"""Judging a model by its answers (brightrun_cli.generation): metrics, gates, held-out samples,
GGUF checks and the engine on builtin:tiny. Fast; real models and training are in
test_generation_slow.py."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from brightrun_cli.errors import OperationError, UsageError
from brightrun_cli.generation import evaluate, gguf, metrics
from brightrun_cli.generation.chat import FALLBACK_CHAT_TEMPLATE, end_of_turn
from brightrun_cli.trainer.spec import DEFAULT_EVAL_LIMIT, SpecError, load_spec

from test_trainer import EXAMPLES, write_run_dir


# ---------------------------------------------------------------- metrics

def test_exact_match_ignores_case_and_whitespace_only():
    assert metrics.score_sample("  Order 80239 has\n shipped. ", "order 80239 HAS shipped.")["exact_match"] == 1.0
    assert metrics.score_sample("Order 80239 has shipped", "Order 80239 has shipped.")["exact_match"] == 0.0


def test_similarity_scores_on_known_strings():
    same = metrics.score_sample("Go to Account > Billing.", "Go to Account > Billing.")
    assert same == {"exact_match": 1.0, "token_f1": 1.0, "rougeL": 1.0, "chrf": 1.0, "length_ratio": 1.0,
                    "tool_name_match": None, "tool_call_match": None}  # no tools offered: not measured
    # 3 of 3 answer words in a 6-word reference: precision 1, recall 1/2 -> F1 2/3; the LCS is the same 3 words.
    partial = metrics.score_sample("the cat sat", "the cat sat on the mat")
    assert partial["token_f1"] == partial["rougeL"] == pytest.approx(2 / 3, abs=1e-4)
    assert partial["length_ratio"] == pytest.approx(11 / 22, abs=1e-4)
    assert 0 < partial["chrf"] < 1
    # Same words in another order: token F1 sees them all, ROUGE-L only the longest common subsequence.
    shuffled = metrics.score_sample("mat the on sat cat the", "the cat sat on the mat")
    assert shuffled["token_f1"] == 1.0 and shuffled["rougeL"] == 0.5  # LCS "the cat the": 3 of 6
    nothing = metrics.score_sample("", "Yes, we ship to Canada.")
    assert nothing == {"exact_match": 0.0, "token_f1": 0.0, "rougeL": 0.0, "chrf": 0.0, "length_ratio": 0.0,
                       "tool_name_match": None, "tool_call_match": None}
    assert metrics.score_sample("", "")["token_f1"] == 1.0


def test_words_outside_ascii_are_scored():
    """rouge-score's own tokenizer drops every non-ASCII letter: an answer in Russian would score 0."""
    scores = metrics.score_sample("Ваш заказ отправлен", "ваш заказ уже отправлен")
    assert scores["token_f1"] == pytest.approx(2 * 1 * 0.75 / 1.75, abs=1e-4)


def test_aggregate_means_skip_unmeasured_values_and_count_stops():
    scores = [{"exact_match": 1.0, "token_f1": 1.0, "rougeL": 1.0, "chrf": 1.0, "length_ratio": None},
              {"exact_match": 0.0, "token_f1": 0.5, "rougeL": 0.25, "chrf": 0.5, "length_ratio": 2.0}]
    assert metrics.aggregate(scores, [True, False]) == {
        "exact_match": 0.5, "token_f1": 0.75, "rougeL": 0.625, "chrf": 0.75, "length_ratio": 2.0,
        "tool_name_match": None, "tool_call_match": None, "stop_rate": 0.5}


# ---------------------------------------------------------------- gates

def _summary(tuned: dict | None, base: dict, status: str = "completed") -> dict:
    return {"status": status, "error": None, "base": base, "tuned": tuned}


def test_requirements_parse_numbers_and_base():
    assert evaluate.parse_requirement("exact_match>=0.5")[:3] == ("exact_match", ">=", 0.5)
    assert evaluate.parse_requirement(" rougeL > base ")[:3] == ("rougeL", ">", None)
    assert evaluate.parse_requirement("length_ratio<=1.5")[:3] == ("length_ratio", "<=", 1.5)
    assert evaluate.parse_requirement("stop_rate==1")[:3] == ("stop_rate", "==", 1.0)


@pytest.mark.parametrize("text, says", [
    ("exact_match", "not of the form"),
    ("exact_match=>0.5", "not of the form"),
    ("exact_match>=", "not of the form"),
    ("bleu>=0.3", "unknown metric 'bleu'"),
    ("rougeL>bsae", "neither a number nor \"base\""),
    ("chrf>=nan", "neither a number nor \"base\""),
    ("rougeL>1.5", "rougeL is between 0 and 1, so a gate on 1.5 never means what it says"),
    ("stop_rate>=-0.1", "stop_rate is between 0 and 1"),
    ("length_ratio<-1", "length_ratio is 0 or more"),
])
def test_malformed_requirements_say_what_and_how(text, says):
    with pytest.raises(UsageError) as info:
        evaluate.parse_requirement(text)
    assert says in info.value.message and repr(text) in info.value.message
    assert "exact_match>=0.5" in info.value.hint


def test_requirements_hold_or_fail_with_the_values_compared():
    summary = _summary(tuned={"exact_match": 0.6, "rougeL": 0.7, "length_ratio": None},
                       base={"exact_match": 0.0, "rougeL": 0.8, "length_ratio": 1.0})
    reqs = [evaluate.parse_requirement(t) for t in ("exact_match>=0.5", "rougeL>base", "length_ratio<2", "exact_match<0.6")]
    assert evaluate.parse_requirement("length_ratio<=3.5").value == 3.5 and evaluate.parse_requirement("exact_match>1").value == 1
    checks = evaluate.check_requirements(summary, reqs)
    assert [(c.holds, c.actual, c.wanted) for c in checks] == [
        (True, 0.6, 0.5), (False, 0.7, 0.8), (False, None, 2.0), (False, 0.6, 0.6)]
    assert checks[1].requirement.text == "rougeL>base"


def test_requirements_need_a_completed_eval_and_base_needs_a_tuned_model():
    with pytest.raises(OperationError, match="did not complete"):
        evaluate.check_requirements(_summary(None, {}, status="failed"), [evaluate.parse_requirement("chrf>0.1")])
    base_only = _summary(None, {"chrf": 0.3})
    assert evaluate.check_requirements(base_only, [evaluate.parse_requirement("chrf>0.1")])[0].holds
    with pytest.raises(UsageError, match="no tuned model"):
        evaluate.check_requirements(base_only, [evaluate.parse_requirement("chrf>base")])


# ---------------------------------------------------------------- held-out samples

def _conversation(cid: str, *roles: str) -> str:
    return json.dumps({"conversation_id": cid, "turns": [{"role": r, "content": f"{cid} {i} {r}"} for i, r in enumerate(roles)]})


def test_each_assistant_turn_answering_a_user_is_one_sample_in_file_order(tmp_path):
    path = tmp_path / "validation.jsonl"
    path.write_text("\n".join([
        _conversation("a", "system", "user", "assistant", "user", "assistant"),
        _conversation("b", "assistant", "user", "assistant"),  # an opening greeting answers nothing
        _conversation("c", "user", "assistant"),
    ]) + "\n")
    samples = evaluate.held_out_samples(path)
    assert [(s.conversation_id, s.turn) for s in samples] == [("a", 2), ("a", 4), ("b", 2), ("c", 1)]
    assert samples[1].prompt == json.loads(path.read_text().splitlines()[0])["turns"][:4]
    assert samples[1].reference == "a 4 assistant"
    assert [(s.conversation_id, s.turn) for s in evaluate.held_out_samples(path, limit=3)] == [("a", 2), ("a", 4), ("b", 2)]
    with pytest.raises(UsageError, match="limit must be at least 1"):
        evaluate.held_out_samples(path, limit=0)


def test_a_file_without_answers_or_with_a_bad_line_is_refused(tmp_path):
    path = tmp_path / "validation.jsonl"
    path.write_text(_conversation("a", "system", "assistant") + "\n")
    with pytest.raises(UsageError, match="nothing to evaluate"):
        evaluate.held_out_samples(path)
    path.write_text(_conversation("a", "user", "assistant") + "\n{oops\n")
    with pytest.raises(UsageError, match="validation.jsonl line 2: not valid JSON"):
        evaluate.held_out_samples(path)


# ---------------------------------------------------------------- the trainer's spec

def test_the_eval_is_on_by_default_and_off_with_null_or_limit_zero(tmp_path):
    spec = load_spec(write_run_dir(tmp_path))
    assert spec.eval.limit == DEFAULT_EVAL_LIMIT and spec.eval.max_new_tokens is None
    assert load_spec(write_run_dir(tmp_path, eval=None)).eval is None
    assert load_spec(write_run_dir(tmp_path, eval={"limit": 0})).eval is None
    chosen = load_spec(write_run_dir(tmp_path, eval={"limit": 7, "max_new_tokens": 64})).eval
    assert (chosen.limit, chosen.max_new_tokens) == (7, 64)


@pytest.mark.parametrize("value, says", [
    ("yes", "eval must be an object"),
    ({"limt": 5}, "unknown eval key(s) limt"),
    ({"limit": -1}, "eval.limit = -1 is out of range"),
    ({"limit": 2.5}, "eval.limit must be an integer"),
    ({"max_new_tokens": 0}, "eval.max_new_tokens = 0 is out of range"),
])
def test_bad_eval_settings_name_the_field(tmp_path, value, says):
    with pytest.raises(SpecError) as info:
        load_spec(write_run_dir(tmp_path, eval=value))
    assert says in str(info.value)


# ---------------------------------------------------------------- GGUF files

def _write_gguf(path: Path, architecture: str = "llama") -> Path:
    import gguf as gguf_package
    import numpy as np

    writer = gguf_package.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(32, dtype=np.float32).reshape(4, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_names_and_directories_are_recognised_cheaply(tmp_path):
    assert gguf.is_gguf("models/SmolLM2.Q4_1.GGUF") and not gguf.is_gguf("HuggingFaceTB/SmolLM2-135M")
    folder = tmp_path / "smol"
    folder.mkdir()
    assert not gguf.is_gguf(str(folder))
    _write_gguf(folder / "model.gguf")
    assert gguf.is_gguf(str(folder)) and gguf.find_gguf(folder) == (folder / "model.gguf").resolve()
    (folder / "config.json").write_text("{}")  # a Hugging Face directory that also ships a GGUF is not one
    assert not gguf.is_gguf(str(folder))
    _write_gguf(folder / "other.gguf")
    with pytest.raises(UsageError, match="holds 2 .gguf files: model.gguf, other.gguf"):
        gguf.find_gguf(folder)
    with pytest.raises(UsageError, match="does not exist"):
        gguf.find_gguf(tmp_path / "missing.gguf")


def test_damaged_gguf_files_are_one_clear_error(tmp_path):
    good = _write_gguf(tmp_path / "good.gguf")
    assert gguf.check_gguf(good) == "llama"
    data = good.read_bytes()
    cases = {
        "truncated.gguf": (data[:-16], "it is truncated"),
        "header.gguf": (data[:100], "the file ends in the middle of its header"),
        "text.gguf": (b"just some text, not a model at all", "does not start with the GGUF magic bytes"),
        "empty.gguf": (b"", "too short"),
        "version.gguf": (data[:4] + (9).to_bytes(4, "little") + data[8:], "GGUF version 9"),
    }
    for name, (content, says) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UsageError) as info:
            gguf.check_gguf(tmp_path / name)
        assert says in info.value.message, name
        assert info.value.message.startswith(f"{name} is not a valid GGUF file") and "download" in info.value.hint


def test_converting_a_corrupt_or_unsupported_gguf_writes_nothing(tmp_path):
    cache = tmp_path / "cache"
    (tmp_path / "bad.gguf").write_bytes(_write_gguf(tmp_path / "good.gguf").read_bytes()[:-16])
    with pytest.raises(UsageError, match="truncated"):
        gguf.convert_gguf(tmp_path / "bad.gguf", cache)
    _write_gguf(tmp_path / "odd.gguf", architecture="brightrun-test")
    with pytest.raises(UsageError, match="cannot load GGUF files of architecture 'brightrun-test'"):
        gguf.convert_gguf(tmp_path / "odd.gguf", cache)
    assert not cache.exists()


def test_two_conversions_at_once_convert_once_and_a_failed_one_leaves_nothing(tmp_path, monkeypatch):
    source = _write_gguf(tmp_path / "model.gguf")
    calls = []

    def fake_convert(src: Path, out: Path) -> None:
        calls.append(src)
        time.sleep(0.3)  # long enough for the second caller to be waiting on the lock
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(gguf, "_check_loadable", lambda source, architecture: None)
    monkeypatch.setattr(gguf, "_convert", fake_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(gguf.convert_gguf(source, tmp_path / "cache"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    digest = gguf.file_sha256(source)
    assert results == [tmp_path / "cache" / "models" / f"gguf-{digest[:16]}"] * 2 and len(calls) == 1
    provenance = json.loads((results[0] / gguf.SOURCE_FILE).read_text())
    assert provenance["sha256"] == digest and provenance["architecture"] == "llama"
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == [results[0].name]

    def failing_convert(src: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf, "_convert", failing_convert)
    other = tmp_path / "other.gguf"
    other.write_bytes(source.read_bytes() + b"\0" * 32)  # another file: another digest
    with pytest.raises(RuntimeError):
        gguf.convert_gguf(other, tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == [results[0].name]


def test_a_converted_gguf_is_shown_by_its_file_name_not_only_its_cache_directory(tmp_path, monkeypatch, cli):
    """Jobs, datasets and estimates name the converted directory (that is what loads); people
    see the file they passed, with the directory where there is room for it."""
    from brightrun_cli.workspace import Workspace
    from model_helpers import dataset_with_stats
    from watch_sim import make_job

    monkeypatch.setattr(gguf, "_check_loadable", lambda source, architecture: None)
    monkeypatch.setattr(gguf, "_convert", lambda src, out: (out / "config.json").write_text("{}"))
    ws = Workspace.open()
    converted = str(gguf.convert_gguf(_write_gguf(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"), ws.home / "cache"))
    assert gguf.describe(converted) == f"SmolLM2-135M-Instruct.Q4_1.gguf (converted: {converted})"
    assert gguf.describe(converted, short=True) == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf.describe("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert gguf.describe(str(tmp_path)) == str(tmp_path)  # a plain directory

    dataset_with_stats(ws, name="support-v1", counted_with=converted)
    shown = cli("dataset", "show", "support-v1")
    assert shown.exit_code == 0, shown.output
    assert "SmolLM2-135M-Instruct.Q4_1.gguf's tokenizer" in " ".join(shown.stdout.split())
    job = make_job(ws, base_model=converted)
    shown = cli("jobs", "show", job)
    assert shown.exit_code == 0, shown.output
    assert "SmolLM2-135M-Instruct.Q4_1.gguf (converted:" in shown.stdout
    assert cli("jobs", "show", job, "--json").stdout.count(converted) >= 1  # scripts keep the loadable path


# ---------------------------------------------------------------- chat template and engine (builtin:tiny)

@pytest.fixture(scope="module")
def tiny_with_adapter(tmp_path_factory):
    """builtin:tiny with a LoRA adapter whose weights are random (not zero), saved as peft saves it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from brightrun_cli.builtin import resolve_base_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_base_model("builtin:tiny"))
    lora = LoraConfig(r=8, lora_alpha=64, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    directory = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, lora).save_pretrained(directory)
    return directory


def _prompts(n: int) -> list[list[dict]]:
    samples = evaluate.held_out_samples(EXAMPLES, limit=n)
    return [s.prompt for s in samples]


def test_end_of_turn_is_what_the_template_puts_after_an_answer():
    from transformers import AutoTokenizer

    from brightrun_cli.builtin import resolve_base_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("builtin:tiny"))
    assert end_of_turn(tokenizer) == "<|im_end|>"
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    tokenizer.eos_token = "<|endoftext|>"
    assert end_of_turn(tokenizer) == "<|endoftext|>"


def test_batched_greedy_answers_equal_one_at_a_time_for_base_and_tuned(tiny_with_adapter):
    from brightrun_cli.generation.engine import load_chat_model

    chat_model = load_chat_model("builtin:tiny", tiny_with_adapter)
    assert chat_model.has_adapter and chat_model.stop_sequences == [(257,)]
    prompts = _prompts(5)
    answers = {}
    for base in (True, False):
        answers[base] = chat_model.answers(prompts, base=base, max_new_tokens=24)
        assert answers[base] == [chat_model.answers([p], base=base, max_new_tokens=24)[0] for p in prompts]
        # several batches (a budget of 2 rows) give the same answers again
        tight = chat_model.kv_bytes_per_position * 2 * (len(chat_model.prompt_ids(prompts[-1])) + 24)
        assert chat_model.answers(prompts, base=base, max_new_tokens=24, kv_cache_bytes=tight) == answers[base]
    assert answers[True] != answers[False]  # the adapter is really switched off for the base answers
    for answer in answers[True] + answers[False]:
        assert answer.tokens <= 24 and (answer.stopped or answer.tokens == 24)


def test_streamed_and_sampled_answers(tiny_with_adapter):
    from brightrun_cli.generation.engine import Sampling, load_chat_model

    chat_model = load_chat_model("builtin:tiny", tiny_with_adapter)
    prompt = _prompts(1)[0]
    greedy = chat_model.answer(prompt, sampling=Sampling(max_new_tokens=30))
    assert greedy == chat_model.answers([prompt], max_new_tokens=30)[0]
    assert "".join(chat_model.stream(prompt, sampling=Sampling(max_new_tokens=30))).strip() == greedy.text
    hot = Sampling(max_new_tokens=30, temperature=1.5, top_p=0.95, seed=7)
    assert chat_model.answer(prompt, sampling=hot) == chat_model.answer(prompt, sampling=hot)
    assert "".join(chat_model.stream(prompt, sampling=hot)).strip() == chat_model.answer(prompt, sampling=hot).text
    with pytest.raises(UsageError, match="--top-p"):
        chat_model.answer(prompt, sampling=Sampling(top_p=0))


def test_loading_refuses_what_the_user_can_fix(tmp_path):
    from brightrun_cli.builtin import resolve_base_model
    from brightrun_cli.generation.engine import load_chat_model

    with pytest.raises(UsageError, match="unknown built-in base model"):
        load_chat_model("builtin:huge")
    with pytest.raises(UsageError, match="not a peft adapter directory"):
        load_chat_model("builtin:tiny", tmp_path)
    no_tokenizer = tmp_path / "model"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((Path(resolve_base_model("builtin:tiny")) / name).read_bytes())
    with pytest.raises(UsageError) as info:
        load_chat_model(str(no_tokenizer))
    assert "cannot load the tokenizer" in info.value.message and "tokenizer.json" in info.value.hint


def test_eval_files_hold_the_documented_fields(tiny_with_adapter, tmp_path):
    from brightrun_cli.generation.engine import load_chat_model

    chat_model = load_chat_model("builtin:tiny", tiny_with_adapter)
    lines = []
    summary = evaluate.run_eval(chat_model, EXAMPLES, tmp_path, limit=6, max_new_tokens=24, log=lines.append)
    records = [json.loads(l) for l in (tmp_path / evaluate.EVAL_FILE).read_text().splitlines()]
    assert json.loads((tmp_path / evaluate.SUMMARY_FILE).read_text()) == summary
    assert len(records) == summary["samples"] == 6 and summary["limit"] == 6 and summary["max_new_tokens"] == 24
    samples = evaluate.held_out_samples(EXAMPLES, limit=6)
    for record, sample in zip(records, samples):
        assert set(record) == {"conversation_id", "turn", "prompt", "reference", "base", "tuned"}
        assert (record["conversation_id"], record["turn"], record["prompt"], record["reference"]) == (
            sample.conversation_id, sample.turn, sample.prompt, sample.reference)
        for name in ("base", "tuned"):
            assert set(record[name]) == {"answer", "stopped", "tokens", "scores"}
            assert set(record[name]["scores"]) == set(metrics.SAMPLE_METRICS)
    assert [r["tuned"]["answer"] for r in records] == [a.text for a in chat_model.answers([s.prompt for s in samples], max_new_tokens=24)]
    assert summary["status"] == "completed" and summary["error"] is None
    for name in ("base", "tuned"):
        assert set(summary[name]) == set(metrics.METRICS) | {"cut_in_reasoning", "tokens", "seconds", "tokens_per_sec"}
        assert summary[name]["tokens"] == sum(r[name]["tokens"] for r in records)
        assert summary[name]["exact_match"] == pytest.approx(sum(r[name]["scores"]["exact_match"] for r in records) / 6, abs=1e-4)
    assert {"torch", "transformers", "peft", "rouge-score", "sacrebleu"} <= set(summary["versions"])
    assert any("tuned 6/6" in line for line in lines)


def test_a_model_with_the_trainers_packed_attention_answers_with_masked_attention(tiny_with_adapter):
    """The trainer's packed-sequence attention ignores padding masks; batched answers from the
    model it trained must still equal those of a freshly loaded one."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from brightrun_cli.builtin import resolve_base_model
    from brightrun_cli.generation.engine import ChatModel, load_chat_model
    from brightrun_cli.trainer import attention

    base = AutoModelForCausalLM.from_pretrained(resolve_base_model("builtin:tiny"), attn_implementation=attention.register())
    trained = ChatModel(PeftModel.from_pretrained(base, tiny_with_adapter), AutoTokenizer.from_pretrained(resolve_base_model("builtin:tiny")))
    assert trained.model.config._attn_implementation == "sdpa"
    prompts = _prompts(6)
    assert trained.answers(prompts, max_new_tokens=24) == load_chat_model("builtin:tiny", tiny_with_adapter).answers(prompts, max_new_tokens=24)


# ---------------------------------------------------------------- the eval at the end of a training job

class _Accelerator:
    def __init__(self, main: bool = True):
        self.is_main_process = main

    def unwrap_model(self, model):
        return model

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()


@pytest.fixture
def finished_run(tiny_with_adapter, tmp_path):
    """What trainer/answers.py gets from a finished job: its spec, the model in memory, a log."""
    import logging
    from types import SimpleNamespace

    from brightrun_cli.generation.engine import load_chat_model

    chat_model = load_chat_model("builtin:tiny", tiny_with_adapter)
    lines: list[str] = []
    log = logging.getLogger(f"test-answers-{id(lines)}")
    log.propagate = False
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    def make(main: bool = True, sharded: bool = False, **spec_overrides):
        spec = load_spec(write_run_dir(tmp_path, **{"eval": {"limit": 3, "max_new_tokens": 8}, **spec_overrides}))
        return SimpleNamespace(spec=spec, accelerator=_Accelerator(main), log=log, model=chat_model.model,
                               tokenizer=chat_model.tokenizer, sharded=sharded, lines=lines)

    return make


def _eval_files(run_dir: Path) -> tuple[dict | None, list[dict] | None]:
    summary = run_dir / "final" / evaluate.SUMMARY_FILE
    records = run_dir / "final" / evaluate.EVAL_FILE
    return (json.loads(summary.read_text()) if summary.exists() else None,
            [json.loads(l) for l in records.read_text().splitlines()] if records.exists() else None)


def test_the_job_eval_writes_both_files_into_final_and_logs_progress(finished_run):
    from brightrun_cli.trainer.answers import evaluate_answers

    run = finished_run()
    evaluate_answers(run)
    summary, records = _eval_files(run.spec.output_dir)
    assert summary["status"] == "completed" and summary["samples"] == len(records) == 3
    assert summary["limit"] == 3 and summary["max_new_tokens"] == 8 and records[0]["tuned"]["tokens"] <= 8
    assert any(line.startswith("eval: base model answering 3 held-out prompts") for line in run.lines)
    assert any(line.startswith("answer eval: 3 samples") for line in run.lines)


def test_a_failed_or_interrupted_eval_is_recorded_and_never_raised(finished_run, monkeypatch):
    import os
    import signal

    from brightrun_cli.trainer import answers

    run = finished_run()
    monkeypatch.setattr(answers.answer_eval, "run_eval", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory")))
    answers.evaluate_answers(run)
    summary, records = _eval_files(run.spec.output_dir)
    assert (summary["status"], summary["error"], records) == ("failed", "RuntimeError: out of memory", None)
    assert summary["base"] is None and summary["limit"] == 3
    assert any("answer eval failed: RuntimeError: out of memory" in line for line in run.lines)

    monkeypatch.undo()
    run = finished_run()
    previous = signal.getsignal(signal.SIGTERM)
    run.log.info = lambda message, *args: os.kill(os.getpid(), signal.SIGTERM) if message.startswith("eval: base model") else None
    answers.evaluate_answers(run)
    summary, _ = _eval_files(run.spec.output_dir)
    assert (summary["status"], summary["error"]) == ("failed", "stopped by SIGTERM")
    assert signal.getsignal(signal.SIGTERM) is previous


def test_no_eval_when_off_on_other_processes_and_a_skip_without_held_out_data_or_when_sharded(finished_run):
    from brightrun_cli.trainer.answers import evaluate_answers

    for run in (finished_run(eval=None), finished_run(main=False)):
        evaluate_answers(run)
        assert _eval_files(run.spec.output_dir) == (None, None)
    for run, says in ((finished_run(validation_file=None), "no held-out split"), (finished_run(sharded=True), "sharded")):
        evaluate_answers(run)
        summary, records = _eval_files(run.spec.output_dir)
        assert summary["status"] == "skipped" and says in summary["error"] and records is None
        (run.spec.output_dir / "final" / evaluate.SUMMARY_FILE).unlink()


def test_a_stream_left_early_stops_generating(tiny_with_adapter):
    from brightrun_cli.generation.engine import Sampling, load_chat_model

    chat_model = load_chat_model("builtin:tiny", tiny_with_adapter)
    pieces = chat_model.stream(_prompts(1)[0], sampling=Sampling(max_new_tokens=1500, temperature=1.0, seed=3))
    next(pieces)
    started = time.monotonic()
    pieces.close()  # what Ctrl-C in `models try` does to the loop reading it
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------- harmony (gpt-oss)


def test_a_harmony_answer_reads_as_reasoning_then_the_final_text():
    from brightrun_cli.generation.chat import harmony_answer

    raw = ("<|channel|>analysis<|message|>The user wants the order status.<|end|>"
           "<|start|>assistant<|channel|>final<|message|>Order 12345 has shipped.")
    text = harmony_answer(raw)
    assert text == "<think>\nThe user wants the order status.\n</think>\n\nOrder 12345 has shipped."
    assert metrics.without_reasoning(text) == "Order 12345 has shipped."
    # Decoded without its special tokens the same answer read "analysisThe user ...assistantfinalOrder ...".
    still_thinking = harmony_answer("<|channel|>analysis<|message|>Let me think about")
    assert metrics.without_reasoning(still_thinking) == "" and "Let me think about" in still_thinking
    assert harmony_answer("Plain text, no channels<|return|>") == "Plain text, no channels"


def test_a_harmony_function_call_is_a_call_the_metrics_read_wherever_its_recipient_is_written():
    from brightrun_cli.generation.chat import harmony_answer

    in_channel = ("<|channel|>analysis<|message|>Look it up.<|end|><|start|>assistant<|channel|>commentary "
                  "to=functions.get_order <|constrain|>json<|message|>{\"order_id\": \"12345\"}")
    in_role = "<|start|>assistant to=functions.get_order<|channel|>commentary json<|message|>{\"order_id\": \"12345\"}<|call|>"
    for raw in (in_channel, in_role):
        assert metrics.calls_in(harmony_answer(raw)) == [{"name": "get_order", "arguments": {"order_id": "12345"}}]
    # A commentary preamble (no recipient) is text the user sees.
    preamble = "<|channel|>commentary<|message|>Checking that for you.<|end|>"
    assert harmony_answer(preamble + in_role).startswith("Checking that for you.\n<tool_call>")


def test_a_harmony_stream_shows_the_parsed_answer_and_a_call_only_once_whole():
    from brightrun_cli.generation.chat import harmony_answer
    from brightrun_cli.generation.engine import _harmony_pieces

    raw = ("<|channel|>analysis<|message|>Need the order.<|end|><|start|>assistant<|channel|>final<|message|>"
           "Let me check.<|end|><|start|>assistant to=functions.get_order<|channel|>commentary json<|message|>"
           "{\"order_id\": \"1\"}<|call|>")
    pieces = [raw[i:i + 7] for i in range(0, len(raw), 7)]
    shown = list(_harmony_pieces(iter(pieces)))
    assert "".join(shown) == harmony_answer(raw)
    assert not any("<tool_call>" in p for p in shown[:-1]) and shown[-1].endswith("</tool_call>")


def test_a_harmony_model_answers_through_its_channels_and_stops_at_return_not_end():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from brightrun_cli.builtin import resolve_base_model
    from brightrun_cli.generation.engine import ChatModel

    path = resolve_base_model("builtin:tiny")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|start|>", "<|channel|>", "<|message|>", "<|end|>",
                                                                "<|return|>", "<|call|>"]})
    model = AutoModelForCausalLM.from_pretrained(path)
    model.resize_token_embeddings(len(tokenizer))
    engine = ChatModel(model, tokenizer)
    assert engine.harmony
    added = tokenizer.get_added_vocab()
    stops = {seq for seq in engine.stop_sequences if len(seq) == 1}
    assert (added["<|return|>"],) in stops and (added["<|call|>"],) in stops and (added["<|end|>"],) not in stops
    generated = tokenizer("<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>"
                          "Shipped.<|return|>padding", add_special_tokens=False)["input_ids"]
    answer = engine._answer(generated, 64)
    assert answer.stopped and answer.text == "<think>\nThink.\n</think>\n\nShipped."
