"""`brightrun status` and `brightrun prune` on registries made row by row: what a user
reads about the fleet, and what prune frees (the dry run and the real run list the same
items, byte for byte; nothing a live or resumable job needs is ever a candidate)."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from brightrun_cli.registry.tables import CostRecord, Host, ModelArtifact, Notification
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.runners.ssh import code_version
from brightrun_cli.workspace import Workspace

from jobs_helpers import dataset_row, job_row


@pytest.fixture
def ws(brightrun_home) -> Workspace:
    return Workspace.open()


def add(ws: Workspace, *rows):
    with ws.registry.write() as tx:
        for row in rows:
            tx.add(row)
            tx.flush()
    return rows[0] if len(rows) == 1 else rows


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def cli_json(cli, *args: str) -> dict:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ---------------------------------------------------------------- status


def test_status_reports_hosts_outcomes_spend_and_storage(ws, cli):
    now = utcnow()
    add(ws, Host(name="gpu-box", kind="ssh", ssh_host="10.0.0.9", gpus=3, gpu_type="A100-80GB"))
    data = dataset_row(ws)
    gpu = {"type": "A100-80GB", "count": 2, "hourly_rate": 7.0}
    # Every slot taken (by jobs whose supervisor is not yet overdue), so that no command's
    # queue housekeeping starts a queued job or fails a running one here.
    running = job_row(ws, data, status="running", hosts=["gpu-box"], gpu_config=gpu, started_at=now, heartbeat_at=now)
    queued = job_row(ws, data, status="queued", hosts=["gpu-box"], gpu_config=gpu)
    job_row(ws, data, status="running", hosts=["local"], started_at=now, heartbeat_at=now)
    job_row(ws, data, status="queued", hosts=["local"])
    recent = now - timedelta(days=2)
    job_row(ws, data, status="completed", started_at=recent - timedelta(seconds=100), completed_at=recent)
    job_row(ws, data, status="cancelled", started_at=recent, completed_at=recent + timedelta(seconds=5))
    job_row(ws, data, status="failed", started_at=now - timedelta(days=10), completed_at=now - timedelta(days=10))
    job_row(ws, data, status="completed", started_at=now - timedelta(days=40), completed_at=now - timedelta(days=40))
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    add(ws, CostRecord(cost_type="compute", amount=1.25, billing_period="x", recorded_at=now - timedelta(seconds=1)),
        CostRecord(cost_type="storage", amount=0.5, billing_period="x", recorded_at=month - timedelta(days=1)),
        CostRecord(cost_type="compute", amount=9.0, billing_period="x", recorded_at=month - timedelta(days=40)))
    write(ws.home / "storage" / "datasets" / data.id / "data.jsonl", 1000)
    write(ws.home / "storage" / "datasets" / data.id / "train.jsonl", 900)
    write(ws.home / "storage" / "models" / "m1" / "adapter_model.safetensors", 2000)
    write(ws.home / "runs" / running.id / "checkpoints" / "step-4" / "adapter_model.safetensors", 300)
    write(ws.home / "runs" / running.id / "final" / "adapter_model.safetensors", 5000)  # not a checkpoint

    status = cli_json(cli, "status", "--json")
    hosts = {h["name"]: h for h in status["hosts"]}
    assert hosts["gpu-box"] == {"name": "gpu-box", "kind": "ssh", "gpu_type": "A100-80GB", "gpus": 3, "gpus_in_use": 2,
                                "queued": 1, "running": 1, "queued_jobs": [queued.id], "running_jobs": [running.id]}
    assert (hosts["local"]["queued"], hosts["local"]["running"], hosts["local"]["gpus_in_use"]) == (1, 1, 1)
    week, month_window = status["jobs"]
    assert (week["days"], week["completed"], week["failed"], week["cancelled"], week["success_rate"]) == (7, 1, 0, 1, 1.0)
    assert week["avg_duration_s"] == pytest.approx(100, abs=0.5)
    assert (month_window["days"], month_window["ended"], month_window["success_rate"]) == (30, 3, 0.5)
    assert status["spend"]["this_month"] == {"period": f"{month:%Y-%m}", "total_cost": 1.25}
    assert status["spend"]["last_month"]["total_cost"] == 0.5
    assert status["storage"]["measured"] is True and status["storage"]["total_bytes"] == 1900 + 2000 + 300
    assert (status["storage"]["datasets"], status["storage"]["models"], status["storage"]["checkpoints"]) == (
        {"bytes": 1900, "files": 2}, {"bytes": 2000, "files": 1}, {"bytes": 300, "files": 1})

    text = cli("status").stdout
    assert "gpu-box" in text and "2/3 A100-80GB" in text and running.id[:12] in text
    assert "50%" in text and "100 s" in text and "$1.25 this month" in text and "$0.50 last month" in text
    assert "checkpoints 300 B" in text


def test_status_leaves_a_remote_store_unmeasured_unless_asked(ws, cli):
    (ws.home / "config.toml").write_text('storage_url = "s3://team-bucket/brightrun"\n')
    storage = cli_json(cli, "status", "--json")["storage"]
    assert storage == {"url": "s3://team-bucket/brightrun", "measured": False, "datasets": None, "models": None,
                       "checkpoints": {"bytes": 0, "files": 0}, "total_bytes": None}
    assert "not measured (pass --storage" in cli("status").stdout


# ---------------------------------------------------------------- prune


@pytest.fixture
def cluster(ws, tmp_path) -> Host:
    """A Slurm host whose login node is this machine: its workdir is a local directory,
    reached through the same scripts an SSH host runs."""
    return add(ws, Host(name="cluster", kind="slurm", gpus=2, gpu_type="cpu", python=sys.executable,
                        workdir=str(tmp_path / "wd"), options={"partition": "debug"}))


def test_prune_frees_exactly_what_nothing_needs_and_the_dry_run_says_so(ws, cli, cluster, tmp_path):
    now = utcnow()
    home, store, workdir = ws.home, ws.home / "storage", tmp_path / "wd"
    gone, used_by_failed, used_by_running, live = (dataset_row(ws, name) for name in ("gone", "for-failed", "for-running", "live"))
    completed = job_row(ws, gone, status="completed", completed_at=now)
    failed = job_row(ws, used_by_failed, status="failed", completed_at=now)
    running = job_row(ws, used_by_running, status="running", started_at=now, heartbeat_at=now)
    removed = job_row(ws, live, status="completed", completed_at=now, deleted_at=now)
    on_cluster = job_row(ws, live, status="completed", completed_at=now, hosts=["cluster"])
    busy = job_row(ws, live, status="running", hosts=["cluster"], external_job_id="slurm:7:x", started_at=now, heartbeat_at=now)
    with ws.registry.write() as tx:
        for dataset in (gone, used_by_failed, used_by_running):
            tx.get(type(dataset), dataset.id).deleted_at = now
    add(ws, Notification(type="job_completed", title="t", message="old and read", read=True, created_at=now - timedelta(days=40)),
        Notification(type="job_completed", title="t", message="old, unread", read=False, created_at=now - timedelta(days=40)),
        Notification(type="job_completed", title="t", message="read, recent", read=True, created_at=now - timedelta(days=3)))
    old_note = ws.registry.connect().execute("SELECT id FROM notifications WHERE message = 'old and read'").fetchone()[0]
    removed_model = ModelArtifact(job_id=completed.id, dataset_id=gone.id, name="gone-model", storage_path="models/mgone",
                                  deleted_at=now, id="mgone")
    kept_model = ModelArtifact(job_id=on_cluster.id, dataset_id=live.id, name="live-model", storage_path="models/mlive", id="mlive")
    add(ws, removed_model, kept_model)
    write(home / "cache" / "artifacts" / failed.id / "artifact_id", 0).write_text("mclaimed")

    freed = {  # path -> bytes, as prune should report them
        f"runs/{completed.id}/checkpoints": write(home / "runs" / completed.id / "checkpoints" / "step-3" / "adapter_model.safetensors", 300),
        f"runs/{removed.id}": write(home / "runs" / removed.id / "metrics.jsonl", 40),
        f"datasets/{gone.id}": write(store / "datasets" / gone.id / "data.jsonl", 1000),
        f"cache/datasets/{gone.id}": write(home / "cache" / "datasets" / gone.id / "train.jsonl", 90),
        "datasets/0orphan": write(store / "datasets" / "0orphan" / "data.jsonl", 70),
        "models/mgone": write(store / "models" / "mgone" / "adapter_model.safetensors", 2000),
        "models/0orphan": write(store / "models" / "0orphan" / "README.md", 20),
        f"runs/{on_cluster.id}/checkpoints@cluster": write(workdir / "runs" / on_cluster.id / "checkpoints" / "step-1" / "x", 500),
        "code/00000000000000aa@cluster": write(workdir / "code" / "00000000000000aa" / "brightrun_cli" / "a.py", 60),
    }
    kept = [
        write(home / "runs" / completed.id / "final" / "adapter_model.safetensors", 310),
        write(home / "runs" / failed.id / "checkpoints" / "step-2" / "adapter_model.safetensors", 320),
        write(home / "runs" / running.id / "checkpoints" / "step-2" / "adapter_model.safetensors", 330),
        write(store / "datasets" / used_by_failed.id / "data.jsonl", 340),
        write(store / "datasets" / used_by_running.id / "data.jsonl", 350),
        write(store / "datasets" / live.id / "data.jsonl", 360),
        write(store / "models" / "mlive" / "adapter_model.safetensors", 370),
        write(store / "models" / "mclaimed" / "adapter_model.safetensors", 380),
        write(workdir / "runs" / on_cluster.id / "final" / "adapter_model.safetensors", 390),
        write(workdir / "runs" / busy.id / "checkpoints" / "step-1" / "x", 400),
        write(workdir / "code" / code_version() / "brightrun_cli" / "a.py", 410),
        write(workdir / "code" / "00000000000000bb" / "brightrun_cli" / "a.py", 420),  # the running job's
    ]
    write(home / "runs" / busy.id / "code_version", 0).write_text("00000000000000bb\n")

    dry = cli_json(cli, "prune", "--json")
    assert dry["dry_run"] is True and dry["older_than_days"] == 30 and dry["skipped"] == []
    got = {item["target"] + ("@" + item["host"] if item["location"] == "workdir" else ""): item["bytes"]
           for item in dry["items"] if item["kind"] != "notifications"}
    assert got == {path: file.stat().st_size for path, file in freed.items()}
    assert [i["target"] for i in dry["items"] if i["kind"] == "notifications"] == [old_note]
    assert dry["kinds"] == {"notifications": {"count": 1, "bytes": 0}, "checkpoints": {"count": 2, "bytes": 800},
                            "runs": {"count": 1, "bytes": 40}, "datasets": {"count": 3, "bytes": 1160},
                            "models": {"count": 2, "bytes": 2020}, "code": {"count": 1, "bytes": 60}}
    assert dry["total_bytes"] == 4080
    assert all(f.exists() for f in freed.values()) and cli_json(cli, "prune", "--json") == dry  # the dry run changed nothing

    done = cli_json(cli, "prune", "--yes", "--json")
    assert json.dumps({**done, "dry_run": True}) == json.dumps(dry)  # byte for byte the same items
    assert not any(f.exists() for f in freed.values()) and all(f.exists() for f in kept)
    for path in ("runs/" + completed.id + "/checkpoints", "runs/" + removed.id, "cache/datasets/" + gone.id):
        assert not (home / path).exists()
    assert not (workdir / "runs" / on_cluster.id / "checkpoints").exists() and not (workdir / "code" / "00000000000000aa").exists()
    assert [r[0] for r in ws.registry.connect().execute("SELECT message FROM notifications ORDER BY message")] == ["old, unread", "read, recent"]
    again = cli_json(cli, "prune", "--json")
    assert again["items"] == [] and again["total_bytes"] == 0


def test_prune_keeps_every_code_dir_of_a_host_whose_running_job_has_no_code_record(ws, cli, cluster, tmp_path):
    data = dataset_row(ws)
    job = job_row(ws, data, status="running", hosts=["cluster"], external_job_id="slurm:8:y", heartbeat_at=utcnow())
    old = write(tmp_path / "wd" / "code" / "00000000000000cc" / "a.py", 10)
    dry = cli_json(cli, "prune", "--json")
    assert dry["items"] == [] and dry["skipped"] == [
        {"host": "cluster", "reason": f"code dirs kept: job {job.id} runs code this brightrun did not record"}]
    cli_json(cli, "prune", "--yes", "--json")
    assert old.exists()


def test_prune_skips_an_unreachable_host_and_says_so(ws, cli):
    add(ws, Host(name="gone-box", kind="ssh", ssh_host="127.0.0.1", ssh_port=1, gpus=1))
    dry = cli_json(cli, "prune", "--json")
    assert [s["host"] for s in dry["skipped"]] == ["gone-box"] and dry["items"] == []
    assert "skipped host gone-box" in cli("prune").stdout


def test_prune_human_output_lists_kinds_sizes_and_how_to_apply(ws, cli):
    data = dataset_row(ws)
    job = job_row(ws, data, status="completed", completed_at=utcnow())
    write(ws.home / "runs" / job.id / "checkpoints" / "step-1" / "a", 1500)
    text = cli("prune").stdout
    assert "dry run, nothing removed; 'brightrun prune --yes' would remove:" in text
    assert "checkpoints" in text and "1.5 KB" in text and f"job {job.id} completed" in text
    assert (ws.home / "runs" / job.id / "checkpoints").exists()
    assert "removed:" in cli("prune", "--yes").stdout and not (ws.home / "runs" / job.id / "checkpoints").exists()
    assert cli("prune").stdout.strip() == "nothing to prune"


@pytest.mark.parametrize("text, days", [("30d", 30.0), ("12h", 0.5), ("2w", 14.0), ("7", 7.0)])
def test_older_than_reads_days_hours_and_weeks(text, days):
    from brightrun_cli.services.prune import parse_older_than

    assert parse_older_than(text) == days


def test_a_bad_older_than_is_one_usage_error(cli):
    from conftest import run_brightrun

    result = run_brightrun("prune", "--older-than", "soon")
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: --older-than 'soon' is not a duration; write it as days, hours or weeks: 30d, 12h, 2w")


def test_an_s3_store_is_measured_when_asked_and_pruned_from_its_listing(ws, cli, s3_server):
    import uuid

    import s3fs

    bucket = f"bkt-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.mkdir(bucket)
    (ws.home / "config.toml").write_text(
        f'storage_url = "s3://{bucket}/store"\n[storage_options.client_kwargs]\nendpoint_url = "{s3_server}"\n')
    gone, live = dataset_row(ws, "gone"), dataset_row(ws, "live")
    with ws.registry.write() as tx:
        tx.get(type(gone), gone.id).deleted_at = utcnow()
    fs.pipe(f"{bucket}/store/datasets/{gone.id}/data.jsonl", b"x" * 700)
    fs.pipe(f"{bucket}/store/datasets/{live.id}/data.jsonl", b"x" * 300)
    fs.pipe(f"{bucket}/store/models/m1/adapter_model.safetensors", b"x" * 50)

    assert cli_json(cli, "status", "--json")["storage"]["measured"] is False
    storage = cli_json(cli, "status", "--storage", "--json")["storage"]
    assert (storage["measured"], storage["datasets"], storage["models"], storage["total_bytes"]) == (
        True, {"bytes": 1000, "files": 2}, {"bytes": 50, "files": 1}, 1050)

    dry = cli_json(cli, "prune", "--json")
    assert [(i["location"], i["target"], i["bytes"]) for i in dry["items"]] == [
        ("storage", f"datasets/{gone.id}", 700), ("storage", "models/m1", 50)]  # m1: files without a model row
    assert {**cli_json(cli, "prune", "--yes", "--json"), "dry_run": True} == dry
    assert not fs.exists(f"{bucket}/store/datasets/{gone.id}") and not fs.exists(f"{bucket}/store/models/m1")
    assert fs.exists(f"{bucket}/store/datasets/{live.id}/data.jsonl")
