"""Model artifacts from a real CPU training run on builtin:tiny: measured quality, model
card, export (local and S3) loading in a fresh process, merge, crash-safe creation.

The slow tests share ONE trained run (session fixture): each test copies its run
directory into its own home and registers a completed job for it, so tests stay
independent while the machine trains once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, run_brightrun

EXAMPLE = REPO / "examples" / "support_conversations.jsonl"
HYPERPARAMETERS = {
    "learning_rate": 1e-3, "batch_size": 8, "num_epochs": 1,
    "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0,
    "warmup_steps": 5, "weight_decay": 0.0, "max_seq_length": 256,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gradient_accumulation_steps": 1, "lr_scheduler": "cosine", "max_grad_norm": 1.0,
    "packing": True, "gradient_checkpointing": False, "assistant_only_loss": True,
    "precision": "fp32",
}
N_TRAIN, N_VALIDATION = 80, 16  # one 10-step epoch: the CPU is shared, keep the one training run short
PROMPT = "<|im_start|>user\nWhere is my order 80239?<|im_end|>\n<|im_start|>assistant\n"


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run directory the trainer completed on the example data."""
    run = tmp_path_factory.mktemp("trained-run")
    lines = EXAMPLE.read_text().splitlines()
    (run / "train.jsonl").write_text("\n".join(lines[:N_TRAIN]) + "\n")
    (run / "validation.jsonl").write_text("\n".join(lines[-N_VALIDATION:]) + "\n")
    spec = {
        "version": 1, "job_id": "01trainedrunfortests000000", "base_model": "builtin:tiny",
        "train_file": "train.jsonl", "validation_file": "validation.jsonl", "output_dir": ".",
        "seed": 42, "hyperparameters": HYPERPARAMETERS, "logging_steps": 1, "save_steps": 0,
        "max_steps": None, "resume": False,
    }
    (run / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "brightrun_cli.trainer", str(run / "spec.json")],
                          env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def completed_job(home: Path, trained_run: Path) -> str:
    """Register a dataset and a completed job whose run dir is a copy of `trained_run`; ingest its metrics."""
    from brightrun_cli.registry.tables import Dataset, TrainingJob
    from brightrun_cli.registry.timeutil import utcnow
    from brightrun_cli.registry.points import insert_many as insert_points
    from brightrun_cli.supervisor.ingest import metric_lines, point_values
    from brightrun_cli.workspace import Workspace

    ws = Workspace.open(home)
    result = json.loads((trained_run / "result.json").read_text())
    with ws.registry.write() as session:
        dataset = Dataset(name="support", storage_path=f"datasets/{os.urandom(4).hex()}/data.jsonl", file_name="data.jsonl",
                          file_size=EXAMPLE.stat().st_size, status="ready", training_ready=True,
                          total_conversations=N_TRAIN + N_VALIDATION, total_training_pairs=N_TRAIN,
                          total_validation_pairs=N_VALIDATION)
        session.add(dataset)
        session.flush()
        job = TrainingJob(dataset_id=dataset.id, preset_id="tiny", base_model="builtin:tiny",
                          hyperparameters=HYPERPARAMETERS, gpu_config={"type": "cpu", "count": 1},
                          status="completed", current_stage="completed", progress=1.0,
                          total_epochs=1, current_epoch=1, current_step=result["steps"], total_steps=result["steps"],
                          estimated_total_cost=0.0, final_cost=0.0, started_at=utcnow(), completed_at=utcnow())
        session.add(job)
        session.flush()
        job.run_dir = f"runs/{job.id}"
        lines = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
        insert_points(session.connection(), point_values(job.id, metric_lines(lines)))
        job_id = job.id
    shutil.copytree(trained_run, home / "runs" / job_id)
    return job_id


LOGITS = textwrap.dedent(f"""
    import json, sys, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from peft import PeftModel
    from brightrun_cli.builtin import resolve_base_model
    base = resolve_base_model("builtin:tiny")
    ids = AutoTokenizer.from_pretrained(base)({PROMPT!r}, return_tensors="pt").input_ids
    out = []
    for kind, path in zip(sys.argv[1::2], sys.argv[2::2]):
        if kind == "adapter":  # what the model card tells users to do
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), path)
        else:
            model = AutoModelForCausalLM.from_pretrained(path)
        with torch.no_grad():
            out.append(model.eval()(ids).logits[0, -4:].tolist())
    print(json.dumps(out))
""")


def fresh_logits(*models: tuple[str, str | Path]):
    """Logits for PROMPT from each (kind, dir) model, kind "adapter" (on builtin:tiny) or "model", in ONE new process."""
    import torch

    argv = [str(part) for model in models for part in model]
    proc = subprocess.run([sys.executable, "-c", LOGITS, *argv], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.tensor(logits) for logits in json.loads(proc.stdout)]


@pytest.fixture
def artifact(brightrun_home, trained_run):
    from brightrun_cli.services.artifacts import create_artifact
    from brightrun_cli.workspace import Workspace

    job_id = completed_job(brightrun_home, trained_run)
    return create_artifact(Workspace.open(brightrun_home), job_id)


@pytest.mark.slow
def test_show_reports_measured_quality_against_the_base(cli, artifact, trained_run, brightrun_home):
    result = cli("models", "show", artifact.id[:8], "--json")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    q = shown["quality_metrics"]
    trained = json.loads((trained_run / "result.json").read_text())
    step0 = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    base_point = next(m["validation_loss"] for m in step0 if m["split"] == "validation" and m["step"] == 0)
    assert q["base_validation_loss"] == pytest.approx(trained["base_validation_loss"])
    assert q["base_validation_loss"] == pytest.approx(base_point, rel=1e-4)
    assert q["final_validation_loss"] == pytest.approx(trained["final_validation_loss"])
    assert q["validation_loss_improvement"] > 0
    assert q["final_validation_loss"] < q["base_validation_loss"]
    assert 1 <= q["overall_score"] <= 5 and q["score_rule"]
    assert q["convergence_quality"] in ("excellent", "good", "fair", "poor", "overfitting")
    assert shown["training_summary"]["total_steps"] == trained["steps"]
    assert shown["configuration"]["hyperparameters"] == HYPERPARAMETERS

    # Stored files are exactly the listed ones, with the recorded checksums.
    import hashlib

    storage = brightrun_home / "storage" / shown["storage_path"]
    listed = {e["path"]: e for e in shown["artifacts"]["files"]}
    on_disk = {p.relative_to(storage).as_posix() for p in storage.rglob("*") if p.is_file()}
    assert on_disk == set(listed)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "metrics.jsonl"} <= on_disk
    for path, entry in listed.items():
        assert hashlib.sha256((storage / path).read_bytes()).hexdigest() == entry["sha256"]
    card = (storage / "README.md").read_text()
    for section in ("## Quality", "## Loss curves", "## Dataset", "## Training", "PeftModel.from_pretrained", "## Library versions"):
        assert section in card
    assert f"{q['base_validation_loss']:.4g}" in card

    human = cli("models", "show", artifact.id)
    assert human.exit_code == 0 and "rule:" in human.stdout and f"{q['overall_score']}/5" in human.stdout


@pytest.mark.slow
def test_create_artifact_is_idempotent_and_links_the_job(artifact, brightrun_home):
    from brightrun_cli.registry.tables import ModelArtifact, Notification, TrainingJob
    from brightrun_cli.services.artifacts import create_artifact
    from brightrun_cli.workspace import Workspace
    from sqlmodel import select

    ws = Workspace.open(brightrun_home)
    again = create_artifact(ws, artifact.job_id)
    assert again.id == artifact.id
    with ws.registry.write() as session:
        assert session.get(TrainingJob, artifact.job_id).artifact_id == artifact.id
        assert len(session.exec(select(ModelArtifact)).all()) == 1
        notes = session.exec(select(Notification).where(Notification.type == "artifact_ready")).all()
    assert [n.artifact_id for n in notes] == [artifact.id]


@pytest.mark.slow
def test_exported_adapter_loads_in_a_fresh_process_with_the_trainers_logits(cli, artifact, trained_run, tmp_path):
    import torch

    from brightrun_cli.builtin import resolve_base_model

    target = tmp_path / "adapter"
    result = cli("models", "export", artifact.id, str(target))
    assert result.exit_code == 0, result.stderr

    exported, trainer_final, base = fresh_logits(("adapter", target), ("adapter", trained_run / "final"),
                                                 ("model", resolve_base_model("builtin:tiny")))
    torch.testing.assert_close(exported, trainer_final, rtol=1e-5, atol=1e-5)
    # The adapter changed the model: its logits are not the base model's.
    assert not torch.allclose(exported, base, atol=1e-4)


@pytest.mark.slow
def test_export_refuses_a_non_empty_directory_without_force(cli, artifact, tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = cli("models", "export", artifact.id, str(target))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "not empty" in result.stderr and "--force" in result.stderr
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    forced = cli("models", "export", artifact.id, str(target), "--force")
    assert forced.exit_code == 0, forced.stderr
    assert (target / "adapter_model.safetensors").is_file() and (target / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_export_to_s3(cli, artifact, s3_server, monkeypatch):
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    bucket = f"export-{os.urandom(4).hex()}"
    fs.mkdir(bucket)
    result = cli("models", "export", artifact.id, f"s3://{bucket}/adapters/run1", "--json")
    assert result.exit_code == 0, result.stderr
    written = json.loads(result.stdout)
    fs.invalidate_cache()
    keys = sorted(p.split("/adapters/run1/", 1)[1] for p in fs.find(f"{bucket}/adapters/run1"))
    assert keys == sorted(written["files"]) == sorted(e["path"] for e in artifact.artifacts["files"])
    import hashlib

    for entry in artifact.artifacts["files"]:
        assert hashlib.sha256(fs.cat(f"{bucket}/adapters/run1/{entry['path']}")).hexdigest() == entry["sha256"]


@pytest.mark.slow
def test_merged_model_loads_as_a_plain_model_matching_base_plus_adapter(cli, artifact, brightrun_home, tmp_path):
    import torch

    out = tmp_path / "merged"
    result = run_brightrun("models", "merge", artifact.id, str(out), "--json", umask=0o022)  # a real process, stderr not a terminal
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bars or library deprecation notices in a script's log
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    # readable by a server running as another user, as the umask says (safetensors writes 0600 itself)
    assert {oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()} == {"0o644"}
    written = json.loads(result.stdout)
    assert written["target"] == str(out) and {"config.json", "model.safetensors"} <= set(written["files"])
    assert written["bytes"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert not list(out.glob("*.bin")) and not (out / "adapter_config.json").exists()
    stored = brightrun_home / "storage" / artifact.storage_path
    merged, with_adapter = fresh_logits(("model", out), ("adapter", stored))
    torch.testing.assert_close(merged, with_adapter, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_merge_with_the_base_unavailable_writes_nothing(cli, artifact, brightrun_home, tmp_path):
    from brightrun_cli.registry.tables import ModelArtifact
    from brightrun_cli.workspace import Workspace

    with Workspace.open(brightrun_home).registry.write() as session:
        row = session.get(ModelArtifact, artifact.id)
        row.base_model = str(tmp_path / "gone-base-model")
        session.add(row)
    out = tmp_path / "merged"
    result = cli("models", "merge", artifact.id, str(out))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "gone-base-model does not exist (moved or deleted?)" in result.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    assert not list((brightrun_home / "cache").glob("merge-*"))


KILLER = """
import os, signal, sys
from brightrun_cli.services import artifacts
from brightrun_cli.storage.blobstore import BlobStore
from brightrun_cli.workspace import Workspace

where = sys.argv[3]
if where == "upload":
    calls = []
    real_put = BlobStore.put_file
    def put_file(self, local, key):
        if len(calls) == 2:  # two files stored, the rest not
            os.kill(os.getpid(), signal.SIGKILL)
        calls.append(key)
        real_put(self, local, key)
    BlobStore.put_file = put_file
else:  # everything uploaded, the registry transaction not yet committed
    artifacts._register = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
artifacts.create_artifact(Workspace.open(sys.argv[1]), sys.argv[2])
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["upload", "register"])
def test_killed_midway_then_rerun_leaves_exactly_one_complete_artifact(where, brightrun_home, trained_run):
    import hashlib

    from brightrun_cli.registry.tables import ModelArtifact
    from brightrun_cli.services.artifacts import create_artifact
    from brightrun_cli.workspace import Workspace
    from sqlmodel import select

    job_id = completed_job(brightrun_home, trained_run)
    proc = subprocess.run([sys.executable, "-c", KILLER, str(brightrun_home), job_id, where],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ws = Workspace.open(brightrun_home)
    with ws.registry.write() as session:
        assert session.exec(select(ModelArtifact)).all() == []  # nothing half-registered
    assert (brightrun_home / "storage" / "models").is_dir()  # the kill did leave partial files

    artifact = create_artifact(ws, job_id)
    with ws.registry.write() as session:
        assert [row.id for row in session.exec(select(ModelArtifact)).all()] == [artifact.id]
    models = brightrun_home / "storage" / "models"
    assert [p.name for p in models.iterdir()] == [artifact.id]
    files = {p.relative_to(models / artifact.id).as_posix(): p for p in (models / artifact.id).rglob("*") if p.is_file()}
    assert set(files) == {e["path"] for e in artifact.artifacts["files"]}
    for entry in artifact.artifacts["files"]:
        assert hashlib.sha256(files[entry["path"]].read_bytes()).hexdigest() == entry["sha256"]
    assert not (brightrun_home / "cache" / "artifacts" / job_id).exists()


@pytest.mark.slow
def test_artifact_in_s3_storage_exports_and_removes(cli, brightrun_home, trained_run, s3_server, tmp_path):
    import s3fs

    from brightrun_cli.services.artifacts import create_artifact
    from brightrun_cli.workspace import Workspace

    bucket = f"store-{os.urandom(4).hex()}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.mkdir(bucket)
    (brightrun_home / "config.toml").write_text(
        f'storage_url = "s3://{bucket}/root"\n[storage_options.client_kwargs]\nendpoint_url = "{s3_server}"\n'
    )
    artifact = create_artifact(Workspace.open(brightrun_home), completed_job(brightrun_home, trained_run))
    prefix = f"{bucket}/root/models/{artifact.id}/"
    assert sorted(p[len(prefix):] for p in fs.find(prefix)) == sorted(e["path"] for e in artifact.artifacts["files"])

    exported = cli("models", "export", artifact.id, str(tmp_path / "out"))
    assert exported.exit_code == 0, exported.stderr
    assert (tmp_path / "out" / "adapter_model.safetensors").stat().st_size == next(
        e["size"] for e in artifact.artifacts["files"] if e["path"] == "adapter_model.safetensors")

    assert cli("models", "rm", artifact.id, "--yes").exit_code == 0
    fs.invalidate_cache()
    assert fs.find(prefix) == []
