"""`models list|show|rm` behaviour that needs no training: registry rows and stored files made directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest

from conftest import REPO


def make_model(home, *, name, score, cost, age_h=0.0, parent=None, base_model="builtin:tiny", version="1.0.0"):
    """Register a job + model row and store two files under its key, as create_artifact would."""
    from brightrun_cli.registry.tables import Dataset, ModelArtifact, TrainingJob
    from brightrun_cli.registry.timeutil import utcnow
    from brightrun_cli.workspace import Workspace

    ws = Workspace.open(home)
    with ws.registry.write() as session:
        dataset = Dataset(name=f"data-{name}", storage_path=f"datasets/{name}/data.jsonl", file_name="data.jsonl", file_size=1)
        dataset.name, dataset.storage_path = f"data-{name}-{dataset.id}", f"datasets/{dataset.id}/data.jsonl"  # two models may share a name
        session.add(dataset)
        session.flush()
        job = TrainingJob(dataset_id=dataset.id, preset_id="tiny", base_model="builtin:tiny", hyperparameters={},
                          gpu_config={"type": "cpu", "count": 1}, total_epochs=1, estimated_total_cost=cost, status="completed")
        session.add(job)
        session.flush()
        model = ModelArtifact(job_id=job.id, dataset_id=dataset.id, name=name, version=version, base_model=base_model,
                              quality_metrics={"overall_score": score, "convergence_quality": "good"},
                              training_summary={"total_cost": cost}, configuration={}, artifacts={"files": []},
                              parent_model_id=parent, created_at=utcnow() - timedelta(hours=age_h))
        model.storage_path = f"models/{model.id}"
        session.add(model)
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        with ws.storage.writer(f"{model.storage_path}/{file}") as out:
            out.write(b"{}")
    return model


def test_unknown_model_is_one_line_exit_2(cli):
    for command in (("show", "nope"), ("export", "nope", "somewhere"), ("merge", "nope", "out"), ("rm", "nope", "--yes")):
        result = cli("models", *command)
        assert result.exit_code == 2, command
        assert result.stderr.startswith("error: no model matches 'nope' (by id, id prefix, name or NAME@VERSION)")
        assert result.stderr.count("\n") == 1


def test_list_empty_and_bad_sort(cli):
    result = cli("models", "list", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    bad = cli("models", "list", "--sort", "size")
    assert bad.exit_code == 2 and "created, score, cost" in bad.stderr


def test_list_sorts_by_created_score_and_cost(cli, brightrun_home):
    make_model(brightrun_home, name="old-good-cheap", score=5, cost=1.0, age_h=3)
    make_model(brightrun_home, name="mid-bad-dear", score=2, cost=9.0, age_h=2)
    make_model(brightrun_home, name="new-ok-mid", score=3, cost=4.0, age_h=1)

    def names(*sort):
        result = cli("models", "list", *sort, "--json")
        assert result.exit_code == 0, result.stderr
        return [m["name"] for m in json.loads(result.stdout)]

    assert names() == ["new-ok-mid", "mid-bad-dear", "old-good-cheap"]
    assert names("--sort", "score") == ["old-good-cheap", "new-ok-mid", "mid-bad-dear"]
    assert names("--sort", "cost") == ["old-good-cheap", "new-ok-mid", "mid-bad-dear"]
    human = cli("models", "list")
    assert human.exit_code == 0 and "old-good-cheap" in human.stdout and "5/5" in human.stdout
    # list --json and show --json describe a model identically; show adds its answer eval
    for listed in json.loads(cli("models", "list", "--json").stdout):
        shown = json.loads(cli("models", "show", listed["id"], "--json").stdout)
        assert shown.pop("eval") is None and shown == listed


def test_models_list_does_not_import_sqlalchemy(brightrun_home):
    make_model(brightrun_home, name="one", score=3, cost=1.0)
    code = (
        "import sys\n"
        "from brightrun_cli.cli.app import app\n"
        "try:\n    app(['models', 'list', '--json'], prog_name='brightrun')\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print('SQLALCHEMY' if 'sqlalchemy' in sys.modules else 'PLAIN')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])[0]["name"] == "one"
    assert proc.stdout.splitlines()[-1] == "PLAIN"


def test_rm_refuses_while_a_model_derives_from_it(cli, brightrun_home):
    parent = make_model(brightrun_home, name="parent", score=4, cost=1.0)
    child = make_model(brightrun_home, name="child", score=4, cost=1.0, parent=parent.id)
    stored = brightrun_home / "storage" / parent.storage_path

    refused = cli("models", "rm", parent.id, "--yes")
    assert refused.exit_code == 2 and child.id in refused.stderr and refused.stderr.count("\n") == 1
    assert (stored / "adapter_model.safetensors").is_file()

    assert cli("models", "rm", "child", "--yes").exit_code == 0
    removed = cli("models", "rm", parent.id, "--yes", "--json")
    assert removed.exit_code == 0, removed.stderr
    assert json.loads(removed.stdout) == {"id": parent.id, "name": "parent", "version": parent.version, "removed": True}
    assert not stored.exists()
    assert json.loads(cli("models", "list", "--json").stdout) == []
    assert cli("models", "show", parent.id).exit_code == 2


def test_rm_without_yes_and_no_terminal_refuses(cli, brightrun_home):
    model = make_model(brightrun_home, name="keep", score=3, cost=1.0)
    result = cli("models", "rm", model.id)
    assert result.exit_code == 2 and "--yes" in result.stderr
    assert (brightrun_home / "storage" / model.storage_path / "adapter_config.json").is_file()


def test_merge_with_an_unknown_builtin_base_writes_nothing(cli, brightrun_home, tmp_path):
    model = make_model(brightrun_home, name="orphan", score=3, cost=1.0, base_model="builtin:retired")
    result = cli("models", "merge", model.id, str(tmp_path / "merged"))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "unavailable" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_base_model_gone_from_its_path_is_named_with_the_way_back(cli, brightrun_home, tmp_path):
    """Models record their base by path; a .gguf converted into the cache is gone when the
    cache is cleared. Say that (and how to convert it again), not transformers' hub-id error."""
    gone = brightrun_home / "cache" / "models" / "gguf-b179c9523d0e6a0f"
    converted = make_model(brightrun_home, name="from-gguf", score=3, cost=1.0, base_model=str(gone))
    moved = make_model(brightrun_home, name="from-dir", score=3, cost=1.0, base_model=str(tmp_path / "llama-moved"))
    for args in (("merge", converted.id, str(tmp_path / "merged")), ("try", converted.id, "hi")):
        result = cli("models", *args)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "converted from a .gguf file" in result.stderr and "--base-model FILE.gguf" in result.stderr
        assert "Repo id" not in result.stderr
    result = cli("models", "try", moved.id, "hi")
    assert result.exit_code == 2 and "llama-moved does not exist" in result.stderr
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("args", [("list",), ("show", "x"), ("export", "x", "y"), ("merge", "x", "y"), ("rm", "x")])
def test_help_has_examples(cli, args):
    result = cli("models", args[0], "--help")
    assert result.exit_code == 0 and "Examples" in result.stdout


def test_the_end_line_of_a_job_whose_model_was_removed_points_nowhere(brightrun_home):
    import msgspec

    from brightrun_cli.cli.watch import _model_line
    from brightrun_cli.registry.timeutil import utcnow
    from brightrun_cli.services.models import get_model
    from brightrun_cli.workspace import Workspace

    row = get_model(Workspace.open(brightrun_home), make_model(brightrun_home, name="gone", score=3, cost=1.0).id)
    assert f"see 'brightrun models show {row.id}'" in _model_line(row)
    removed = _model_line(msgspec.structs.replace(row, deleted_at=utcnow()))
    assert "removed since ('models rm')" in removed and "models show" not in removed
