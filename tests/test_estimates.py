"""Estimates: the FLOPs and memory models against hand-computed cases, calibration from
completed jobs, the reference formula beside it, and the errors that exit 2."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlmodel import select

from brightrun_cli.presets.schema import TrainingConfig
from brightrun_cli.registry.tables import Dataset, MetricPoint, TrainingJob
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.services.dataset_tokens import APPROX_METHOD
from brightrun_cli.services.estimates import estimate, trainer_steps_per_epoch
from brightrun_cli.services.flops import GIB, ModelShape, memory_need, train_flops_per_token
from brightrun_cli.services.gpus import get_gpu, list_gpus
from brightrun_cli.workspace import Workspace
from model_helpers import LLAMA_7B, LLAMA_70B, SMALL, SMOLLM2_135M, dataset_with_stats, model_dir


@pytest.fixture
def ws() -> Workspace:
    return Workspace.open()


def test_flops_model_7b_llama_one_million_tokens_on_h100(ws):
    shape = ModelShape.from_config(LLAMA_7B)
    # Per layer: attention 4 * 4096^2, gated MLP 3 * 4096 * 11008; plus the untied LM head.
    per_layer = 4 * 4096**2 + 3 * 4096 * 11008
    frozen = 32 * per_layer + 32000 * 4096
    assert shape.matmul_params_per_token == frozen == 6_607_077_376
    assert shape.total_params == frozen + 32000 * 4096  # + input embeddings
    lora = 32 * 4 * 16 * (4096 + 4096)  # rank 16 on q, k, v, o
    attention = 12 * 32 * 4096 * 2048  # fwd 4*L*d*s, bwd twice that
    per_token = 4 * frozen + 6 * lora + attention
    config = TrainingConfig(lora_rank=16, max_seq_length=2048)
    assert train_flops_per_token(shape, config, 2048) == per_token == 29_750_198_272
    h100 = get_gpu(ws, "H100")
    seconds = 1_000_000 * per_token / (989e12 * h100.utilization)
    assert seconds == pytest.approx(85.94, abs=0.01)
    # Gradient checkpointing adds one forward: 2N + 2 lora + 4*L*d*s.
    with_gc = train_flops_per_token(shape, config.replace(gradient_checkpointing=True), 2048)
    assert with_gc - per_token == 2 * frozen + 2 * lora + attention // 3


def test_memory_fit_7b_lora_batch8_2k_needs_checkpointing_on_80gb(ws):
    shape = ModelShape.from_config(LLAMA_7B)
    config = TrainingConfig(batch_size=8, max_seq_length=2048)
    need = memory_need(shape, config, 2048, weight_bytes=2, on_gpu=True)
    assert need.weights == pytest.approx(6_738_149_376 * 2)
    # 16k tokens a micro-batch keep > 80 GB of activations (an H200 measured a Llama-3.1-8B
    # step of 3,087 tokens at 54.9 GiB); each layer's input alone fits.
    assert need.total > 80 * GIB
    checkpointed = memory_need(shape, config.replace(gradient_checkpointing=True), 2048, weight_bytes=2, on_gpu=True)
    assert 16 * GIB < checkpointed.total <= 40 * GIB


def test_memory_plan_is_within_10_percent_of_a_measured_h200_step(ws):
    """bench/RESULTS.md, 2026-12-04: a random Llama-3.2-1B shape, bf16, LoRA r=16 on every
    linear, 8 rows of 2,048 (15,260 real tokens a step, packed), fused loss: 31.6 GiB peak.
    Counting the q/k/v LoRA input once (as before) planned 22.5 GiB: rows=fit then chose 52
    rows, which ran out of memory."""
    config_json = dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True)
    shape = ModelShape.from_config(config_json)
    config = TrainingConfig(batch_size=8, lora_rank=16, lora_dropout=0.0, target_modules="all-linear", max_seq_length=2048)
    planned = memory_need(shape, config, 2048, weight_bytes=2, on_gpu=True).total / GIB
    assert planned == pytest.approx(31.6, rel=0.1)


def test_each_lora_module_keeps_its_own_input_and_dropout_its_mask(ws):
    shape = ModelShape.from_config(LLAMA_7B)
    qv = TrainingConfig(batch_size=1, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    plain = memory_need(shape, qv, 1024, weight_bytes=2, on_gpu=True).activations
    # q and v each keep a bf16 copy of the layer's input (one h each, not one shared h)...
    qkvo = memory_need(shape, qv.replace(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]), 1024,
                       weight_bytes=2, on_gpu=True).activations
    assert qkvo - plain == 1024 * 2 * 32 * (2 * 4096)
    # ... and with dropout a byte-per-element mask beside each copy.
    dropped = memory_need(shape, qv.replace(lora_dropout=0.05), 1024, weight_bytes=2, on_gpu=True).activations
    assert dropped - plain == 1024 * 2 * 32 * 4096


def test_estimate_says_what_fits_when_it_does_not(ws, tmp_path):
    dataset_with_stats(ws, train_tokens=2_000_000)
    model = model_dir(tmp_path, LLAMA_7B)
    est = estimate(ws, "support-v1", preset="balanced", overrides=("batch_size=8", "packing=false"), base_model=model,
                   gpu_type="A10G", gpus=1)
    assert not est.fits_in_memory
    assert "--set batch_size=" in est.memory_advice and "A10G has 24 GB" in est.memory_advice
    fits = estimate(ws, "support-v1", preset="balanced", base_model=model, gpu_type="A100-80GB", gpus=1)
    assert fits.fits_in_memory and fits.memory_advice is None


def test_estimate_json_has_reference_names_and_reference_formula(ws, tmp_path):
    dataset_with_stats(ws)
    est = estimate(ws, "support-v1", preset="fast", base_model=model_dir(tmp_path, LLAMA_7B), gpu_type="A100-80GB", gpus=2)
    data = est.to_json()
    assert data["hourly_rate"] == 7.0
    assert data["training_details"]["steps_per_epoch"] == trainer_steps_per_epoch(1000, est.config, 2) == 62  # 125 micro-batches in pairs; the odd one is dropped
    assert data["training_details"]["total_steps"] == 62
    assert data["estimated_cost"] == pytest.approx(data["cost_breakdown"]["compute"] + data["cost_breakdown"]["storage"], abs=0.011)
    assert data["estimated_duration_hours"] == pytest.approx(est.duration_s / 3600, abs=1e-4)
    assert data["calibration"]["calibrated"] is False
    ref = data["reference_estimate"]
    # Reference: ceil(1000 / 8) = 125 steps; 125 * (1e6 / 1000 * 8) tokens at 2 x 1800 tok/s, plus 10 + 5 + 5 min.
    assert ref["training_details"]["total_steps"] == 125
    assert ref["estimated_duration_hours"] == round((125 * 8000 / 3600 + 1200) / 3600, 2)
    assert ref["cost_breakdown"]["storage"] == 0.5
    # Types the reference never priced get no reference figure.
    assert estimate(ws, "support-v1", base_model=model_dir(tmp_path, LLAMA_7B, "m2"), gpu_type="L4", gpus=1).reference is None


def test_trainer_step_count_matches_its_epoch_plan():
    from brightrun_cli.trainer.loop import epoch_plan

    for n, batch, accum, world in [(10, 3, 1, 1), (100, 8, 2, 2), (7, 2, 1, 3), (64, 4, 4, 1), (33, 4, 1, 8)]:
        config = TrainingConfig(batch_size=batch, gradient_accumulation_steps=accum)
        expected = len(epoch_plan(n, batch, accum, world, 42, 0)) or 1
        assert trainer_steps_per_epoch(n, config, world) == expected, (n, batch, accum, world)


def _completed_job(ws, dataset, base_model, *, gpu="cpu", tokens=30_000, wall_s=100.0, tps=500.0, startup_s=20.0):
    """A completed job with a step throughput per train point (`tps`: one rate, or one per step)."""
    end = utcnow()
    config = TrainingConfig(num_epochs=1, lora_rank=8)
    with ws.registry.write() as session:
        job = TrainingJob(
            dataset_id=dataset.id, preset_id="custom", base_model=base_model, hyperparameters=config.hyperparameters(),
            gpu_config={"type": gpu, "count": 1}, status="completed", total_epochs=1, estimated_total_cost=0.0,
            tokens_processed=tokens, started_at=end - timedelta(seconds=wall_s), completed_at=end,
        )
        session.add(job)
        session.flush()
        rates = tps if isinstance(tps, list) else [tps] * 5
        for step, rate in enumerate(rates, start=1):  # the first point comes after `startup_s`
            session.add(MetricPoint(job_id=job.id, epoch=step / len(rates), step=step, split="train", training_loss=1.0,
                                    throughput=rate, timestamp=job.started_at + timedelta(seconds=startup_s + step)))
    return job


def test_calibration_uses_measured_throughput_of_completed_jobs(ws, tmp_path, monkeypatch):
    monkeypatch.setattr("brightrun_cli.services.gpus._host_cores", lambda: 2)  # the prior: ~4,100 tokens/s here
    dataset = dataset_with_stats(ws, conversations=100, train_tokens=30_000, validation_tokens=3_000)
    model = model_dir(tmp_path, SMALL)
    kwargs = dict(preset="balanced", overrides=("num_epochs=1", "lora_rank=8"), base_model=model, gpu_type="cpu", gpus=1)
    before = estimate(ws, "support-v1", **kwargs)
    assert before.calibration.runs == 0 and "not calibrated" in before.calibration.message
    _completed_job(ws, dataset, model, tps=5000.0, wall_s=100.0)
    _completed_job(ws, dataset, "other-model-not-readable", tps=5.0)  # not comparable: ignored
    _completed_job(ws, dataset, model, gpu="H100", tps=99999.0)  # other GPU type: ignored
    after = estimate(ws, "support-v1", **kwargs)
    assert after.calibration.runs == 1 and after.calibration.message == "calibrated from 1 run"
    # Same config as the measured job: its 5,000 tokens/s comes back, and its start-up (up to
    # its first metric point) before the compute at that rate.
    assert after.tokens_per_sec == pytest.approx(5000.0, rel=1e-6)
    assert after.startup_s == pytest.approx(21.0)
    # Its finish (from its last metric point, at 20 + 5 s, to its completion at 100 s) too.
    assert after.finish_s == pytest.approx(75.0, abs=1e-3)
    assert after.duration_s == pytest.approx(21.0 + (after.train_flops + after.eval_flops) / after.flops_per_s + 75.0, rel=1e-6)
    assert after.duration_s != pytest.approx(before.duration_s, rel=0.01)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpu", "T4"], "unknown GPU type 'T4'"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--set", "lora_rank=500"], "--set lora_rank=500: lora_rank must be in 4..128"),
        (["--gpus", "9"], "--gpus 9: gpus must be in 1..8"),
        (["--base-model", "/nonexistent/model"], "cannot read the config of base model '/nonexistent/model'"),
        (["--base-model", "org/not-cached"], "cannot read the config of base model 'org/not-cached'"),
    ],
)
def test_estimate_cli_errors_exit_2(cli, ws, tmp_path, args, message):
    dataset_with_stats(ws)
    if "--base-model" not in args:
        args = [*args, "--base-model", model_dir(tmp_path, SMALL)]
    result = cli("estimate", "--dataset", "support-v1", "--gpu", "cpu", *args) if "--gpu" not in args else cli("estimate", "--dataset", "support-v1", *args)
    assert result.exit_code == 2, result.stdout
    assert message in result.stderr and result.stderr.startswith("error: ")


def test_estimate_refuses_a_dataset_that_is_not_ready(cli, ws, tmp_path):
    dataset_with_stats(ws, name="broken", status="error")
    result = cli("estimate", "-d", "broken", "--base-model", model_dir(tmp_path, SMALL))
    assert result.exit_code == 2
    assert "dataset 'broken' is not ready (status: error)" in result.stderr


def test_estimate_cli_human_and_json(cli, ws, tmp_path):
    dataset_with_stats(ws)
    model = model_dir(tmp_path, LLAMA_7B)
    human = cli("estimate", "-d", "support-v1", "-p", "balanced", "--gpu", "A100-80GB", "--gpus", "2", "--base-model", model)
    assert human.exit_code == 0
    for text in ("steps", "per epoch", "$7.00/h", "compute", "fits", "not calibrated"):
        assert text in human.stdout
    data = json.loads(cli("estimate", "-d", "support-v1", "--gpu", "h100", "--base-model", model, "--json").stdout)
    assert data["gpu_config"] == {"type": "H100", "count": 1}
    assert set(data) >= {"estimated_cost", "cost_breakdown", "estimated_duration_hours", "hourly_rate", "training_details",
                         "fits_in_memory", "calibration", "reference_estimate"}


def test_gpus_catalog_and_price_override(cli, brightrun_home):
    data = json.loads(cli("gpus", "--json").stdout)
    by_name = {g["type"]: g for g in data}
    expected = {"A100-80GB": 3.50, "A100-40GB": 2.80, "H100": 4.20, "V100-32GB": 2.10, "cpu": 0.0}
    assert {k: by_name[k]["hourly_rate"] for k in expected} == expected
    assert {"H200", "L40S", "A10G", "L4", "RTX-4090"} <= set(by_name)
    assert all(g["memory_gb"] > 0 and g["bf16_tflops"] > 0 for g in data)
    (brightrun_home / "config.toml").write_text("gpu_prices = {H100 = 2.99}\n")
    data = {g["type"]: g for g in json.loads(cli("gpus", "--json").stdout)}
    assert (data["H100"]["hourly_rate"], data["H100"]["price_source"]) == (2.99, "config.toml")
    (brightrun_home / "config.toml").write_text("gpu_prices = {T4 = 1.0}\n")
    result = cli("gpus")
    assert result.exit_code == 2 and "unknown GPU type 'T4'" in result.stderr


def test_all_linear_targets_every_projection():
    shape = ModelShape.from_config(LLAMA_7B)
    config = TrainingConfig(target_modules="all-linear", lora_rank=8)
    assert config.hyperparameters()["target_modules"] == "all-linear"  # what PEFT takes
    per_layer = 8 * (4 * (4096 + 4096) + 3 * (4096 + 11008))
    assert shape.lora_params(config.target_modules, 8) == 32 * per_layer


def test_tiny_preset_estimates_offline_on_the_builtin_model(cli, ws):
    dataset_with_stats(ws, conversations=500, train_tokens=90_000, validation_tokens=10_000)
    result = cli("estimate", "-d", "support-v1", "-p", "tiny", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["base_model"] == "builtin:tiny" and data["gpu_config"] == {"type": "cpu", "count": 1}
    assert data["estimated_cost"] == 0.0 and data["fits_in_memory"] is True
    assert 0.5e6 < data["training_details"]["model_parameters"] < 2e6
    epochs = json.loads(cli("presets", "show", "tiny", "--json").stdout)["config"]["num_epochs"]
    assert data["training_details"]["total_steps"] == epochs * 63  # ceil(500 / 8) per epoch


def test_max_steps_cuts_the_run_and_its_estimate_to_those_steps(cli, ws):
    dataset_with_stats(ws, conversations=500, train_tokens=90_000, validation_tokens=10_000)
    whole = json.loads(cli("estimate", "-d", "support-v1", "-p", "tiny", "--set", "num_epochs=3", "--json").stdout)
    cut = json.loads(cli("estimate", "-d", "support-v1", "-p", "tiny", "--set", "num_epochs=3", "--set", "max_steps=20",
                         "--json").stdout)
    assert whole["training_details"]["total_steps"] == 3 * 63 and cut["training_details"]["total_steps"] == 20
    # training FLOPs follow the steps (20 of 189); the held-out loss runs twice (before, and after the last step)
    details, full = cut["training_details"], whole["training_details"]
    assert details["train_flops"] == pytest.approx(full["train_flops"] * 20 / 189, rel=1e-6)
    assert details["tokens_processed"] == pytest.approx(full["tokens_processed"] * 20 / 189, abs=1)
    assert cut["estimated_duration_hours"] < whole["estimated_duration_hours"]
    spec = json.loads(cli("train", "-d", "support-v1", "-p", "tiny", "--set", "max_steps=20", "--dry-run", "--json").stdout)["spec"]
    assert spec["max_steps"] == 20  # what the trainer stops at
    text = cli("estimate", "-d", "support-v1", "-p", "tiny", "--set", "num_epochs=3", "--set", "max_steps=20").stdout
    assert "20 (max_steps; 0.317 epochs of 63 per epoch x 3 epochs = 189)" in text
    text = cli("estimate", "-d", "support-v1", "-p", "tiny", "--set", "max_steps=500").stdout
    assert "(under max_steps 500: no effect)" in text
    unset = json.loads(cli("estimate", "-d", "support-v1", "-p", "tiny", "--set", "num_epochs=3", "--set", "max_steps=20",
                           "--set", "max_steps=null", "--json").stdout)
    assert unset["training_details"]["total_steps"] == 189  # null unsets it again
    bad = cli("estimate", "-d", "support-v1", "-p", "tiny", "--set", "max_steps=0")
    assert bad.exit_code == 2 and "max_steps must be" in bad.stderr


def test_a_dataset_counted_with_a_base_model_trains_that_model_unless_told_otherwise(cli, ws, tmp_path):
    row = dataset_with_stats(ws)
    model = model_dir(tmp_path, SMALL)
    with ws.registry.write() as session:
        session.get(Dataset, row.id).base_model = model
    data = json.loads(cli("estimate", "-d", "support-v1", "-p", "balanced", "--json").stdout)
    assert data["base_model"] == model  # the preset names none: the dataset's model, not an error
    tiny = json.loads(cli("estimate", "-d", "support-v1", "-p", "tiny", "--json").stdout)
    assert tiny["base_model"] == "builtin:tiny"  # a preset that names one wins
    flag = json.loads(cli("estimate", "-d", "support-v1", "-p", "tiny", "--base-model", model, "--json").stdout)
    assert flag["base_model"] == model


def test_a_base_model_directory_given_relative_is_recorded_absolute(cli, ws, tmp_path, monkeypatch):
    """The trainer runs in its run dir and later commands anywhere: './model' typed in one
    directory must still name that model. Over SSH a path names the remote machine's, so
    there it has to be absolute."""
    from brightrun_cli.registry.tables import Host

    dataset_with_stats(ws)
    model = model_dir(tmp_path, SMALL)
    monkeypatch.chdir(tmp_path)
    plan = json.loads(cli("train", "-d", "support-v1", "-p", "balanced", "--base-model", "./model", "--dry-run", "--json").stdout)
    assert plan["spec"]["base_model"] == model
    with ws.registry.write() as session:
        session.add(Host(name="gpu2", kind="ssh", ssh_host="example.invalid", gpus=1, gpu_type="A100-80GB"))
    args = ("train", "-d", "support-v1", "-p", "balanced", "--host", "gpu2", "--dry-run")
    refused = cli(*args, "--base-model", "./model")
    assert refused.exit_code == 2 and "not absolute, and host 'gpu2' is reached over SSH" in refused.stderr
    read = []

    def remote_config(ws, host, directory):  # runners.ssh.remote_model_config, over a real sshd in test_ssh_cli
        read.append((host.name, directory))
        return SMALL

    monkeypatch.setattr("brightrun_cli.runners.ssh.remote_model_config", remote_config)
    remote = json.loads(cli(*args, "--base-model", "/models/llama", "--json").stdout)
    assert remote["spec"]["base_model"] == "/models/llama"  # that host's directory, sized from its config.json
    assert read == [("gpu2", "/models/llama")]
    assert remote["estimate"]["training_details"]["model_parameters"] == plan["estimate"]["training_details"]["model_parameters"]


# ---------------------------------------------------------------- memory advice (what would make it fit)


def _fits_after(ws, model, gpu, gpus, option: str) -> bool:
    """Re-estimate with the `--set` changes an advice option names: does it fit then?"""
    sets = tuple(word for word in option.split() if "=" in word and not word.startswith("("))
    return estimate(ws, "support-v1", preset="balanced", base_model=model, gpu_type=gpu, gpus=gpus, overrides=sets).fits_in_memory


def test_memory_advice_names_every_change_that_makes_it_fit(ws, tmp_path):
    dataset_with_stats(ws)
    model = model_dir(tmp_path, LLAMA_7B)
    est = estimate(ws, "support-v1", preset="balanced", base_model=model, gpu_type="A10G", gpus=1)
    assert not est.fits_in_memory
    advice = est.memory_advice
    assert advice.startswith("needs ") and "A10G has 24 GB; it fits with " in advice
    options = advice.split("; it fits with ", 1)[1].split("; or ")
    kinds = ["--set batch_size=", "--set gradient_checkpointing=true", "--set max_seq_length=", "FSDP over ", "a GPU with more memory: ",
             "--set quantization=4bit"]
    assert [next(k for k in kinds if o.startswith(k)) for o in options] == kinds, options
    for option in options[:3]:  # each change alone fits, as the estimate itself computes it
        assert _fits_after(ws, model, "A10G", 1, option), option
    assert all(o.endswith(" GB)") and " (needs " in o for o in options)  # each with its figure
    assert "keeps " in options[2] and "% of the training tokens" in options[2]
    from brightrun_cli.services.estimates import Placement, estimate_run

    fsdp_devices = int(options[3].split()[2])
    sharded = estimate_run(ws, est.dataset, est.resolved, Placement(get_gpu(ws, "A10G"), fsdp_devices), fsdp=True)
    assert sharded.fits_in_memory
    warning = est.to_json()["warnings"][0]  # scripts see it too, with its figures
    assert warning["code"] == "does_not_fit" and warning["message"] == f"does not fit in memory: {advice}"
    assert [o["kind"] for o in warning["options"]] == ["micro_batch", "gradient_checkpointing", "max_seq_length", "fsdp",
                                                      "larger_gpu", "quantization"]
    assert warning["capacity_gb"] == 24 and warning["needs_gb"] > 24
    for option in warning["options"]:  # each with what a device then holds, under what it has
        assert 0 < option["needs_gb"] <= max(24, next((g.memory_gb for g in list_gpus(ws) if g.name == option["gpu"]), 24))
    assert warning["options"][0]["settings"] == {"batch_size": int(options[0].split()[1].split("=")[1]),
                                                 "gradient_accumulation_steps": int(options[0].split()[3].split("=")[1].rstrip(","))}
    assert warning["options"][3]["devices"] == fsdp_devices and warning["options"][-1]["settings"] == {"quantization": "4bit"}


def test_a_cpu_host_is_told_which_gpu_holds_a_7b_model(ws, tmp_path, monkeypatch):
    """On a CPU host a 7B run does not fit in RAM; the advice names the GPUs that hold it
    (not 'nothing in the catalog fits')."""
    monkeypatch.setattr("brightrun_cli.services.gpus._host_memory_gb", lambda: 16.0)
    dataset_with_stats(ws)
    model = model_dir(tmp_path, LLAMA_7B)
    est = estimate(ws, "support-v1", preset="balanced", base_model=model, gpu_type="cpu", gpus=1)
    assert not est.fits_in_memory and "nothing in the catalog" not in est.memory_advice
    named = [g.name for g in list_gpus(ws) if f"a GPU: {g.name} (" in est.memory_advice]
    assert named, est.memory_advice
    assert all(estimate(ws, "support-v1", preset="balanced", base_model=model, gpu_type=name, gpus=1,
                        overrides=("gradient_checkpointing=true",)).fits_in_memory for name in named)


def test_70b_on_two_h100_is_told_how_many_with_fsdp(ws, tmp_path):
    dataset_with_stats(ws)
    est = estimate(ws, "support-v1", preset="balanced", base_model=model_dir(tmp_path, LLAMA_70B), gpu_type="H100", gpus=2)
    assert not est.fits_in_memory
    assert "FSDP over 4 x H100 with --set gradient_checkpointing=true (--gpus 4 and an FSDP --accelerate-config)" in est.memory_advice
    assert est.memory_advice != "H200" and "does not fit in memory" in est.warnings[0].message


# ---------------------------------------------------------------- CPU figures (measured, see flops.py / estimates.py)

# The example support set as each model's tokenizer counts it (`dataset add`): 544 training
# conversations, 56 held out.
SUPPORT_TINY = dict(conversations=544, train_tokens=99_588, validation_tokens=10_200,
                    tokens_per_conversation={"min": 120, "p50": 176, "p90": 240, "p99": 300, "max": 330})
SUPPORT_SMOLLM2 = dict(conversations=544, train_tokens=31_398, validation_tokens=3_207,
                       tokens_per_conversation={"min": 46, "p50": 54, "p90": 75, "p99": 89, "max": 90})


def test_cpu_throughput_prior_scales_with_the_model(ws, tmp_path, monkeypatch):
    """Measured on a 2-core AVX2 host, undisturbed steps of the real trainer: builtin:tiny
    with the tiny preset ~6,800 tokens/s; SmolLM2-135M with balanced (batch 4) ~200
    tokens/s. The old fixed 10% utilisation said ~3,000 and ~34."""
    from brightrun_cli.services.estimates import assumed_utilization

    monkeypatch.setattr("brightrun_cli.services.gpus._host_cores", lambda: 2)  # the host these were measured on
    dataset_with_stats(ws, name="tiny-set", **SUPPORT_TINY)
    tiny = estimate(ws, "tiny-set", preset="tiny", gpu_type="cpu", gpus=1)
    assert tiny.tokens_per_sec == pytest.approx(6_800, rel=0.3)
    dataset_with_stats(ws, name="smol-set", **SUPPORT_SMOLLM2)
    smol = estimate(ws, "smol-set", preset="balanced", base_model=model_dir(tmp_path, SMOLLM2_135M), gpu_type="cpu", gpus=1)
    assert smol.tokens_per_sec == pytest.approx(200, rel=0.3)
    assert assumed_utilization(get_gpu(ws, "cpu"), tiny.shape) < assumed_utilization(get_gpu(ws, "cpu"), smol.shape)
    assert estimate(ws, "smol-set", preset="balanced", base_model=model_dir(tmp_path, SMOLLM2_135M, "m2"),
                    gpu_type="H100", gpus=1).calibration.runs == 0  # GPUs keep their catalog utilisation


def test_cpu_peak_is_this_machines_cores_and_its_memory_in_gib(ws, monkeypatch):
    """The CPU prior was a fixed two-core figure: a 16-core machine was estimated 8x too slow.
    Its RAM is compared in GiB like every other memory figure (it was read in 10^9 bytes)."""
    monkeypatch.setattr("brightrun_cli.services.gpus._host_cores", lambda: 2)
    two = get_gpu(ws, "cpu").bf16_tflops
    monkeypatch.setattr("brightrun_cli.services.gpus._host_cores", lambda: 16)
    assert two == pytest.approx(0.192) and get_gpu(ws, "cpu").bf16_tflops == pytest.approx(8 * two)
    import os

    assert get_gpu(ws, "cpu").memory_gb == pytest.approx(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, abs=0.05)


def test_cpu_memory_counts_the_trainer_process(ws, tmp_path):
    """Peak RSS measured of the real trainer on the CPU: builtin:tiny 0.57 GiB, SmolLM2-135M
    1.59 GiB (tensors alone: 0.05 and 0.80)."""
    dataset_with_stats(ws, name="tiny-set", **SUPPORT_TINY)
    tiny = estimate(ws, "tiny-set", preset="tiny", gpu_type="cpu", gpus=1)
    assert tiny.memory.total / GIB == pytest.approx(0.57, rel=0.1)
    dataset_with_stats(ws, name="smol-set", **SUPPORT_SMOLLM2)
    smol = estimate(ws, "smol-set", preset="balanced", base_model=model_dir(tmp_path, SMOLLM2_135M), gpu_type="cpu", gpus=1)
    assert smol.memory.total / GIB == pytest.approx(1.59, rel=0.1)


def test_calibration_takes_steady_steps_and_leaves_out_a_slowed_run(ws, tmp_path, monkeypatch):
    """A run whose machine got busy two thirds of the way (steps 20x slower) calibrates from
    its undisturbed steps; a run slowed all through is left out beside a normal one."""
    monkeypatch.setattr("brightrun_cli.services.gpus._host_cores", lambda: 2)  # the prior: ~4,100 tokens/s here
    dataset = dataset_with_stats(ws, conversations=100, train_tokens=30_000, validation_tokens=3_000)
    model = model_dir(tmp_path, SMALL)
    kwargs = dict(preset="balanced", overrides=("num_epochs=1", "lora_rank=8"), base_model=model, gpu_type="cpu", gpus=1)
    _completed_job(ws, dataset, model, tps=[5000.0, 4800.0, 5200.0] * 3 + [250.0] * 20, wall_s=400.0)
    after = estimate(ws, "support-v1", **kwargs)
    assert after.calibration.message == "calibrated from 1 run"
    assert after.tokens_per_sec == pytest.approx(5000.0, rel=1e-6)
    assert after.startup_s == pytest.approx(21.0)  # its first point, not the wall time the slow steps took
    _completed_job(ws, dataset, model, tps=250.0, wall_s=1200.0)
    both = estimate(ws, "support-v1", **kwargs)
    assert both.calibration.message == "calibrated from 1 run; 1 slowed run left out"
    assert both.tokens_per_sec == pytest.approx(5000.0, rel=1e-6)


def test_a_single_run_starved_all_through_does_not_calibrate(ws, tmp_path, monkeypatch):
    """The issue's case: the only measured run was made while the machine was busy (all its
    steps ~40x slow alike); the next estimate said 40x too long, 'calibrated from 1 run'."""
    monkeypatch.setattr("brightrun_cli.services.gpus._host_cores", lambda: 2)
    dataset = dataset_with_stats(ws, conversations=100, train_tokens=30_000, validation_tokens=3_000)
    model = model_dir(tmp_path, SMALL)
    kwargs = dict(preset="balanced", overrides=("num_epochs=1", "lora_rank=8"), base_model=model, gpu_type="cpu", gpus=1)
    prior = estimate(ws, "support-v1", **kwargs)
    _completed_job(ws, dataset, model, tps=prior.tokens_per_sec / 40, wall_s=4000.0)
    after = estimate(ws, "support-v1", **kwargs)
    assert after.calibration.runs == 0 and after.calibration.slowed == 1
    assert after.calibration.message.startswith("not calibrated: the 1 comparable run on this machine ran over 4x slower")
    assert after.duration_s == pytest.approx(prior.duration_s)
    _completed_job(ws, dataset, model, tps=prior.tokens_per_sec / 1.5)  # a quiet run that is slower than assumed still calibrates
    assert estimate(ws, "support-v1", **kwargs).tokens_per_sec == pytest.approx(prior.tokens_per_sec / 1.5, rel=1e-6)


# ---------------------------------------------------------------- warm-up


def test_balanced_on_a_small_dataset_warms_up_for_a_tenth_of_the_run(cli, ws, tmp_path):
    """136 steps: warmup_steps 100 would keep 74% of the run below the peak learning rate."""
    model = model_dir(tmp_path, SMALL)
    dataset_with_stats(ws, conversations=544, train_tokens=99_588, validation_tokens=10_200, counted_with=model,
                       tokens_per_conversation={"min": 40, "p50": 170, "p90": 300, "p99": 500, "max": 900})
    est = estimate(ws, "support-v1", preset="balanced", base_model=model, gpu_type="cpu", gpus=1, overrides=("num_epochs=1",))
    assert (est.total_steps, est.config.warmup_steps, est.warmup_steps) == (136, 100, 13)
    assert est.to_json()["training_details"]["warmup_steps"] == 13 and not est.warnings
    human = cli("estimate", "-d", "support-v1", "-p", "balanced", "--base-model", model, "--gpu", "cpu", "--set", "num_epochs=1")
    assert "136 (warm-up 13: warmup_steps 100 cut to 10% of the run)" in " ".join(human.stdout.split())
    long = estimate(ws, "support-v1", preset="balanced", base_model=model, gpu_type="cpu", gpus=1,
                    overrides=("num_epochs=1", "max_warmup_fraction=0.6"))
    assert long.warmup_steps == 81
    assert [w.to_json() for w in long.warnings] == [{
        "code": "warmup_dominates", "warmup_steps": 81, "total_steps": 136, "share": 0.596,
        "message": "warm-up takes 81 of the 136 steps: the learning rate is below its peak for 60% of the run; "
                   "lower --set warmup_steps or max_warmup_fraction"}]


def test_conversations_longer_than_max_seq_length_are_a_warning_with_their_share_and_a_length_that_fits(ws, tmp_path):
    """The trainer cuts each conversation at max_seq_length: what comes after (every answer,
    behind a long tool list) is never learned. The share is read from the stored lengths."""
    model = model_dir(tmp_path, SMALL)
    dataset_with_stats(ws, counted_with=model, tokens_per_conversation={"min": 100, "p50": 800, "p90": 1500, "p99": 2500, "max": 4000})

    def truncated(limit: int) -> list[dict]:
        est = estimate(ws, "support-v1", preset="balanced", base_model=model, gpu_type="cpu", gpus=1,
                       overrides=(f"max_seq_length={limit}",))
        return [w.to_json() for w in est.warnings if w.code == "sequences_truncated"]

    assert truncated(4096) == []
    [half] = truncated(800)
    assert (half["share"], half["longest"], half["suggested_max_seq_length"]) == (0.5, 4000, 4096)
    assert half["message"].startswith("about 50% of the conversations of dataset 'support-v1' are longer than max_seq_length 800 "
                                      "(median 800 tokens, longest 4,000)")
    assert truncated(64)[0]["message"].startswith("all of the conversations")
    [tail] = truncated(3000)  # a tail under 1%: still named, as a small share
    assert tail["share"] == 0.005 and tail["message"].startswith("under 1% of the conversations")


def test_an_estimate_from_token_counts_not_made_with_its_model_says_so_and_how_to_count_them(cli, ws, tmp_path):
    """Durations, costs and memory follow the dataset's token counts. Counted without a
    tokenizer (chars / 4) they are several-fold off for builtin:tiny's bytes; the estimate
    says so and names the command that recounts them, after which it is silent."""
    from jobs_helpers import conversations

    source = conversations(tmp_path / "chat.jsonl", 40)
    assert cli("dataset", "add", str(source), "--name", "chat one").exit_code == 0  # no base model: approximated
    before = json.loads(cli("estimate", "-d", "chat one", "-p", "tiny", "--json").stdout)
    command = "brightrun dataset validate 'chat one' --base-model builtin:tiny"
    assert [(w["code"], w["token_count_method"], w["command"]) for w in before["warnings"]] == [
        ("token_counts_not_this_models", APPROX_METHOD, command)]
    human = cli("estimate", "-d", "chat one", "-p", "tiny")
    assert "approximated (from characters and message counts" in " ".join(human.stdout.split()) and command in " ".join(human.stdout.split())

    assert cli("dataset", "validate", "chat one", "--base-model", "builtin:tiny").exit_code == 0
    after = json.loads(cli("estimate", "-d", "chat one", "-p", "tiny", "--json").stdout)
    assert after["warnings"] == []
    # builtin:tiny reads bytes: its real counts are far above a BPE-like approximation.
    assert after["training_details"]["train_tokens_per_epoch"] > 2 * before["training_details"]["train_tokens_per_epoch"]

    # Counted with one model, estimated for another: the same warning, naming the model that counted.
    model = model_dir(tmp_path, SMALL)
    other = json.loads(cli("estimate", "-d", "chat one", "-p", "balanced", "--base-model", model, "--gpu", "cpu", "--json").stdout)
    codes = {w["code"]: w for w in other["warnings"]}
    assert codes["token_counts_not_this_models"]["counted_with"] == "builtin:tiny"
    assert "counted with another model's tokenizer (builtin:tiny)" in codes["token_counts_not_this_models"]["message"]


def test_a_dataset_learned_from_more_examples_than_conversations_is_planned_by_its_examples(ws, tmp_path):
    """Reasoning on earlier turns, with a template that writes it only into the last turn:
    `dataset add` records train_examples (each such turn a copy of its conversation)."""
    row = dataset_with_stats(ws)
    with ws.registry.write() as session:
        row = session.get(Dataset, row.id)
        row.stats = {**row.stats, "train_examples": 2000}
        session.add(row)
    est = estimate(ws, "support-v1", preset="fast", base_model=model_dir(tmp_path, LLAMA_7B), gpu_type="A100-80GB", gpus=1)
    assert est.steps_per_epoch == trainer_steps_per_epoch(2000, est.config, 1)


def test_a_small_model_on_a_big_gpu_is_priced_at_its_step_floor_and_the_answer_eval_is_counted(ws, tmp_path):
    """FLOPs alone put tens of thousands of a 135M model's steps into seconds on an H100
    (hundreds of steps a second, which no eager trainer launches); and every job ends with
    an answer eval of its held-out prompts that the duration and the cost must include."""
    from brightrun_cli.services.estimates import FINISH_FIXED_S, GPU_MICRO_STEP_S_PER_LAYER

    dataset_with_stats(ws, conversations=45_000, train_tokens=1_350_000, validation_tokens=150_000,
                       tokens_per_conversation={"min": 20, "p50": 30, "p90": 40, "p99": 45, "max": 50})
    model = model_dir(tmp_path, SMOLLM2_135M)
    est = estimate(ws, "support-v1", preset="balanced", overrides=("batch_size=2",), base_model=model, gpu_type="H100", gpus=1)
    floor = est.total_steps * SMOLLM2_135M["num_hidden_layers"] * GPU_MICRO_STEP_S_PER_LAYER
    assert est.train_s >= floor > est.train_flops / est.flops_per_s  # the floor, not the FLOPs, bounds it
    assert est.duration_s >= est.startup_s + est.train_s + est.finish_s
    assert est.finish_s > FINISH_FIXED_S  # held-out prompts to answer, base and tuned
    details = est.to_json()["training_details"]
    assert details["training_seconds"] == round(est.train_s, 1) and details["finish_seconds"] == round(est.finish_s, 1)
    # Without a held-out split there is no answer eval: only the save.
    dataset_with_stats(ws, name="no-held-out", conversations=1000, validation_tokens=0)
    with ws.registry.write() as session:
        row = session.exec(select(Dataset).where(Dataset.name == "no-held-out")).one()
        row.stats = {**row.stats, "validation_conversations": 0}
        row.total_validation_pairs = 0
    bare = estimate(ws, "no-held-out", preset="balanced", base_model=model, gpu_type="H100", gpus=1)
    assert bare.finish_s == FINISH_FIXED_S


def test_an_estimate_says_what_train_on_this_host_would_refuse(cli, ws, tmp_path):
    """An estimate prices hardware one does not have (with --gpu); on the default host it
    warns where 'train' would refuse: more GPUs than the host has, 4-bit on a CPU."""
    dataset_with_stats(ws)
    model = model_dir(tmp_path, SMALL)
    codes = lambda *args: [w["code"] for w in json.loads(  # noqa: E731
        cli("estimate", "-d", "support-v1", "--base-model", model, "--json", *args).stdout)["warnings"]]
    assert "more_gpus_than_host" in codes("--gpus", "4")
    assert "more_gpus_than_host" not in codes("--gpu", "H100", "--gpus", "4")  # priced hardware, not this host
    assert "quantization_needs_cuda" in codes("--set", "quantization=4bit")
    assert "quantization_needs_cuda" not in codes("--set", "quantization=4bit", "--gpu", "H100")
    human = cli("estimate", "-d", "support-v1", "--base-model", model, "--gpus", "4")
    assert human.exit_code == 0 and "'train' there would refuse 4" in " ".join(human.stderr.split() + human.stdout.split())
