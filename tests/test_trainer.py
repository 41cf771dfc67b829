"""The trainer's contract and its training-quality guarantees (fast tests; real training is in test_trainer_slow.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from brightrun_cli.builtin import builtin_names, resolve_base_model
from brightrun_cli.runners.accelerate import accelerate_argv, trainer_command
from brightrun_cli.trainer.main import main as trainer_main
from brightrun_cli.trainer.spec import Hyperparameters

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "support_conversations.jsonl"
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Where is my order 12345?"},
    {"role": "assistant", "content": "Order 12345 has shipped."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome!"},
]


def write_run_dir(run_dir: Path, conversations=None, validation=None, **overrides) -> Path:
    """A self-contained run dir (spec.json + split files) as the supervisor writes it."""
    lines = EXAMPLES.read_text().splitlines()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "train.jsonl").write_text("\n".join(conversations or lines[:48]) + "\n")
    (run_dir / "validation.jsonl").write_text("\n".join(validation or lines[-16:]) + "\n")
    spec = {
        "version": 1, "job_id": "test", "base_model": "builtin:tiny",
        "train_file": "train.jsonl", "validation_file": "validation.jsonl", "output_dir": ".", "seed": 3,
        "hyperparameters": {"learning_rate": 3e-3, "batch_size": 8, "num_epochs": 1, "lora_rank": 8,
                            "lora_alpha": 16, "lora_dropout": 0.0, "warmup_steps": 1, "max_seq_length": 512},
        "logging_steps": 1, "save_steps": 0, "max_steps": None, "resume": False,
    }
    for key, value in overrides.items():
        if key in Hyperparameters.__dataclass_fields__:
            spec["hyperparameters"][key] = value
        else:
            spec[key] = value
    path = run_dir / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


# ---------------------------------------------------------------- built-in model and launch argv

def test_builtin_tiny_resolves_to_a_shipped_model_directory():
    path = Path(resolve_base_model("builtin:tiny"))
    assert "builtin:tiny" in builtin_names()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (path / name).is_file(), name
    assert resolve_base_model("org/name") == "org/name"
    with pytest.raises(ValueError, match="builtin:tiny"):
        resolve_base_model("builtin:huge")
    with pytest.raises(ValueError):
        resolve_base_model("builtin:../../etc")


def test_builtin_tokenizer_is_byte_level_with_a_chat_template_and_stops_at_end_of_turn():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_base_model("builtin:tiny"))
    text = "Prix: 12,50 € — ok? ~{}[]|\\"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    rendered = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"


def test_accelerate_argv_is_explicit_and_really_starts_several_processes():
    one = accelerate_argv("/r/spec.json", python="py")
    assert one[:4] == ["py", "-m", "accelerate.commands.launch", "--quiet"]
    assert one[-3:] == ["-m", "brightrun_cli.trainer", "/r/spec.json"]
    for flag in ("--num_processes", "--num_machines", "--mixed_precision", "--dynamo_backend", "--num_cpu_threads_per_process"):
        assert flag in one
    assert "--multi_gpu" not in one
    assert "--cpu" in accelerate_argv("s.json", cpu=True)
    two = accelerate_argv("s.json", num_processes=2, main_process_port=29512)
    assert "--multi_gpu" in two and "--cpu" not in two
    assert two[two.index("--num_processes") + 1] == "2"
    multi = accelerate_argv("s.json", num_processes=8, num_machines=2, machine_rank=1,
                            main_process_ip="10.0.0.1", main_process_port=29500)
    assert multi[multi.index("--num_processes") + 1] == "16"
    assert multi[multi.index("--machine_rank") + 1] == "1"
    with pytest.raises(ValueError):
        accelerate_argv("s.json", num_processes=2, cpu=True)
    with pytest.raises(ValueError):
        accelerate_argv("s.json", num_machines=2)


def test_one_process_starts_the_trainer_without_the_launcher_and_more_use_accelerate():
    argv, env = trainer_command("/r/spec.json", python="py")
    assert argv == ["py", "-m", "brightrun_cli.trainer", "/r/spec.json"] and env == {}
    # A CPU-only single process keeps accelerate's --cpu meaning through its environment flag.
    assert trainer_command("s.json", python="py", cpu=True)[1] == {"ACCELERATE_USE_CPU": "true"}
    two, env = trainer_command("s.json", num_processes=2, main_process_port=29512, python="py")
    assert two == accelerate_argv("s.json", num_processes=2, main_process_port=29512, python="py") and env == {}
    # A user's accelerate config is read by the launcher only: one process still goes through it.
    fsdp, _ = trainer_command("s.json", python="py", config_file="a.yaml", distributed_type="FSDP")
    assert fsdp[:3] == ["py", "-m", "accelerate.commands.launch"] and fsdp[fsdp.index("--config_file") + 1] == "a.yaml"
    nodes, _ = trainer_command("s.json", num_machines=2, main_process_ip="10.0.0.1", main_process_port=29500)
    assert "accelerate.commands.launch" in nodes and nodes[nodes.index("--num_machines") + 1] == "2"


# ---------------------------------------------------------------- fail fast, exit 2, nothing trained

@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"learning_rate": 5.0}, "learning_rate"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"lr_scheduler": "exponential"}, "lr_scheduler"),
        ({"train_file": "missing.jsonl"}, "train_file 'missing.jsonl' does not exist"),
        ({"base_model": "builtin:huge"}, "unknown built-in base model"),
        ({"base_model": "/nonexistent/model-dir"}, "cannot load base model"),
        ({"max_seq_length": 100000}, "exceeds the base model's context"),
        ({"target_modules": ["no_such_proj"]}, "target_modules"),
    ],
)
def test_invalid_specs_fail_fast_with_exit_2_and_nothing_trained(tmp_path, capsys, overrides, message):
    spec = write_run_dir(tmp_path, **overrides)
    assert trainer_main([str(spec)]) == 2
    assert message in result(tmp_path)["error"]
    assert result(tmp_path)["status"] == "failed" and result(tmp_path)["exit_code"] == 2
    assert not (tmp_path / "final").exists()
    assert not (tmp_path / "metrics.jsonl").exists() or (tmp_path / "metrics.jsonl").read_text() == ""


def test_unknown_keys_are_rejected(tmp_path):
    spec = write_run_dir(tmp_path)
    data = json.loads(spec.read_text())
    data["hyperparameters"]["lerning_rate"] = 1e-4
    spec.write_text(json.dumps(data))
    assert trainer_main([str(spec)]) == 2
    assert "lerning_rate" in result(tmp_path)["error"]
    del data["hyperparameters"]["lerning_rate"]
    data["max_step"] = 3
    spec.write_text(json.dumps(data))
    assert trainer_main([str(spec)]) == 2
    assert "max_step" in result(tmp_path)["error"]


def test_non_causal_base_model_is_rejected(tmp_path):
    model_dir = tmp_path / "t5"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}))
    spec = write_run_dir(tmp_path / "run", base_model=str(model_dir))
    assert trainer_main([str(spec)]) == 2
    assert "not a causal language model" in result(tmp_path / "run")["error"]


def test_data_without_assistant_turns_is_rejected(tmp_path):
    no_answers = [json.dumps({"conversation_id": str(i), "turns": [{"role": "user", "content": "hello"}]}) for i in range(8)]
    spec = write_run_dir(tmp_path, conversations=no_answers)
    assert trainer_main([str(spec)]) == 2
    assert "no assistant tokens" in result(tmp_path)["error"]


def test_malformed_dataset_line_is_named(tmp_path):
    spec = write_run_dir(tmp_path, conversations=['{"conversation_id": "1", "turns": "oops"}'])
    assert trainer_main([str(spec)]) == 2
    assert "train.jsonl line 1" in result(tmp_path)["error"]


# ---------------------------------------------------------------- masking, packing, schedule

@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoTokenizer

    from brightrun_cli.trainer.data import ensure_chat_template

    tok = AutoTokenizer.from_pretrained(resolve_base_model("builtin:tiny"))
    ensure_chat_template(tok)
    return tok


def test_only_assistant_tokens_and_their_end_of_turn_carry_loss(tiny):
    from brightrun_cli.trainer.data import IGNORE, tokenize

    example = tokenize(tiny, CONVERSATION, max_length=512, assistant_only=True)
    trained = [t for t in example.targets if t != IGNORE]
    assert tiny.decode(trained) == "Order 12345 has shipped.<|im_end|>You're welcome!<|im_end|>"
    # every system/user token (and the role headers) has no target
    prompt_len = len(tiny.apply_chat_template(CONVERSATION[:2], tokenize=True, add_generation_prompt=True, return_dict=False))
    assert all(t == IGNORE for t in example.targets[: prompt_len - 1])
    everything = tokenize(tiny, CONVERSATION, max_length=512, assistant_only=False)
    assert sum(t != IGNORE for t in everything.targets) == len(everything.input_ids) - 1


def test_chatml_fallback_template_for_tokenizers_without_one(tiny):
    from brightrun_cli.trainer.data import FALLBACK_CHAT_TEMPLATE, IGNORE, ensure_chat_template, tokenize

    tiny = tiny.__class__.from_pretrained(resolve_base_model("builtin:tiny"))
    tiny.chat_template = None
    ensure_chat_template(tiny)
    assert tiny.chat_template == FALLBACK_CHAT_TEMPLATE
    example = tokenize(tiny, CONVERSATION[:3], max_length=512, assistant_only=True)
    assert tiny.decode([t for t in example.targets if t != IGNORE]) == "Order 12345 has shipped." + tiny.eos_token


def test_packed_and_padded_batches_give_the_same_loss_and_gradients(tiny):
    """Packing must not let conversations see each other: identical loss to separate, padded rows."""
    import torch
    from transformers import AutoModelForCausalLM

    from brightrun_cli.trainer import attention
    from brightrun_cli.trainer.data import IGNORE, collate, tokenize

    lines = EXAMPLES.read_text().splitlines()[:6]
    examples = [tokenize(tiny, [dict(t) for t in json.loads(l)["turns"]], 512, True) for l in lines]
    model = AutoModelForCausalLM.from_pretrained(resolve_base_model("builtin:tiny"), attn_implementation=attention.register())
    results = []
    for packed in (True, False):
        model.zero_grad()
        batch = collate(examples, packed, tiny.pad_token_id)
        logits = batch.target_logits(model(**batch.model_inputs()).logits)
        loss = torch.nn.functional.cross_entropy(logits, batch.targets[batch.targets != IGNORE])
        loss.backward()
        results.append((loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.clone(), batch))
    (packed_loss, packed_grad, packed_batch), (padded_loss, padded_grad, padded_batch) = results
    assert packed_batch.input_ids.shape[0] == 1 and padded_batch.input_ids.shape[0] == len(examples)
    assert packed_batch.padded_tokens < padded_batch.padded_tokens
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    assert torch.allclose(packed_grad, padded_grad, atol=1e-6, rtol=1e-4)
    # Control: the same row without conversation boundaries attends across conversations.
    with torch.no_grad():
        columns = packed_batch.model_inputs()["logits_to_keep"]
        leaked = packed_batch.target_logits(model(input_ids=packed_batch.input_ids, logits_to_keep=columns).logits)
    targets = packed_batch.targets[packed_batch.targets != IGNORE]
    leaked_loss = torch.nn.functional.cross_entropy(leaked.reshape(-1, leaked.shape[-1]), targets).item()
    assert abs(leaked_loss - packed_loss) > 1e-3


def test_epoch_plan_is_deterministic_covers_every_example_and_splits_evenly():
    from brightrun_cli.trainer.loop import epoch_plan

    plan = epoch_plan(10, batch_size=2, accumulation=2, world=1, seed=1, epoch=0)
    assert plan == epoch_plan(10, batch_size=2, accumulation=2, world=1, seed=1, epoch=0)
    assert plan != epoch_plan(10, batch_size=2, accumulation=2, world=1, seed=1, epoch=1)
    assert sorted(i for step in plan for mb in step[0] for i in mb) == list(range(10))
    assert [len(step[0]) for step in plan] == [2, 2, 1]
    two = epoch_plan(10, batch_size=2, accumulation=1, world=2, seed=1, epoch=0)
    assert all(len(step) == 2 and len(step[0]) == len(step[1]) == 1 for step in two)
    # 5 micro-batches over 2 processes: the odd one is dropped rather than stalling a process
    assert len([i for step in two for g in step for mb in g for i in mb]) == 8


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_schedule_warms_up_then_decays(kind):
    from brightrun_cli.trainer.loop import lr_lambda

    f = lr_lambda(warmup=4, total=20, kind=kind)
    warm = [f(s) for s in range(5)]
    assert warm == sorted(warm) and warm[0] < 0.3 and warm[4] == 1.0
    assert f(19) == (1.0 if kind == "constant" else pytest.approx(f(19)))
    if kind != "constant":
        assert f(19) < 0.1 and all(f(s) >= f(s + 1) for s in range(4, 19))


def test_each_logged_learning_rate_is_the_one_its_step_used(tmp_path):
    """Step N is trained at the schedule's rate for N-1 optimizer steps taken; the log, watch,
    plots and trackers show that rate, not the next step's."""
    from brightrun_cli.trainer.loop import lr_lambda
    from brightrun_cli.trainer.main import main as trainer_main

    spec = write_run_dir(tmp_path, max_steps=4, warmup_steps=2, lr_scheduler="linear", eval=None)
    assert trainer_main([str(spec)]) == 0
    logged = [json.loads(l)["learning_rate"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    f = lr_lambda(warmup=2, total=4, kind="linear")
    assert logged == [pytest.approx(3e-3 * f(step)) for step in range(4)]
    assert logged[0] < 3e-3 and logged[-1] > 0  # warming up at the first step; still learning at the last


def test_save_steps_checkpoints_periodically_and_keeps_the_newest_two(tmp_path):
    from brightrun_cli import lifecycle
    from brightrun_cli.trainer.main import main as trainer_main

    spec = write_run_dir(tmp_path, max_steps=5, save_steps=1, eval=None)
    assert trainer_main([str(spec)]) == 0
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step-3", "step-4"]  # every step but the last saved; older ones pruned
    assert lifecycle.latest_checkpoint(tmp_path).name == "step-4"
    assert (tmp_path / "checkpoints" / "step-4" / "adapter_model.safetensors").is_file()


def test_python_module_usage_line():
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "brightrun_cli.trainer"], capture_output=True, text=True,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert proc.returncode == 2 and "usage: accelerate launch -m brightrun_cli.trainer" in proc.stderr


def test_a_diverged_loss_is_written_as_null_and_the_line_is_still_ingested(tmp_path):
    from brightrun_cli.supervisor.ingest import MetricsTail
    from brightrun_cli.trainer.files import MetricsWriter

    writer = MetricsWriter(tmp_path / "metrics.jsonl", enabled=True)
    writer.write(split="train", epoch=0.5, step=7, training_loss=float("nan"), grad_norm=float("inf"), learning_rate=1e-4)
    writer.close()
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert line["training_loss"] is None and line["grad_norm"] is None and line["learning_rate"] == 1e-4
    tail = MetricsTail(tmp_path / "metrics.jsonl")
    assert [m.step for m in tail.read()] == [7] and tail.bad_lines == 0


def test_the_saved_adapter_holds_every_trainable_tensor_also_under_wrapper_modules(tmp_path):
    """FSDP1 puts its units into the module tree (`..._fsdp_wrapped_module.self_attn...`) while the
    gathered state dict names the plain model: the adapter must still hold every LoRA tensor under
    the keys peft loads, and a save that would miss one fails instead of writing it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from brightrun_cli.trainer.loop import adapter_weights, write_adapter

    def lora_model():
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(resolve_base_model("builtin:tiny"))
        model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        return model

    plain = lora_model()
    write_adapter(plain, None, tmp_path / "plain")
    expected = load_file(str(tmp_path / "plain" / "adapter_model.safetensors"))
    trainable = [n for n, p in plain.named_parameters() if p.requires_grad]
    assert len(expected) == len(trainable) > 0
    assert set(expected) == {n.replace(".default", "") for n in trainable}

    class Unit(torch.nn.Module):  # what FSDP1 wraps a decoder layer in, as far as names go
        def __init__(self, layer):
            super().__init__()
            self._fsdp_wrapped_module = layer

        def forward(self, *args, **kwargs):
            return self._fsdp_wrapped_module(*args, **kwargs)

    wrapped = lora_model()
    layers = wrapped.base_model.model.model.layers
    for i in range(len(layers)):
        layers[i] = Unit(layers[i])
    gathered = {k.replace("_fsdp_wrapped_module.", ""): v for k, v in wrapped.state_dict().items()}
    write_adapter(wrapped, gathered, tmp_path / "wrapped")
    saved = load_file(str(tmp_path / "wrapped" / "adapter_model.safetensors"))
    assert set(saved) == set(expected)
    assert all(torch.equal(saved[k], expected[k]) for k in expected)

    with pytest.raises(RuntimeError, match="the adapter to save has 0 tensors but the model trains"):
        adapter_weights(plain, {k: v for k, v in plain.state_dict().items() if "lora_" not in k})


def test_warm_up_is_cut_to_its_fraction_of_the_run():
    """What the estimate reports and the trainer's schedule does (both call warmup_for):
    balanced's 100 steps on a 136-step run warm up for 13; a short warm-up is kept; a spec
    written before max_warmup_fraction existed keeps its warm-up within the run."""
    from brightrun_cli.trainer.schedule import warmup_for

    assert warmup_for(100, 0.1, 136) == 13
    assert warmup_for(5, 0.1, 136) == 5
    assert warmup_for(100, 0.0, 136) == 0
    assert Hyperparameters().max_warmup_fraction == 1.0 and warmup_for(100, 1.0, 50) == 50


def test_a_profiled_step_says_where_its_time_went_and_trains_as_any_other(tmp_path, monkeypatch):
    from brightrun_cli.trainer.main import main as trainer_main

    monkeypatch.setenv("BRIGHTRUN_PROFILE_STEP", "2")
    spec = write_run_dir(tmp_path, max_steps=3, eval=None)
    assert trainer_main([str(spec)]) == 0
    profile = (tmp_path / "profile.txt").read_text()
    first = profile.splitlines()[0]
    assert first.startswith("step 2: ") and " s wall, " in first and "real tokens" in first
    assert "aten::" in profile and "Self CPU" in profile  # the operator table, by time
    steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert steps == [1, 2, 3] and result(tmp_path)["status"] == "completed"
    assert "profile of step 2" in (tmp_path / "trainer.log").read_text()


def test_a_profile_step_that_is_not_a_step_number_is_ignored_with_a_word(tmp_path, monkeypatch):
    from brightrun_cli.trainer.main import main as trainer_main

    monkeypatch.setenv("BRIGHTRUN_PROFILE_STEP", "last")
    spec = write_run_dir(tmp_path, max_steps=1, eval=None)
    assert trainer_main([str(spec)]) == 0
    assert not (tmp_path / "profile.txt").exists()
    assert "BRIGHTRUN_PROFILE_STEP=last ignored" in (tmp_path / "trainer.log").read_text()
