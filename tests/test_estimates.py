"""Estimates: the FLOPs and memory models against hand-computed cases, calibration from
completed jobs, the reference formula beside it, and the errors that exit 2."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from brightrun_cli.presets.schema import TrainingConfig
from brightrun_cli.registry.tables import Dataset, MetricPoint, TrainingJob
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.services.estimates import estimate, trainer_steps_per_epoch
from brightrun_cli.services.flops import GIB, ModelShape, memory_need, train_flops_per_token
from brightrun_cli.services.gpus import get_gpu
from brightrun_cli.workspace import Workspace

LLAMA_7B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False,
    "hidden_act": "silu",
}
SMALL = {**LLAMA_7B, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 4, "vocab_size": 1000}


@pytest.fixture
def ws() -> Workspace:
    return Workspace.open()


def _model_dir(tmp_path, config, name="model"):
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    (path / "tokenizer_config.json").write_text("{}")  # train refuses a local model without a tokenizer
    return str(path)


def _dataset(ws, name="support-v1", status="ready", conversations=1000, train_tokens=900_000, validation_tokens=100_000):
    with ws.registry.write() as session:
        row = Dataset(
            name=name, status=status, storage_path=f"datasets/{name}/data.jsonl", file_name="d.jsonl", file_size=1,
            total_conversations=conversations, total_training_pairs=conversations, total_validation_pairs=100,
            total_tokens=train_tokens + validation_tokens, training_ready=status == "ready",
            stats={"train_conversations": conversations, "validation_conversations": 100, "train_tokens": train_tokens,
                   "validation_tokens": validation_tokens,
                   "tokens_per_conversation": {"min": 100, "p50": 800, "p90": 1500, "p99": 2500, "max": 4000,
                                               "mean": train_tokens / conversations}},
        )
        session.add(row)
    return row


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


def test_memory_fit_7b_lora_batch8_2k_fits_80gb_not_16gb(ws):
    shape = ModelShape.from_config(LLAMA_7B)
    need = memory_need(shape, TrainingConfig(batch_size=8, max_seq_length=2048), 2048, weight_bytes=2, on_gpu=True)
    assert need.weights == pytest.approx(6_738_149_376 * 2)
    assert need.total <= 80 * GIB
    assert need.total > 16 * GIB
    assert need.total > 40 * GIB  # and not an A100-40GB either, without checkpointing


def test_estimate_says_what_fits_when_it_does_not(ws, tmp_path):
    _dataset(ws, train_tokens=2_000_000)
    model = _model_dir(tmp_path, LLAMA_7B)
    est = estimate(ws, "support-v1", preset="balanced", overrides=("batch_size=8", "packing=false"), base_model=model,
                   gpu_type="A10G", gpus=1)
    assert not est.fits_in_memory
    assert "--set batch_size=" in est.memory_advice and "A10G has 24 GB" in est.memory_advice
    fits = estimate(ws, "support-v1", preset="balanced", base_model=model, gpu_type="A100-80GB", gpus=1)
    assert fits.fits_in_memory and fits.memory_advice is None


def test_estimate_json_has_reference_names_and_reference_formula(ws, tmp_path):
    _dataset(ws)
    est = estimate(ws, "support-v1", preset="fast", base_model=_model_dir(tmp_path, LLAMA_7B), gpu_type="A100-80GB", gpus=2)
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
    assert estimate(ws, "support-v1", base_model=_model_dir(tmp_path, LLAMA_7B, "m2"), gpu_type="L4", gpus=1).reference is None


def test_trainer_step_count_matches_its_epoch_plan():
    from brightrun_cli.trainer.loop import epoch_plan

    for n, batch, accum, world in [(10, 3, 1, 1), (100, 8, 2, 2), (7, 2, 1, 3), (64, 4, 4, 1), (33, 4, 1, 8)]:
        config = TrainingConfig(batch_size=batch, gradient_accumulation_steps=accum)
        expected = len(epoch_plan(n, batch, accum, world, 42, 0)) or 1
        assert trainer_steps_per_epoch(n, config, world) == expected, (n, batch, accum, world)


def _completed_job(ws, dataset, base_model, *, gpu="cpu", tokens=30_000, wall_s=100.0, tps=500.0):
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
        for step in range(1, 6):
            session.add(MetricPoint(job_id=job.id, epoch=step / 5, step=step, split="train", training_loss=1.0, throughput=tps))
    return job


def test_calibration_uses_measured_throughput_of_completed_jobs(ws, tmp_path):
    dataset = _dataset(ws, conversations=100, train_tokens=30_000, validation_tokens=3_000)
    model = _model_dir(tmp_path, SMALL)
    kwargs = dict(preset="balanced", overrides=("num_epochs=1", "lora_rank=8"), base_model=model, gpu_type="cpu", gpus=1)
    before = estimate(ws, "support-v1", **kwargs)
    assert before.calibration.runs == 0 and "not calibrated" in before.calibration.message
    _completed_job(ws, dataset, model, tps=500.0, wall_s=100.0)
    _completed_job(ws, dataset, "other-model-not-readable", tps=5.0)  # not comparable: ignored
    _completed_job(ws, dataset, model, gpu="H100", tps=99999.0)  # other GPU type: ignored
    after = estimate(ws, "support-v1", **kwargs)
    assert after.calibration.runs == 1 and after.calibration.message == "calibrated from 1 run"
    # Same config as the measured job: its 500 tokens/s comes back, and its wall time.
    assert after.tokens_per_sec == pytest.approx(500.0, rel=1e-6)
    assert after.duration_s == pytest.approx(100.0, rel=1e-6)
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
    _dataset(ws)
    if "--base-model" not in args:
        args = [*args, "--base-model", _model_dir(tmp_path, SMALL)]
    result = cli("estimate", "--dataset", "support-v1", "--gpu", "cpu", *args) if "--gpu" not in args else cli("estimate", "--dataset", "support-v1", *args)
    assert result.exit_code == 2, result.stdout
    assert message in result.stderr and result.stderr.startswith("error: ")


def test_estimate_refuses_a_dataset_that_is_not_ready(cli, ws, tmp_path):
    _dataset(ws, name="broken", status="error")
    result = cli("estimate", "-d", "broken", "--base-model", _model_dir(tmp_path, SMALL))
    assert result.exit_code == 2
    assert "dataset 'broken' is not ready (status: error)" in result.stderr


def test_estimate_cli_human_and_json(cli, ws, tmp_path):
    _dataset(ws)
    model = _model_dir(tmp_path, LLAMA_7B)
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
    _dataset(ws, conversations=500, train_tokens=90_000, validation_tokens=10_000)
    result = cli("estimate", "-d", "support-v1", "-p", "tiny", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["base_model"] == "builtin:tiny" and data["gpu_config"] == {"type": "cpu", "count": 1}
    assert data["estimated_cost"] == 0.0 and data["fits_in_memory"] is True
    assert 0.5e6 < data["training_details"]["model_parameters"] < 2e6
    epochs = json.loads(cli("presets", "show", "tiny", "--json").stdout)["config"]["num_epochs"]
    assert data["training_details"]["total_steps"] == epochs * 63  # ceil(500 / 8) per epoch


def test_a_dataset_counted_with_a_base_model_trains_that_model_unless_told_otherwise(cli, ws, tmp_path):
    row = _dataset(ws)
    model = _model_dir(tmp_path, SMALL)
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

    _dataset(ws)
    model = _model_dir(tmp_path, SMALL)
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
