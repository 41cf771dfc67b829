"""What scripts and people at a terminal rely on when something is off: one `error:` line
(what, why, what to do) and an exit code, never a traceback or a framed block; quiet exits
when a reader closes the pipe; config.toml trouble reported the same way by every command."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, run_brightrun


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (("jobs", "list", "--bogus"), "error: No such option: --bogus; see 'brightrun jobs list --help'"),
    (("jobs", "show"), "error: Missing argument 'job'; see 'brightrun jobs show --help'"),
    (("datasets", "list"), "error: No such command 'datasets'. Did you mean 'dataset'?; see 'brightrun --help'"),
    (("train", "--dataset"), "error: Option '--dataset' requires an argument; see 'brightrun train --help'"),
])
def test_usage_errors_are_one_line_exit_2(argv, expected):
    result = run_brightrun(*argv)
    assert result.returncode == 2 and _one_error_line(result.stderr) == expected


def test_home_is_accepted_after_the_subcommand(tmp_path):
    result = run_brightrun("hosts", "list", "--json", "--home", str(tmp_path / "h"), env={"BRIGHTRUN_HOME": str(tmp_path / "other")})
    assert result.returncode == 0 and [h["name"] for h in json.loads(result.stdout)] == ["local"]
    assert (tmp_path / "h" / "registry.db").exists() and not (tmp_path / "other").exists()


def _with_closed_stdout(*argv: str) -> subprocess.CompletedProcess:
    """Run brightrun with a stdout whose reader has already gone (`| head -0`)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    try:
        return subprocess.run([sys.executable, "-m", "brightrun_cli", *argv], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=60)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("argv", [("gpus",), ("presets", "list", "--json"), ("hosts", "list")])
def test_a_reader_that_left_ends_the_command_quietly(argv):
    result = _with_closed_stdout(*argv)
    assert result.returncode == 141 and result.stderr == ""


def test_a_full_disk_is_one_plain_line_not_an_internal_error(cli, monkeypatch):
    from brightrun_cli.services import jobs

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/brightrun/registry.db")

    monkeypatch.setattr(jobs, "list_jobs", full)
    result = cli("jobs", "list")
    assert result.exit_code == 1
    assert _one_error_line(result.stderr) == (
        "error: no space left on the device (/data/brightrun/registry.db); free space there, or point --home / storage_url at another disk")


def test_an_sqlite_full_disk_is_the_same_line(cli, monkeypatch):
    import sqlite3

    from brightrun_cli.services import jobs

    monkeypatch.setattr(jobs, "list_jobs", lambda *a, **k: (_ for _ in ()).throw(sqlite3.OperationalError("database or disk is full")))
    result = cli("jobs", "list")
    assert result.exit_code == 1 and "no space left on the device of the registry" in _one_error_line(result.stderr)


def test_a_broken_config_is_reported_alike_by_every_command(brightrun_home):
    (brightrun_home / "config.toml").write_text("default_host = \n")
    for argv in (("jobs", "list"), ("presets", "list"), ("gpus",), ("hosts", "list", "--json")):
        result = run_brightrun(*argv)
        assert result.returncode == 2, argv
        assert _one_error_line(result.stderr).startswith(f"error: cannot read {brightrun_home / 'config.toml'}: "), argv


def test_unknown_config_keys_and_a_missing_hook_warn_and_the_command_still_runs(brightrun_home):
    (brightrun_home / "config.toml").write_text('defualt_host = "gpu1"\nnotification_hook = "/no/such/hook --x"\n')
    result = run_brightrun("gpus", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)
    warnings = result.stderr.splitlines()
    assert warnings[0] == f"warning: {brightrun_home / 'config.toml'}: unknown key 'defualt_host' is ignored; did you mean 'default_host'?"
    assert warnings[1].startswith(f"warning: {brightrun_home / 'config.toml'}: notification_hook '/no/such/hook' is not an executable")
    assert len(warnings) == 2


def test_watch_refuses_an_empty_job_and_an_ambiguous_prefix_with_exit_2(cli, brightrun_home):
    from brightrun_cli.registry.tables import Dataset, TrainingJob
    from brightrun_cli.workspace import Workspace

    empty = run_brightrun("watch", "")
    assert empty.returncode == 2 and "empty job reference" in _one_error_line(empty.stderr)
    ws = Workspace.open(brightrun_home)
    with ws.registry.write() as tx:
        dataset = Dataset(name="d", storage_path="d/x", file_name="x", file_size=1)
        tx.add(dataset)
        tx.flush()
        for suffix in "ab":
            tx.add(TrainingJob(id="01aaaa00000000000000000" + suffix * 3, dataset_id=dataset.id, preset_id="tiny", base_model="builtin:tiny",
                               hyperparameters={}, gpu_config={}, total_epochs=1, estimated_total_cost=0.0, status="completed"))
    ambiguous = run_brightrun("watch", "01aaaa")
    assert ambiguous.returncode == 2 and "ambiguous (01aaaa00000000000000000aaa, 01aaaa00000000000000000bbb)" in ambiguous.stderr
    missing = run_brightrun("watch", "01zzzz")
    assert missing.returncode == 5


def test_costs_json_keeps_a_small_cost_and_names_it_total_cost(cli, brightrun_home):
    from brightrun_cli.registry.tables import CostRecord
    from brightrun_cli.workspace import Workspace

    with Workspace.open(brightrun_home).registry.write() as tx:
        tx.add(CostRecord(cost_type="compute", amount=0.000031, billing_period="2026-12-01"))
    data = json.loads(cli("costs", "--json").stdout)
    assert data["total_cost"] == pytest.approx(0.000031) and data["groups"][0]["amount"] == pytest.approx(0.000031)


def test_hosts_add_refuses_a_hostile_ipv6_zone(cli):
    result = cli("hosts", "add", "v6", "--ssh", "u@[::1%a b;c]", "--no-check")
    assert result.exit_code == 2 and "invalid IPv6 zone" in result.stderr
    added = cli("hosts", "add", "v6", "--ssh", "u@[fe80::1%eth0]:2222", "--no-check", "--json")
    assert added.exit_code == 0 and [json.loads(added.stdout)] == [
        h for h in json.loads(cli("hosts", "list", "--json").stdout) if h["name"] == "v6"]  # the row as listed
    removed = cli("hosts", "rm", "v6", "--json")
    assert removed.exit_code == 0 and json.loads(removed.stdout) == {"name": "v6", "removed": True}
    assert [h["name"] for h in json.loads(cli("hosts", "list", "--json").stdout)] == ["local"]


def test_rsync_targets_an_ipv6_host_in_brackets(brightrun_home):
    from brightrun_cli.registry.rows import HostRow
    from brightrun_cli.registry.timeutil import utcnow
    from brightrun_cli.runners.ssh import SSHConnection
    from brightrun_cli.workspace import Workspace

    now = utcnow()
    host = HostRow(id="h", name="v6", kind="ssh", ssh_user="u", ssh_host="::1", ssh_port=22, identity_file=None, gpus=1,
                   gpu_type="cpu", python=None, workdir=None, options={}, last_check=None, last_checked_at=None,
                   created_at=now, updated_at=now)
    argv = SSHConnection(Workspace.open(brightrun_home), host).rsync_argv(["runs/x/"], "/tmp/dest", to_remote=False)
    assert argv[-2:] == ["[::1]:runs/x/", "/tmp/dest"]


def test_a_model_listed_as_name_and_version_can_be_typed_back(cli, brightrun_home):
    from test_models_cli import make_model

    make_model(brightrun_home, name="support v1", score=3, cost=1.0, age_h=2)
    newer = make_model(brightrun_home, name="support v1", score=4, cost=1.0, age_h=1, version="1.1.0")
    listed = cli("models", "list").stdout
    assert "support v1" in listed and "1.0.0" in listed
    shown = json.loads(cli("models", "show", "support v1", "--json").stdout)
    assert shown["id"] == newer.id  # a name alone: its newest version
    old = json.loads(cli("models", "show", "support v1@1.0.0", "--json").stdout)
    assert old["id"] != newer.id and old["version"] == "1.0.0"
    assert json.loads(cli("models", "show", f"support v1 v{shown['version']}", "--json").stdout)["id"] == newer.id


def test_presets_show_off_a_terminal_is_one_unwrapped_line_per_field_and_valid_toml(cli, tmp_path):
    import tomllib

    text = cli("presets", "show", "balanced").stdout
    assert all(len(line.split(" = ")) >= 2 or line.startswith("#") for line in text.splitlines())
    assert "max_grad_norm = 1.0  # >0..100: Gradient clipping norm" in text
    data = tomllib.loads(text)
    assert data["lora_rank"] == 16 and data["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
