"""What `train` checks before it queues a job (a job that cannot start is refused, with
--force to queue it anyway), how base models named by hub ids are read without waiting on
a network that is not there, and what a failed or cancelled job suggests next."""

from __future__ import annotations

import json
import socket
import struct
import time

import pytest

from brightrun_cli.workspace import Workspace
from jobs_helpers import dataset_row, job_row
from model_helpers import LLAMA_70B, SMALL, dataset_with_stats, model_dir, write_safetensors


@pytest.fixture
def ws() -> Workspace:
    return Workspace.open()


def _train(cli, model, *extra):
    return cli("train", "-d", "support-v1", "-p", "balanced", "--base-model", model, "--dry-run", *extra)


def test_train_refuses_a_model_directory_without_weights_or_tokenizer(cli, ws, tmp_path):
    dataset_with_stats(ws)
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    (only_config / "config.json").write_text(json.dumps(SMALL))
    refused = _train(cli, str(only_config))
    assert refused.exit_code == 2
    assert refused.stderr.startswith(f"error: base model '{only_config}' cannot be trained from: no weights")
    assert "no tokenizer (tokenizer.json" in refused.stderr and "--force" in refused.stderr
    refused = cli("train", "-d", "support-v1", "-p", "balanced", "--base-model", str(only_config), "--detach")
    assert refused.exit_code == 2 and json.loads(cli("jobs", "list", "--json").stdout) == []  # nothing queued
    forced = _train(cli, str(only_config), "--force")
    assert forced.exit_code == 0, forced.stderr
    assert _train(cli, model_dir(tmp_path, SMALL)).exit_code == 0  # a complete directory passes


def test_the_weights_check_reads_safetensors_headers(tmp_path):
    from brightrun_cli.services.base_model import check_directory

    model = tmp_path / "m"
    model_dir(tmp_path, SMALL, "m")
    assert not check_directory(model)
    weights = model / "model.safetensors"
    write_safetensors(weights, data_bytes=64)
    weights.write_bytes(weights.read_bytes()[:-10])  # a download cut short
    assert "model.safetensors is cut off" in check_directory(model)[0]
    weights.write_bytes(struct.pack("<Q", 10) + b"not json!!")
    assert check_directory(model) == ["model.safetensors is not a safetensors file (its header is not JSON)"]
    weights.unlink()
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    write_safetensors(model / "model-00001-of-00002.safetensors")
    assert check_directory(model) == [
        "model.safetensors.index.json names 2 weight files, 1 missing (model-00002-of-00002.safetensors)"]
    write_safetensors(model / "model-00002-of-00002.safetensors")
    assert not check_directory(model)


def test_train_refuses_a_run_that_does_not_fit_in_memory_unless_forced(cli, ws, tmp_path):
    """70B on this host (its CPU's RAM, or any single GPU of the catalog) does not fit: the
    estimate's verdict is applied, with what would make it fit, and --force overrides it."""
    dataset_with_stats(ws)
    model = model_dir(tmp_path, LLAMA_70B)
    refused = _train(cli, model)
    assert refused.exit_code == 2
    assert refused.stderr.startswith("error: the run does not fit in memory: needs ")
    assert "it fits with" in refused.stderr and "or pass --force to queue it anyway" in refused.stderr
    forced = _train(cli, model, "--force", "--json")
    assert forced.exit_code == 0, forced.stderr
    warnings = json.loads(forced.stdout)["estimate"]["warnings"]
    fit = next(w for w in warnings if w["code"] == "does_not_fit")
    assert fit["message"].startswith("does not fit in memory: ") and fit["options"] and fit["needs_gb"] > fit["capacity_gb"]


def test_a_hub_id_offline_is_one_line_at_once(cli, ws, tmp_path):
    """HF_HUB_OFFLINE (conftest sets it) and an id not in the cache: no retries, one line
    naming both ways out, from estimate, train and dataset token counting alike."""
    dataset_with_stats(ws)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"conversation_id": "c", "turns": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n")
    for args in (("estimate", "-d", "support-v1", "--base-model", "org/not-cached"),
                 ("train", "-d", "support-v1", "--base-model", "org/not-cached", "--dry-run"),
                 ("dataset", "add", str(data), "--name", "d2", "--base-model", "org/not-cached")):
        started = time.monotonic()
        result = cli(*args)
        assert time.monotonic() - started < 5, args
        assert result.exit_code == 2, (args, result.stdout)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "org/not-cached" in lines[0] and "HF_HUB_OFFLINE is set" in lines[0], (args, lines)
        assert "pass a local model directory" in lines[0] and "Retrying" not in result.stderr


def test_an_unreachable_hub_is_detected_within_seconds(cli, ws, monkeypatch):
    """Not offline, but nothing answers at the hub's address (a closed local port here, no
    network elsewhere): one short probe, not huggingface_hub's 25 s of retries."""
    from brightrun_cli.services.base_model import hub_unreachable

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again once the block ends: connections are refused
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert "127.0.0.1" in (hub_unreachable() or "")
    dataset_with_stats(ws)
    started = time.monotonic()
    result = cli("estimate", "-d", "support-v1", "--base-model", "org/not-cached")
    assert time.monotonic() - started < 5
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "the hub cannot be reached (127.0.0.1" in result.stderr and "Retrying" not in result.stderr


def test_jobs_show_suggests_retry_unless_there_is_a_checkpoint(cli, ws, brightrun_home):
    dataset = dataset_row(ws)
    job = job_row(ws, dataset, status="failed", error_message="the trainer exited with code 1")
    shown = cli("jobs", "show", job.id).stdout
    next_line = " ".join(shown[shown.index("next"):].split())
    assert f"brightrun jobs retry {job.id}" in next_line and "resume" not in next_line
    (brightrun_home / "runs" / job.id / "checkpoints" / "step-3").mkdir(parents=True)
    shown = cli("jobs", "show", job.id).stdout
    assert f"brightrun jobs resume {job.id}" in " ".join(shown[shown.index("next"):].split())


def test_a_reaped_job_that_never_launched_its_trainer_suggests_retry(ws):
    from brightrun_cli.lifecycle import FAILED
    from brightrun_cli.registry import notifications as notification_rows
    from brightrun_cli.services import queue
    from brightrun_cli.services.jobs import get_job

    dataset = dataset_row(ws)
    job = job_row(ws, dataset, status="initializing", supervisor_marker="m1")
    assert queue.end_without_supervisor(ws, get_job(ws, job.id), FAILED, "supervisor lost (it never started)")
    with ws.registry.reading() as conn:
        failed = [n for n in notification_rows.latest(conn, limit=10) if n.type == "job_failed"]
    assert failed[0].action_command == f"brightrun jobs retry {job.id}"


def test_train_says_short_durations_in_seconds_or_minutes(cli, ws, tmp_path):
    """Not "0.0058 h": the train line reads like the estimate's."""
    dataset_with_stats(ws, conversations=500, train_tokens=90_000, validation_tokens=10_000)
    out = cli("train", "-d", "support-v1", "-p", "tiny", "--dry-run").stdout
    line = next(line for line in out.splitlines() if line.startswith("estimate: "))
    duration = line.split("), ", 1)[1].split(", ", 1)[0]
    assert duration.endswith((" s", " min")) and " h" not in line, line


def test_save_steps_reaches_the_trainer_spec_and_is_checked(cli, ws):
    dataset_with_stats(ws, conversations=500, train_tokens=90_000, validation_tokens=10_000)
    plan = cli("train", "-d", "support-v1", "-p", "tiny", "--set", "save_steps=50", "--dry-run", "--json")
    assert plan.exit_code == 0, plan.stderr
    assert json.loads(plan.stdout)["spec"]["save_steps"] == 50
    default = json.loads(cli("train", "-d", "support-v1", "-p", "tiny", "--dry-run", "--json").stdout)
    assert default["spec"]["save_steps"] == 0
    bad = cli("train", "-d", "support-v1", "-p", "tiny", "--set", "save_steps=-1", "--dry-run")
    assert bad.exit_code == 2 and "save_steps must be in 0..1000000" in bad.stderr


def test_a_target_module_the_base_model_lacks_is_refused_before_pricing_or_queueing(cli, ws):
    """A typo would be priced as a tiny adapter, queued, and fail when the trainer starts."""
    dataset_with_stats(ws, conversations=500, train_tokens=90_000, validation_tokens=10_000)
    for command in (("estimate",), ("train", "--dry-run")):
        bad = cli(*command, "-d", "support-v1", "-p", "tiny", "--set", "target_modules=q_porj,v_proj")
        assert bad.exit_code == 2 and bad.stderr.count("\n") == 1, bad.stderr
        assert "target_modules q_porj: no module of base model 'builtin:tiny'" in bad.stderr and "did you mean q_proj?" in bad.stderr
    # peft's own matching: a dotted suffix of a module path names it too.
    assert cli("estimate", "-d", "support-v1", "-p", "tiny", "--set", "target_modules=self_attn.q_proj,mlp.down_proj").exit_code == 0
    assert not json.loads(cli("train", "-d", "support-v1", "-p", "tiny", "--dry-run", "--json").stdout).get("error")


def test_a_small_size_limit_is_said_in_bytes(cli, brightrun_home, tmp_path):
    """Not "0.0 MB over the limit of 0.0 MB": the sizes in bytes, and where the limit comes from."""
    (brightrun_home / "config.toml").write_text("max_dataset_bytes = 10\n")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"conversation_id": "c", "turns": [{"role": "user", "content": "hi"}]}) + "\n")
    result = cli("dataset", "add", str(data), "--name", "small")
    assert result.exit_code == 2
    config = brightrun_home / "config.toml"
    assert (f"is {data.stat().st_size} bytes, over the dataset size limit of 10 bytes (max_dataset_bytes = 10 in {config})"
            in " ".join(result.stderr.split()))  # the limit, and where it was set


def test_a_gguf_converted_here_is_not_sent_to_an_ssh_host_that_cannot_read_it(cli, ws, tmp_path):
    dataset_with_stats(ws)
    (ws.home / "cache" / "models").mkdir(parents=True)
    converted = model_dir(ws.home / "cache" / "models", SMALL, name="gguf-0123456789abcdef")  # as local_base_model leaves it
    from brightrun_cli.registry.tables import Host

    with ws.registry.write() as session:
        session.add(Host(name="gpu1", kind="ssh", ssh_host="gpu1.example.invalid", gpus=1, gpu_type="A10G"))
    refused = _train(cli, converted, "--host", "gpu1")
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
    assert f"was converted on this machine ({converted}), which host 'gpu1' cannot read" in refused.stderr
    assert "rsync -a" in refused.stderr


@pytest.mark.parametrize("seconds, said", [(None, "-"), (0.4, "0 s"), (21, "21 s"), (119, "119 s"), (450, "7.5 min"),
                                           (7199, "120.0 min"), (11_700, "3.25 h"), (3 * 86400, "72.00 h")])
def test_every_command_says_a_duration_the_same_human_way(seconds, said):
    from brightrun_cli.cli.common import human_duration

    assert human_duration(seconds) == said


def test_gpus_from_set_is_honoured_like_the_flag(cli, ws):
    """--set gpus=N was silently replaced by all of the host's GPUs."""
    dataset_with_stats(ws, conversations=500, train_tokens=90_000, validation_tokens=10_000)
    for args, said in ((("--set", "gpus=2"), "gpus = 2 (--set or --config)"), (("--gpus", "2"), "--gpus 2")):
        refused = cli("train", "-d", "support-v1", "-p", "tiny", *args, "--dry-run")
        assert refused.exit_code == 2 and f"{said} is more than host 'local' has (1)" in refused.stderr, refused.stderr
    plan = json.loads(cli("train", "-d", "support-v1", "-p", "tiny", "--set", "gpus=1", "--dry-run", "--json").stdout)
    assert plan["gpu_config"]["count"] == 1
