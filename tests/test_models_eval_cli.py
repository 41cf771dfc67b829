"""Judging a stored model by its answers through the CLI: the job's eval recorded with the
model, `models show` side by side, `models eval` with its gates, `models try`, `models
compare`, `watch --require`, and every bad input of issue 15 (one `error:` line, exit 2,
nothing written).

Fast: one home is prepared per module (a real dataset added through the CLI, a builtin:tiny
adapter with random LoRA weights, its job-end eval run by the real engine, the artifact
created by `create_artifact` as the supervisor does) and copied into each test's home.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO

EXAMPLES = REPO / "examples" / "support_conversations.jsonl"
JOB_EVAL_SAMPLES = 6
MAX_NEW_TOKENS = 16


def _invoke(*args: str):
    from conftest import invoke_cli

    return invoke_cli(*args)


def _completed_job_with_final(ws, dataset, run_dir: Path) -> str:
    """A completed job whose run dir's final/ holds a builtin:tiny adapter (random LoRA weights,
    so tuned answers differ from base ones) and the answer eval the trainer writes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from brightrun_cli.builtin import resolve_base_model
    from brightrun_cli.generation import evaluate
    from brightrun_cli.generation.engine import ChatModel
    from brightrun_cli.registry.tables import TrainingJob
    from brightrun_cli.registry.timeutil import utcnow
    from brightrun_cli.services.datasets import split_paths

    with ws.registry.write() as session:
        job = TrainingJob(dataset_id=dataset.id, preset_id="tiny", base_model="builtin:tiny", hyperparameters={},
                          gpu_config={"type": "cpu", "count": 1}, status="completed", current_stage="completed",
                          total_epochs=1, estimated_total_cost=0.0, final_cost=0.0, started_at=utcnow(), completed_at=utcnow())
        session.add(job)
        session.flush()
        job.run_dir = f"runs/{job.id}"
        job_id = job.id
    final = ws.home / "runs" / job_id / "final"
    torch.manual_seed(0)
    base = resolve_base_model("builtin:tiny")
    lora = LoraConfig(r=8, lora_alpha=64, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    evaluate.run_eval(ChatModel(model, tokenizer), split_paths(ws, dataset)[1], final, limit=JOB_EVAL_SAMPLES,
                      max_new_tokens=MAX_NEW_TOKENS)
    (final.parent / "result.json").write_text(json.dumps({"status": "completed", "exit_code": 0, "steps": 1, "epochs": 1,
                                                          "base_validation_loss": 3.0, "final_validation_loss": 1.5}))
    return job_id


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("eval-template")
    data = tmp_path_factory.mktemp("eval-data") / "support.jsonl"
    data.write_text("\n".join(EXAMPLES.read_text().splitlines()[:80]) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"BRIGHTRUN_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "160", "HF_HUB_OFFLINE": "1",
                           "TRANSFORMERS_OFFLINE": "1"}.items():
            mp.setenv(key, value)
        for name, split in (("support", "0.1"), ("no-held-out", "0")):
            added = _invoke("dataset", "add", str(data), "--name", name, "--val-split", split, "--base-model", "builtin:tiny")
            assert added.exit_code == 0, added.output
        from brightrun_cli.services.artifacts import create_artifact
        from brightrun_cli.services.datasets import get_dataset
        from brightrun_cli.workspace import Workspace

        ws = Workspace.open(home)
        job_id = _completed_job_with_final(ws, get_dataset(ws, "support"), home / "runs")
        model = create_artifact(ws, job_id)
    return {"home": home, "job_id": job_id, "model_id": model.id}


@pytest.fixture
def prepared(template, brightrun_home, monkeypatch) -> dict:
    """This test's home: a copy of the module's prepared one."""
    shutil.copytree(template["home"], brightrun_home, dirs_exist_ok=True)
    monkeypatch.setenv("COLUMNS", "160")
    return {**template, "home": brightrun_home}


def _eval_rows(home: Path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(home / "registry.db") as conn:
        return conn.execute("SELECT source, sample_count FROM model_evals ORDER BY created_at").fetchall()


def _one_error_line(result) -> None:
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr


# ---------------------------------------------------------------- the job's own eval, stored with the model


def test_the_job_eval_is_recorded_with_the_model_and_shown_side_by_side(cli, prepared):
    shown = cli("models", "show", prepared["model_id"], "--json")
    assert shown.exit_code == 0, shown.stderr
    model = json.loads(shown.stdout)
    evaluated = model["eval"]
    assert evaluated["source"] == "job" and evaluated["sample_count"] == JOB_EVAL_SAMPLES
    assert set(evaluated["base"]) >= {"exact_match", "token_f1", "rougeL", "chrf", "length_ratio", "stop_rate"}
    assert len(evaluated["samples"]) == JOB_EVAL_SAMPLES
    first = evaluated["samples"][0]
    assert {"prompt", "reference", "base", "tuned"} <= set(first)
    # The per-sample file is kept in the artifact, and the model card carries the eval.
    files = {entry["path"] for entry in model["artifacts"]["files"]}
    assert {"eval.jsonl", "eval_summary.json", "README.md"} <= files
    storage = prepared["home"] / "storage" / model["storage_path"]
    assert len((storage / "eval.jsonl").read_text().splitlines()) == JOB_EVAL_SAMPLES
    card = (storage / "README.md").read_text()
    assert "## Answers on held-out prompts" in card and "| rougeL |" in card and first["reference"][:30] in card
    # The score cannot be 5 from the loss alone: the answers are judged too, and the rule is shown.
    assert model["quality_metrics"]["answer_gain"] is not None
    human = cli("models", "show", prepared["model_id"])
    assert human.exit_code == 0
    for word in ("prompt", "reference", "base", "tuned", "match", "rule:", "50% lower, -50%"):
        assert word in human.stdout, word
    assert first["reference"][:20] in human.stdout


# ---------------------------------------------------------------- models eval and its gates


def test_models_eval_stores_a_new_eval_and_prints_the_aggregates(cli, prepared):
    result = cli("models", "eval", prepared["model_id"], "--limit", "4", "--max-new-tokens", str(MAX_NEW_TOKENS), "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["source"] == "command" and out["sample_count"] == 4 and len(out["samples"]) == 4
    assert out["tuned"]["rougeL"] is not None and out["requirements"] == []
    stored = prepared["home"] / "storage" / out["samples_path"]
    assert len(stored.read_text().splitlines()) == 4 and (stored.parent / "eval_summary.json").is_file()
    assert _eval_rows(prepared["home"]) == [("job", JOB_EVAL_SAMPLES), ("command", 4)]
    # models show now shows the newest eval, says where the job's own is, and shows it on asking.
    assert json.loads(cli("models", "show", prepared["model_id"], "--json").stdout)["eval"]["id"] == out["id"]
    assert "the job's own eval, which the score used: --eval job" in " ".join(cli("models", "show", prepared["model_id"]).stdout.split())
    job_eval = json.loads(cli("models", "show", prepared["model_id"], "--eval", "job", "--json").stdout)["eval"]
    assert job_eval["source"] == "job" and job_eval["sample_count"] == JOB_EVAL_SAMPLES
    assert cli("models", "show", prepared["model_id"], "--eval", "oldest").exit_code == 2
    human = cli("models", "eval", prepared["model_id"], "--limit", "2", "--max-new-tokens", "8")
    assert human.exit_code == 0 and "exact_match" in human.stdout and "rougeL" in human.stdout


def test_a_model_is_still_evaluated_on_its_dataset_after_dataset_rm(cli, prepared):
    """`dataset rm` keeps a dataset's files while a model refers to it, so the model's own
    held-out split keeps serving `models eval` and `compare`."""
    removed = cli("dataset", "rm", "support", "--yes")
    assert removed.exit_code == 0 and "kept" in removed.output
    assert cli("dataset", "show", "support").exit_code != 0  # gone from the user's list
    result = cli("models", "eval", prepared["model_id"], "--limit", "2", "--max-new-tokens", "8", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["sample_count"] == 2
    compared = cli("models", "compare", prepared["model_id"], f"base:{prepared['model_id']}", "--limit", "2", "--max-new-tokens", "8")
    assert compared.exit_code == 0, compared.stderr


def test_a_failing_requirement_exits_6_a_holding_one_0(cli, prepared):
    model = prepared["model_id"]
    holds = cli("models", "eval", model, "--limit", "2", "--max-new-tokens", "8", "--require", "stop_rate>=0", "--require", "chrf>=0")
    assert holds.exit_code == 0, holds.stderr
    assert "ok   stop_rate>=0" in holds.stdout
    fails = cli("models", "eval", model, "--limit", "2", "--max-new-tokens", "8", "--require", "exact_match>1", "--require", "chrf>=0")
    assert fails.exit_code == 6
    errors = [line for line in fails.stderr.splitlines() if line.startswith("error:")]  # after the eval's progress lines
    assert len(errors) == 1 and fails.stderr.splitlines()[-1] == errors[0]
    assert "exact_match>1 (tuned 0" in errors[0] and "FAIL exact_match>1" in fails.stdout


def test_watch_and_train_check_requirements_against_the_jobs_eval(cli, prepared):
    job = prepared["job_id"]
    holds = cli("watch", job, "--require", "stop_rate>=0")
    assert holds.exit_code == 0, holds.stderr
    assert "ok   stop_rate>=0" in holds.stdout
    fails = cli("watch", job, "--require", "exact_match>1", "--json")
    assert fails.exit_code == 6
    gate = json.loads(fails.stdout.splitlines()[-1])
    assert gate["type"] == "gates" and gate["requirements"] == [{"requirement": "exact_match>1", "holds": False,
                                     "actual": gate["requirements"][0]["actual"], "wanted": 1.0}]
    assert fails.stderr.splitlines()[-1].startswith("error: 1 requirement(s) failed: exact_match>1 (tuned 0")

    import sqlite3

    with sqlite3.connect(prepared["home"] / "registry.db") as conn:  # as when the job-end eval failed
        conn.execute("DELETE FROM model_evals")
    unchecked = cli("watch", job, "--require", "stop_rate>=0")
    assert unchecked.exit_code == 6 and "has no answer eval from its job" in unchecked.stderr  # a gate never passes unchecked


def test_a_dry_run_checks_the_gates_of_the_exact_command_ci_will_run(cli, prepared):
    argv = ("train", "--dataset", "support", "--preset", "tiny", "--base-model", "builtin:tiny", "--require", "rougeL>base",
            "--require", "stop_rate>=0.9")
    planned = cli(*argv, "--dry-run", "--json")
    assert planned.exit_code == 0, planned.stderr
    assert json.loads(planned.stdout)["require"] == [
        {"metric": "rougeL", "op": ">", "value": None, "text": "rougeL>base"},
        {"metric": "stop_rate", "op": ">=", "value": 0.9, "text": "stop_rate>=0.9"}]
    assert "gates: rougeL>base, stop_rate>=0.9" in cli(*argv, "--dry-run").stdout
    detached = cli(*argv, "--detach")
    assert detached.exit_code == 2 and "drop --detach" in detached.stderr
    assert [job["id"] for job in json.loads(cli("jobs", "list", "--json").stdout)] == [prepared["job_id"]]  # nothing queued


@pytest.mark.parametrize("bad", ["exact_match=>0.5", "accuracy>0.5", "rougeL>better", "rougeL"])
def test_a_malformed_requirement_exits_2_before_anything_runs(cli, prepared, bad):
    before = _eval_rows(prepared["home"])
    for argv in (("models", "eval", prepared["model_id"], "--require", bad),
                 ("watch", prepared["job_id"], "--require", bad),
                 ("train", "--dataset", "support", "--preset", "tiny", "--base-model", "builtin:tiny", "--require", bad)):
        result = cli(*argv)
        assert result.exit_code == 2, argv
        _one_error_line(result)
    assert _eval_rows(prepared["home"]) == before
    assert [job["id"] for job in json.loads(cli("jobs", "list", "--json").stdout)] == [prepared["job_id"]]


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


def test_bad_eval_input_is_one_error_line_and_writes_nothing(cli, prepared):
    model = prepared["model_id"]
    storage = prepared["home"] / "storage"
    broken = prepared["home"] / "broken.jsonl"
    broken.write_text('{"turns": [{"role": "user"}]}\n')
    assert cli("dataset", "add", str(broken), "--name", "broken").exit_code == 2  # kept in status error, with its report
    files_before = sorted(p for p in storage.rglob("*"))
    jobs_before = cli("jobs", "list", "--json").stdout
    cases = {
        ("models", "eval", model, "--dataset", "broken"): "dataset 'broken' is error, not ready to evaluate on",
        ("models", "eval", "nope"): "no model matches 'nope'",
        ("models", "try", "nope", "hi"): "no model matches 'nope'",
        ("models", "compare", model, "base:nope"): "no model matches 'nope'",
        ("models", "eval", model, "--limit", "0"): "0 is not in the range 1<=x",
        ("models", "compare", model, "base:" + model, "--limit", "0"): "0 is not in the range 1<=x",
        ("models", "eval", model, "--dataset", "no-held-out"): "has no held-out split",
        ("models", "eval", model, "--dataset", "missing"): "no dataset",
        ("train", "--dataset", "no-held-out", "--preset", "tiny", "--require", "rougeL>base"):
            "has no held-out split for --require to judge the job's answers on",
        ("models", "compare", model): "at least two models",
        ("models", "eval", model, "--require", "tool_call_match>=0.5"): "needs answers that call tools, and none of the",
        ("train", "--dataset", "support", "--preset", "tiny", "--base-model", "builtin:tiny", "--require", "tool_name_match>0"):
            "needs answers that call tools, and none of the",
        ("models", "try", model, "hi", "--max-new-tokens", "0"): "--max-new-tokens must be between 1 and 65536, got 0; pass how many",
        ("models", "export", model, ""): "TARGET is empty",
        ("models", "merge", model, " "): "OUT_DIR is empty",
        ("models", "compare", model, model[:8]): "are the same model: it would be compared with itself",
        ("models", "compare", "base:" + model, "base:" + model[:8], model): "are the same base model",
        ("models", "compare", model, model): "a model is named twice",
        ("models", "try", model, "hi", "--temperature", "-1"): "temperature",
    }
    for argv, says in cases.items():
        result = cli(*argv)
        assert result.exit_code == 2, (argv, result.stderr)
        _one_error_line(result)
        assert says in result.stderr, (argv, result.stderr)
    # The held-out hint says how to get a split.
    assert "--val-split 0.1" in cli("models", "eval", model, "--dataset", "no-held-out").stderr
    assert sorted(p for p in storage.rglob("*")) == files_before
    assert _eval_rows(prepared["home"]) == [("job", JOB_EVAL_SAMPLES)]
    assert cli("jobs", "list", "--json").stdout == jobs_before  # the gated train queued nothing


def test_a_base_model_directory_without_a_tokenizer_or_a_corrupt_gguf_is_refused(cli, prepared, tmp_path):
    from brightrun_cli.builtin import resolve_base_model

    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(resolve_base_model("builtin:tiny")) / name, no_tokenizer / name)
    corrupt = tmp_path / "model.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    jobs_before = cli("jobs", "list", "--json").stdout
    for base, says in ((str(no_tokenizer), "no tokenizer"), (str(corrupt), "is not a valid GGUF file")):
        for argv in (("train", "--dataset", "support", "--preset", "tiny", "--base-model", base),
                     ("estimate", "--dataset", "support", "--preset", "tiny", "--base-model", base)):
            result = cli(*argv)
            if argv[0] == "estimate" and base == str(no_tokenizer):
                continue  # estimate reads only config.json: a tokenizer is the trainer's concern
            assert result.exit_code == 2, (argv, result.stderr)
            _one_error_line(result)
            assert says in result.stderr
    assert cli("jobs", "list", "--json").stdout == jobs_before
    assert not (prepared["home"] / "cache" / "models").exists()


# ---------------------------------------------------------------- models try and compare


def test_models_try_answers_once_and_with_the_base_beside_it(cli, prepared):
    model = prepared["model_id"]
    one = cli("models", "try", model, "Where is my order 80239?", "--max-new-tokens", "12")
    assert one.exit_code == 0, one.stderr
    assert one.stdout.count("\n") >= 1 and "tuned:" not in one.stdout
    both = cli("models", "try", model, "Where is my order 80239?", "--base", "--max-new-tokens", "12", "--json")
    out = json.loads(both.stdout)
    assert out["model_id"] == model and out["messages"] == [{"role": "user", "content": "Where is my order 80239?"}]
    assert out["tuned"]["answer"] == one.stdout.strip() and out["base"]["tokens"] >= 1
    # Sampled answers repeat with a seed.
    sampled = [json.loads(cli("models", "try", model, "Hello", "--temperature", "0.9", "--seed", "7", "--max-new-tokens", "10",
                              "--json").stdout)["tuned"]["answer"] for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_models_try_with_tools_prompts_with_them_and_a_bad_tools_file_is_one_error_line(cli, prepared, tmp_path):
    model = prepared["model_id"]
    functions = [{"type": "function", "function": {"name": "order_status", "parameters": {"type": "object"}}}]
    (tmp_path / "tools.json").write_text(json.dumps(functions))
    ask = (model, "Where is my order 80239?", "--max-new-tokens", "12", "--json")
    plain = json.loads(cli("models", "try", *ask).stdout)
    with_tools = cli("models", "try", *ask, "--tools", str(tmp_path / "tools.json"))
    assert with_tools.exit_code == 0, with_tools.stderr
    out = json.loads(with_tools.stdout)
    assert out["tools"] == functions and "tools" not in plain
    assert out["tuned"]["answer"] != plain["tuned"]["answer"]  # the prompt now starts with the tool list
    assert out["tuned"]["calls"] == [] and "calls" not in plain["tuned"]  # the toy writes no call
    for text, expected in (("[{\"type\": \"function\"}]", "--tools " + str(tmp_path / "bad.json") + ": tools[0] has no function name"),
                           ("{not json", "not valid JSON"), ("[]", "lists no function")):
        (tmp_path / "bad.json").write_text(text)
        bad = cli("models", "try", model, "Hi", "--tools", str(tmp_path / "bad.json"))
        assert bad.exit_code == 2 and expected in bad.stderr
        _one_error_line(bad)


def test_models_try_json_lists_the_calls_an_answer_writes(cli, prepared, tmp_path, monkeypatch):
    from brightrun_cli.generation.engine import Answer, ChatModel

    (tmp_path / "tools.json").write_text(json.dumps([{"type": "function", "function": {"name": "order_status"}}]))
    text = 'Checking.<tool_call>{"name": "order_status", "arguments": {"order": "80239"}}</tool_call>'
    monkeypatch.setattr(ChatModel, "answer", lambda self, messages, **kw: Answer(text, True, 20))
    out = json.loads(cli("models", "try", prepared["model_id"], "Where is 80239?", "--tools", str(tmp_path / "tools.json"),
                         "--json").stdout)
    assert out["tuned"] == {"answer": text, "stopped": True, "tokens": 20,
                            "calls": [{"name": "order_status", "arguments": {"order": "80239"}}]}


def test_models_try_without_a_prompt_off_a_terminal_is_a_usage_error(cli, prepared):
    result = cli("models", "try", prepared["model_id"])
    assert result.exit_code == 2
    _one_error_line(result)
    assert "stdin is not a terminal" in result.stderr


def test_models_try_chat_keeps_the_conversation_and_its_commands(prepared, monkeypatch, capsys):
    """The interactive loop (a terminal's input() replaced by a script): multi-turn, /system, /reset, /quit."""
    from brightrun_cli.cli.models import _chat
    from brightrun_cli.services.evals import loaded, sampling
    from brightrun_cli.services.models import get_model
    from brightrun_cli.workspace import Workspace

    ws = Workspace.open(prepared["home"])
    seen = []
    lines = iter(["Where is my order 80239?", "And 12345?", "/system You are terse.", "Hi", "/reset", "Hi", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    with loaded(ws, get_model(ws, prepared["model_id"])) as chat_model:
        real_stream = chat_model.stream

        def stream(messages, **kwargs):
            seen.append([dict(m) for m in messages])
            return real_stream(messages, **kwargs)

        chat_model.stream = stream
        _chat(chat_model, [], sampling(temperature=0.0, top_p=1.0, max_new_tokens=8, seed=None), with_base=False)
    assert [len(m) for m in seen] == [1, 3, 2, 2]  # second turn sees the first; /system starts over; /reset too
    assert seen[1][0]["content"] == "Where is my order 80239?" and seen[1][1]["role"] == "assistant"
    assert seen[2][0] == {"role": "system", "content": "You are terse."} and seen[3][0]["role"] == "system"
    assert capsys.readouterr().out.count("model> ") == 4


def test_models_compare_answers_the_same_prompts_and_names_winners(cli, prepared):
    model = prepared["model_id"]
    result = cli("models", "compare", model, "base:" + model, "--limit", "3", "--max-new-tokens", str(MAX_NEW_TOKENS), "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert [e["label"] for e in out["entries"]] == [model, "base:" + model]
    assert [e["base"] for e in out["entries"]] == [False, True]
    assert len(out["samples"]) == 3 and all(set(s["answers"]) == {model, "base:" + model} for s in out["samples"])
    assert set(out["winners"]) >= {"exact_match", "rougeL", "chrf"}
    # base:MODEL answers exactly as the job's eval recorded the base model's answers.
    recorded = json.loads(cli("models", "show", model, "--json").stdout)["eval"]["samples"]
    assert [s["answers"]["base:" + model]["answer"] for s in out["samples"]] == [r["base"]["answer"] for r in recorded[:3]]
    human = cli("models", "compare", model, "base:" + model, "--limit", "3", "--max-new-tokens", "12")
    assert human.exit_code == 0 and "best" in human.stdout


def test_answers_cut_inside_their_reasoning_are_counted_and_the_eval_says_how_to_give_them_room(cli, prepared, monkeypatch):
    """A model that thinks first and runs out of max_new_tokens while thinking has no answer:
    it scores as empty, and the eval says so instead of leaving a mystery zero."""
    from brightrun_cli.generation.engine import Answer, ChatModel

    def answers(self, prompts, *, base=False, **kw):
        return [Answer("<think>\nLet me think about this at length" if base else "<think>\n\n</think>\n\nHello.", not base, 9)
                for _ in prompts]

    monkeypatch.setattr(ChatModel, "answers", answers)
    evaluated = cli("models", "eval", prepared["model_id"], "--limit", "4")
    assert evaluated.exit_code == 0, evaluated.output
    text = " ".join(evaluated.stdout.split())
    assert "answers ran out of max_new_tokens inside their reasoning (base 4), so they have no answer to score" in text
    stored = json.loads(cli("models", "show", prepared["model_id"], "--json").stdout)["eval"]
    assert stored["base"]["cut_in_reasoning"] == 4 and stored["tuned"]["cut_in_reasoning"] == 0
    assert stored["base"]["token_f1"] == 0.0 and stored["samples"][0]["base"]["answer"].startswith("<think>")


def test_answers_with_brackets_print_as_written_not_as_terminal_markup(cli, prepared, monkeypatch):
    """Models write [b], [/THINK], [TOOL_CALLS]: the sample table prints them, it does not
    read them as styles (a closing tag without its opening one would vanish with its text)."""
    from brightrun_cli.generation.engine import Answer, ChatModel

    written = "[TOOL_CALLS] [b]42[/b] [/THINK] [red]done"
    monkeypatch.setattr(ChatModel, "answers", lambda self, prompts, **kw: [Answer(written, True, 9) for _ in prompts])
    assert cli("models", "eval", prepared["model_id"], "--limit", "2").exit_code == 0
    monkeypatch.setenv("COLUMNS", "400")
    shown = cli("models", "show", prepared["model_id"])
    assert shown.exit_code == 0 and written in shown.stdout


def test_compare_judges_disagreement_by_the_answers_not_the_reasoning_before_them(cli, prepared, monkeypatch):
    from brightrun_cli.generation.engine import Answer, ChatModel

    def answers(self, prompts, *, base=False, **kw):
        return [Answer(f"<think>{'short' if base else 'a much longer line of thought'}</think>\n\nHello.", True, 9) for _ in prompts]

    monkeypatch.setattr(ChatModel, "answers", answers)
    compared = cli("models", "compare", prepared["model_id"], f"base:{prepared['model_id']}", "--limit", "3")
    assert compared.exit_code == 0, compared.output
    assert "the models answer every sample alike" in compared.stdout
