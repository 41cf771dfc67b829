"""`brightrun hosts`: validation (fast) and add/check against a real sshd (slow)."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brightrun_cli.errors import ConflictError, UsageError
from brightrun_cli.services import hosts as hosts_service
from brightrun_cli.workspace import Workspace
from sshd import requires_sshd, sshd  # noqa: F401  (fixture)

PY = __import__("sys").executable


def _hosts_json(cli) -> list[dict]:
    result = cli("hosts", "list", "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


# -- validation (fast) ------------------------------------------------------------------


@pytest.mark.parametrize(
    "target,expected",
    [
        ("alice@gpu1.example:2222", ("alice", "gpu1.example", 2222)),
        ("alice@gpu1", ("alice", "gpu1", None)),
        ("gpu1", (None, "gpu1", None)),
        ("bob@10.0.0.7:22", ("bob", "10.0.0.7", 22)),
        ("bob@[::1]:2200", ("bob", "::1", 2200)),
    ],
)
def test_ssh_targets_are_parsed(target, expected):
    assert hosts_service.parse_ssh_target(target) == expected


@pytest.mark.parametrize(
    "target",
    ["alice@-oProxyCommand=touch x", "alice@gpu1;touch x", "al ice@gpu1", "alice@gpu1:99999", "alice@$(id)", "a@b@c", "@gpu1", ""],
)
def test_bad_ssh_targets_are_refused(target):
    with pytest.raises(UsageError):
        hosts_service.parse_ssh_target(target)


@pytest.mark.parametrize("name", ["gpu;touch x", "$(touch x)", "-rf", "a b", "x" * 64, "a/b", "a:b"])
def test_bad_host_names_are_refused(name):
    with pytest.raises(UsageError):
        hosts_service.validate_name(name)


def test_workdir_and_python_are_normalised_or_refused():
    assert hosts_service.normalize_workdir("~/runs/br") == "runs/br"
    assert hosts_service.normalize_workdir("/data/brightrun/") == "/data/brightrun"
    assert hosts_service.normalize_workdir(None) == "brightrun"
    for bad in ("/", "../x", "~/a/../../etc", "a b", "$(touch x)", "x;y", "/data/`id`"):
        with pytest.raises(UsageError):
            hosts_service.normalize_workdir(bad)
    assert hosts_service.normalize_python("~/venv/bin/python") == "~/venv/bin/python"
    assert hosts_service.normalize_python("python3.11") == "python3.11"
    for bad in ("venv/bin/python", "python; rm -rf ~", "-c", "/opt/$(id)/python"):
        with pytest.raises(UsageError):
            hosts_service.normalize_python(bad)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(), max_size=5))
def test_every_remote_word_reaches_the_remote_shell_verbatim(words):
    """The remote shell splits ssh's command string back into exactly our words."""
    from brightrun_cli.registry.tables import Host
    from brightrun_cli.runners.ssh import SSHConnection

    words = [w.replace("\0", "") for w in words]
    ws = Workspace.open()
    conn = SSHConnection(ws, Host(name="h", kind="ssh", ssh_host="gpu1"))
    argv = conn.script_argv("echo \"$@\"", *words)
    assert shlex.split(argv[-1]) == ["sh", "-c", 'echo "$@"', "sh", *words]
    assert argv[argv.index("--") + 1] == "gpu1"


def test_host_key_checking_is_never_disabled():
    from brightrun_cli.registry.tables import Host
    from brightrun_cli.runners.ssh import SSHConnection

    ws = Workspace.open()
    plain = SSHConnection(ws, Host(name="h", kind="ssh", ssh_host="gpu1")).ssh_options()
    opted = SSHConnection(ws, Host(name="h", kind="ssh", ssh_host="gpu1", options={"accept_new_host_key": True})).ssh_options()
    assert not any("StrictHostKeyChecking" in o for o in plain)
    assert "StrictHostKeyChecking=accept-new" in opted
    assert not any(o.lower().endswith("stricthostkeychecking=no") for o in plain + opted)


def test_add_without_check_list_and_rm(cli, tmp_path):
    key = tmp_path / "id_test"
    key.write_text("not read by brightrun\n")
    result = cli("hosts", "add", "gpu1", "--ssh", "alice@gpu1.example:2222", "--identity", str(key),
                 "--gpus", "2", "--workdir", "~/br", "--no-check")
    assert result.exit_code == 0, result.stderr
    rows = _hosts_json(cli)
    assert [r["name"] for r in rows] == ["local", "gpu1"]
    gpu1 = rows[1]
    assert (gpu1["ssh_user"], gpu1["ssh_host"], gpu1["ssh_port"], gpu1["gpus"], gpu1["workdir"]) == ("alice", "gpu1.example", 2222, 2, "br")
    assert gpu1["identity_file"] == str(key)  # a path; the key itself is never stored
    assert "not read" not in json.dumps(rows)

    dup = cli("hosts", "add", "gpu1", "--ssh", "alice@other", "--no-check")
    assert dup.exit_code == 2 and "already exists" in dup.stderr
    assert cli("hosts", "rm", "local").exit_code == 2
    assert cli("hosts", "rm", "nope").exit_code == 2
    assert cli("hosts", "rm", "gpu1").exit_code == 0
    assert [r["name"] for r in _hosts_json(cli)] == ["local"]


def test_local_is_reserved(cli):
    result = cli("hosts", "add", "local", "--ssh", "me@localhost", "--no-check")
    assert result.exit_code == 2 and "reserved" in result.stderr
    with pytest.raises(ConflictError):
        hosts_service.validate_name("local")


def test_missing_identity_file_is_refused_and_nothing_stored(cli, tmp_path):
    result = cli("hosts", "add", "gpu1", "--ssh", "a@gpu1", "--identity", str(tmp_path / "nope"), "--no-check")
    assert result.exit_code == 2 and "identity file" in result.stderr
    assert [r["name"] for r in _hosts_json(cli)] == ["local"]


# -- against a real sshd (slow) -------------------------------------------------------------


@pytest.mark.slow
@requires_sshd
def test_add_and_check_a_real_host(cli, sshd):  # noqa: F811
    added = cli("hosts", "add", "box", "--ssh", sshd.target, "--python", PY, "--workdir", "~/brightrun-test")
    assert added.exit_code == 0, added.stderr
    result = cli("hosts", "check", "box", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["reachable"] and report["problems"] == []
    assert report["python_version"].startswith("3.")
    assert all(report["packages"][p] for p in ("torch", "transformers", "peft", "accelerate"))
    assert report["trainer_importable"] is True
    assert report["disk_free_gb"] > 0
    stored = [h for h in _hosts_json(cli) if h["name"] == "box"][0]
    assert stored["last_check"]["ok"] is True and stored["last_checked_at"]


@pytest.mark.slow
@requires_sshd
def test_check_reports_missing_python_with_one_clear_line(cli, sshd):  # noqa: F811
    assert cli("hosts", "add", "box", "--ssh", sshd.target, "--python", "/nonexistent/python3").exit_code == 0
    result = cli("hosts", "check", "box")
    assert result.exit_code == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1 and "python '/nonexistent/python3' not found" in problems[0] and "--python" in problems[0]


@pytest.mark.slow
@requires_sshd
def test_closed_port_wrong_key_and_unknown_host_key_are_clear_errors(cli, sshd, tmp_path):  # noqa: F811
    from brightrun_cli.runners.ssh import SSHConnection
    from sshd import free_port

    closed = cli("hosts", "add", "down", "--ssh", f"{sshd.user}@127.0.0.1:{free_port()}")
    assert closed.exit_code == 1
    assert "unreachable" in closed.stderr and "Connection refused" in closed.stderr
    assert len(closed.stderr.strip().splitlines()) == 1

    # Unknown host key: refused by default, trusted only with the explicit opt-in.
    sshd.known_hosts.write_text("")
    unknown = cli("hosts", "add", "new", "--ssh", sshd.target)
    assert unknown.exit_code == 1 and "host key" in unknown.stderr and "unknown" in unknown.stderr
    accepted = cli("hosts", "add", "new", "--ssh", sshd.target, "--accept-new-host-key")
    assert accepted.exit_code == 0, accepted.stderr
    assert f"[127.0.0.1]:{sshd.port}" in sshd.known_hosts.read_text()

    # Wrong key: the server authorises only a key that neither --identity nor the config offers.
    for key in ("other", "wrong"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / key)], check=True)
    (sshd.root / "authorized_keys").write_text((tmp_path / "other.pub").read_text())
    refused = cli("hosts", "add", "locked", "--ssh", sshd.target, "--identity", str(tmp_path / "wrong"))
    assert refused.exit_code == 1 and "authentication refused" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    names = [h["name"] for h in _hosts_json(cli)]
    assert names == ["local", "new"]  # nothing half-stored for the failures
    ws = Workspace.open()
    SSHConnection(ws, hosts_service.get_host(ws, "new")).close_master()  # else the live master is reused
    check = cli("hosts", "check", "new")  # the stored host now fails auth: one line says so
    assert check.exit_code == 1 and "authentication refused" in check.stderr


@pytest.mark.slow
@requires_sshd
def test_shell_metacharacters_never_run_remotely(cli, sshd, tmp_path):  # noqa: F811
    from brightrun_cli.runners.ssh import SSHConnection

    canary = tmp_path / "pwned"
    evil = [f"$(touch {canary})", f"`touch {canary}`", f"; touch {canary}", f"' ; touch {canary} '", f"\"$(touch {canary})\"", f"| touch {canary}"]
    for name in evil:
        assert cli("hosts", "add", name, "--ssh", sshd.target, "--no-check").exit_code == 2
        assert cli("hosts", "add", "ok", "--ssh", sshd.target, "--workdir", name, "--no-check").exit_code == 2
        assert cli("hosts", "add", "ok", "--ssh", f"{sshd.user}@{name}", "--no-check").exit_code == 2
    assert cli("hosts", "add", "box", "--ssh", sshd.target).exit_code == 0
    ws = Workspace.open()
    conn = SSHConnection(ws, hosts_service.get_host(ws, "box"))
    out = conn.run_script('for a in "$@"; do printf "%s\\n" "$a"; done', *evil)
    assert out.stdout.decode().splitlines() == evil  # arrived as data, verbatim
    assert not canary.exists()


def test_control_sockets_live_in_a_short_private_dir(tmp_path):
    import os
    import stat

    from brightrun_cli.runners.ssh import SOCKET_PATH_MAX, _control_dir

    for home in (tmp_path / "h", tmp_path / ("long" * 30)):
        directory = _control_dir(home)
        assert len(str(directory)) + 1 + 23 + 17 <= SOCKET_PATH_MAX + 4  # cm-<20 hex> plus ssh's temp suffix
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


def test_gpu_slots_and_type_are_validated(cli):
    ok = cli("hosts", "add", "g8", "--ssh", "a@g8", "--gpus", "8", "--gpu-type", "h100", "--no-check")
    assert ok.exit_code == 0, ok.stderr
    row = [h for h in _hosts_json(cli) if h["name"] == "g8"][0]
    assert (row["gpus"], row["gpu_type"]) == (8, "H100")  # the catalog's name, for estimates and costs
    for args in (("--gpu-type", "nonsense"), ("--gpus", "0")):
        bad = cli("hosts", "add", "bad", "--ssh", "a@bad", *args, "--no-check")
        assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert [h["name"] for h in _hosts_json(cli)] == ["local", "g8"]


def test_a_multi_node_job_ends_when_its_workers_have_too_and_stragglers_are_stopped(monkeypatch):
    """Rank 0's exit decides the job, but its worker nodes are still tearing down then: poll
    waits for them (a grace), and stops any still running after it instead of orphaning them."""
    import time

    from brightrun_cli.registry.ids import new_id
    from brightrun_cli.registry.tables import Host
    from brightrun_cli.runners import ssh

    ws = Workspace.open()
    runner = ssh.SSHRunner(ws, [Host(name=f"n{i}", kind="ssh", ssh_host="example.invalid") for i in range(2)])
    job_id = new_id()
    handle = f"ssh:{job_id}:tok:n0=100,n1=200"
    statuses = {0: "exit 0", 1: "running"}
    monkeypatch.setattr(runner, "_probe", lambda h, rank, files: (statuses[rank], {}))
    stopped = []
    monkeypatch.setattr(runner, "stop", lambda h, grace_s=30.0: stopped.append(h))
    monkeypatch.setattr(ssh, "WORKER_EXIT_GRACE_S", 0.3)
    assert runner.poll(handle) is None  # rank 0 done, rank 1 still exiting
    statuses[1] = "exit 0"
    assert runner.poll(handle) == 0 and stopped == []
    statuses[1] = "running"  # next job: a worker that never exits
    handle2 = handle.replace("tok", "tok2")
    assert runner.poll(handle2) is None
    time.sleep(0.35)
    assert runner.poll(handle2) == 0 and stopped == [handle2]
