"""What brightrun submits to Slurm and how it reads Slurm's answers, without a cluster:
the sbatch argv and script, the per-node rank/address logic, the strict host settings,
and the state mapping. (tests/test_slurm_runner.py runs all of it on a real cluster.)"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from brightrun_cli.errors import EXIT_USAGE, OperationError, UsageError
from brightrun_cli.registry.rows import HostRow
from brightrun_cli.runners.base import LaunchRequest
from brightrun_cli.runners.slurm import (
    SlurmUnavailable,
    _read_record,
    _SlurmHandle,
    _split_probe,
    expand_hostlist,
    map_state,
    parse_sacct,
    parse_scontrol,
)
from brightrun_cli.runners.slurm_batch import SlurmSettings, batch_script, sbatch_argv, slurm_seconds, task_command

JOB = "01jz0000000000000000000000"


def _request(**kw) -> LaunchRequest:
    run = Path("/nonexistent/run")
    return LaunchRequest(job_id=JOB, run_dir=run, spec_path=run / "spec.json", **kw)


def _host(**options) -> HostRow:
    from brightrun_cli.services.hosts import unsaved_host

    return unsaved_host(dict(name="cluster", kind="slurm", ssh_user=None, ssh_host=None, ssh_port=None, identity_file=None,
                             gpus=1, gpu_type="cpu", python="python3", workdir="brightrun", options=options))


# -- sbatch argv and script -----------------------------------------------------------------

def test_sbatch_argv_asks_for_nodes_one_task_each_gpus_requeue_and_the_time_limit_warning():
    settings = SlurmSettings.validated(partition="gpu", account="proj1", qos="normal", time="2:00:00",
                                       gpus_per_node=4, nodes_max=4, sbatch_args=["--constraint=a100&ib", "--exclusive"])
    argv = sbatch_argv(settings, _request(num_processes=4, nodes=2), gpu=True)
    assert argv[:2] == ["sbatch", "--parsable"]
    for word in ("--nodes=2", "--ntasks-per-node=1", "--partition=gpu", "--account=proj1", "--qos=normal",
                 "--time=2:00:00", "--gpus-per-node=4", "--requeue", "--signal=B:TERM@300", "--output=launcher.log",
                 "--open-mode=append"):
        assert word in argv
    # The user's own options come after brightrun's, each one word, and the script last.
    assert argv[-3:] == ["--constraint=a100&ib", "--exclusive", "sbatch.sh"]


def test_gres_replaces_gpus_per_node_and_a_cpu_host_asks_for_no_gpu():
    gres = SlurmSettings.validated(gres="gpu:a100:4")
    argv = sbatch_argv(gres, _request(num_processes=4), gpu=True)
    assert "--gres=gpu:a100:4" in argv and not any(w.startswith("--gpus") for w in argv)
    cpu = sbatch_argv(SlurmSettings(), _request(), gpu=False)
    assert not any(w.startswith(("--gpus", "--gres", "--partition", "--time")) for w in cpu)


def test_more_nodes_than_the_host_allows_is_refused():
    with pytest.raises(UsageError, match="1 to 2 nodes, not 3"):
        sbatch_argv(SlurmSettings(nodes_max=2), _request(nodes=3), gpu=False)


@pytest.mark.parametrize(("time", "lead"), [("1", 30), ("3", 90), ("10", 300), ("1-00:00:00", 300), (None, 300)])
def test_the_time_limit_warning_leaves_time_to_checkpoint(time, lead):
    assert SlurmSettings.validated(time=time).signal_lead_s == lead


def test_one_process_runs_the_trainer_itself_and_the_script_is_valid_sh():
    settings = SlurmSettings.validated(time="30")
    script = batch_script(settings, _request(), python="/opt/venv/bin/python", gpu=False, code_version="abcdef0123456789")
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    task = shlex.split(srun)[shlex.split(srun).index("-c") + 1]
    assert task == "exec /opt/venv/bin/python -m brightrun_cli.trainer spec.json"
    assert "ACCELERATE_USE_CPU=true; export ACCELERATE_USE_CPU" in script
    assert "cd ../../code/abcdef0123456789" in script
    assert shlex.join(sbatch_argv(settings, _request(), gpu=False)) in script  # how it was submitted


def _run_task(task: str, node_id: int) -> list[str]:
    env = {**os.environ, "SLURM_NODEID": str(node_id), "BRIGHTRUN_MAIN_ADDR": "10.1.2.3", "BRIGHTRUN_MAIN_PORT": "31234",
           "HOME": "/home/me"}
    return subprocess.run(["sh", "-c", task], env=env, capture_output=True, text=True, check=True).stdout.split()


def test_each_node_launches_with_its_own_rank_and_the_first_nodes_address():
    # The task text is what srun runs on every node; "echo" stands in for Python to show its argv.
    task = task_command(_request(num_processes=2, nodes=3), python="echo", gpu=True)
    for rank in (0, 2):
        words = _run_task(task, rank)
        assert words[:2] == ["-m", "accelerate.commands.launch"] and words[-3:] == ["-m", "brightrun_cli.trainer", "spec.json"]
        option = dict(zip(words, words[1:]))
        assert option["--machine_rank"] == str(rank)
        assert (option["--num_machines"], option["--num_processes"]) == ("3", "6")
        assert (option["--main_process_ip"], option["--main_process_port"]) == ("10.1.2.3", "31234")
        assert "--multi_gpu" in words


def test_one_node_with_several_gpus_gets_a_port_of_its_own_job():
    words = _run_task(task_command(_request(num_processes=4), python="echo", gpu=True), 0)
    option = dict(zip(words, words[1:]))
    assert option["--main_process_port"] == "31234" and "--machine_rank" not in option


def test_a_python_below_home_is_the_compute_nodes_home():
    task = task_command(_request(), python="~/venv/bin/python", gpu=False)
    assert task.startswith('exec "$HOME"/venv/bin/python -m brightrun_cli.trainer')


def test_the_batch_shell_finds_the_main_address_from_the_node_list(tmp_path):
    """Run the script's rendezvous lines with stand-ins for scontrol: the first host of the
    node list, at its NodeAddr; the port from the Slurm job id."""
    script = batch_script(SlurmSettings(nodes_max=2), _request(nodes=2), python="python3", gpu=False, code_version="x")
    lines = script.splitlines()
    begin = next(i for i, line in enumerate(lines) if line.startswith("first="))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text('#!/bin/sh\n'
                                   'case "$2" in hostnames) printf "gpu07\\ngpu08\\n";; '
                                   'node) printf "NodeName=%s Arch=x86_64\\n   NodeAddr=10.9.8.7 NodeHostName=%s\\n" "$3" "$3";; esac\n')
    os.chmod(fake / "scontrol", 0o755)
    probe = "\n".join(lines[begin:begin + 4]) + '\necho "$BRIGHTRUN_MAIN_ADDR $BRIGHTRUN_MAIN_PORT"\n'
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "20005"}
    out = subprocess.run(["sh", "-c", probe], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["10.9.8.7", str(29500 + 20005 % 20000)]


# -- strict host settings ---------------------------------------------------------------------

HOSTILE = [
    ({"partition": "gpu;rm -rf ~"}, "--partition"),
    ({"partition": "--qos=high"}, "--partition"),
    ({"partition": "a b"}, "--partition"),
    ({"account": "$(id)"}, "--account"),
    ({"account": "proj\n#SBATCH --wrap=id"}, "--account"),
    ({"qos": "`id`"}, "--qos"),
    ({"time": "10; id"}, "--time"),
    ({"time": "0"}, "--time"),
    ({"time": "1:99:00"}, "--time"),
    ({"gres": "gpu:4 --wrap=id"}, "--gres"),
    ({"gpus_per_node": "4"}, "--gpus-per-node"),
    ({"nodes_max": 0}, "--nodes-max"),
    ({"sbatch_args": ["--wrap=id"]}, "--wrap"),
    ({"sbatch_args": ["--output=/etc/passwd"]}, "--output"),
    ({"sbatch_args": ["--out=x"]}, "--output"),  # sbatch takes prefixes of long options
    ({"sbatch_args": ["--parsable"]}, "--parsable"),
    ({"sbatch_args": ["-p", "other"]}, "--sbatch-arg"),
    ({"sbatch_args": ["--constraint a100"]}, "--sbatch-arg"),
    ({"sbatch_args": ["--comment=$(id)"]}, "--sbatch-arg"),
    ({"sbatch_args": ["--mail-user=a@b;id"]}, "--sbatch-arg"),
    ({"sbatch_args": ["--comment='x'"]}, "--sbatch-arg"),
]


@pytest.mark.parametrize(("fields", "flag"), HOSTILE)
def test_hostile_settings_are_refused_naming_the_flag(fields, flag):
    with pytest.raises(UsageError) as refused:
        SlurmSettings.validated(**fields)
    assert refused.value.exit_code == EXIT_USAGE
    assert flag in refused.value.message


@pytest.mark.parametrize(("fields", "flag"), HOSTILE[:6])
def test_a_hand_edited_registry_row_is_checked_again(fields, flag):
    with pytest.raises(UsageError, match=flag):
        SlurmSettings.from_host(_host(**fields))


def test_usual_settings_pass():
    settings = SlurmSettings.validated(partition="gpu-a100", account="proj_1.x", qos="high", time="2-12:00:00",
                                       gres="gpu:a100:8", nodes_max=16,
                                       sbatch_args=["--constraint=[rack1|rack2]", "--cpus-per-task=32", "--mem=0",
                                                    "--exclusive", "--mail-user=me@example.org"])
    assert settings.time_s == (2 * 24 + 12) * 3600
    assert SlurmSettings.from_host(_host(**settings.to_options(), login="local")) == settings


def test_new_slurm_host_keeps_the_login_in_the_ssh_columns(brightrun_home):
    from brightrun_cli.services.slurm_hosts import new_slurm_host
    from brightrun_cli.workspace import Workspace

    ws = Workspace.open()
    host = new_slurm_host(ws, "hpc", "me@login.hpc.example.org:2222", partition="gpu", time_limit="1-00:00:00",
                          gpus_per_node=4, gpu_type="A100-80GB", nodes_max=2, workdir="/scratch/me/brightrun",
                          python="~/venv/bin/python", sbatch_args=["--exclusive"])
    assert (host.kind, host.ssh_user, host.ssh_host, host.ssh_port) == ("slurm", "me", "login.hpc.example.org", 2222)
    assert (host.gpus, host.gpu_type, host.workdir, host.python) == (4, "A100-80GB", "/scratch/me/brightrun", "~/venv/bin/python")
    assert SlurmSettings.from_host(host).sbatch_args == ("--exclusive",)
    local = new_slurm_host(ws, "here", "local")
    assert local.ssh_host is None and local.gpu_type == "cpu" and local.options == {"login": "local", "nodes_max": 1}
    for login in ("me@login;id", "-oProxyCommand=id", "a b"):
        with pytest.raises(UsageError, match="--slurm"):
            new_slurm_host(ws, "bad", login)
    with pytest.raises(UsageError, match="--gpu-type"):
        new_slurm_host(ws, "bad", "local", gpus_per_node=4)
    with pytest.raises(UsageError, match="--workdir"):
        new_slurm_host(ws, "bad", "local", workdir="/scratch/$(id)")


# -- Slurm's answers -------------------------------------------------------------------------

SCONTROL_LINE = ("JobId=12 JobName=brightrun-x UserId=root(0) GroupId=root(0) Priority=1 JobState=PENDING Reason=BeginTime "
                 "Dependency=(null) Requeue=1 Restarts=1 BatchFlag=1 ExitCode=0:0 RunTime=00:00:00 TimeLimit=00:01:00 "
                 "NodeList=(null) AllocNode:Sid=localhost:4744 NtasksPerN:B:S:C=1:0:*:* Socks/Node=*")


def test_scontrol_and_sacct_records():
    record = parse_scontrol(SCONTROL_LINE)
    assert (record.state, record.reason, record.restarts, record.exit_code, record.nodes) == ("PENDING", "BeginTime", 1, 0, "(null)")
    cancelled = parse_sacct("CANCELLED by 0|0:15|n[1-2]", "sacct")
    assert (cancelled.state, cancelled.exit_code, cancelled.nodes) == ("CANCELLED", -15, "n[1-2]")


def test_a_probe_asks_the_controller_then_the_accounting():
    out = (b"scontrol 1 slurm_load_jobs error: Invalid job id specified\n"
           b"sacct 1 Slurm accounting storage is disabled\n"
           b"jobcomp 0 COMPLETED|0:0|n1\n"
           b"exit_code 0\ntime_left \nstop_requested 0\nfiles\nmetrics.jsonl 3\n{}\n")
    lines, rest, markers = _split_probe(out)
    assert markers == {"exit_code": "0", "time_left": "", "stop_requested": "0"} and rest == b"metrics.jsonl 3\n{}\n"
    record = _read_record(lines, "12")
    assert (record.source, record.state) == ("jobcomp", "COMPLETED")
    assert _read_record(["scontrol 0 " + SCONTROL_LINE], "12").state == "PENDING"
    assert _read_record(["scontrol 1 slurm_load_jobs error: Invalid job id specified", "sacct 1 disabled",
                         "jobcomp 1 disabled"], "12") is None
    with pytest.raises(SlurmUnavailable):
        _read_record(["scontrol 1 slurm_load_jobs error: Unable to contact slurm controller (connect failure)"], "12")
    with pytest.raises(OperationError, match="PATH"):
        _read_record(["scontrol 127 sh: 1: scontrol: not found"], "12")


def _record(state: str, reason: str = "None", exit_code: int | None = 0, restarts: int = 0):
    return parse_scontrol(f"JobId=7 JobState={state} Reason={reason} Restarts={restarts} "
                          f"ExitCode={'0:0' if exit_code is None else (f'0:{-exit_code}' if exit_code < 0 else f'{exit_code}:0')} NodeList=n[1-2]")


@pytest.mark.parametrize(("state", "status", "reason"), [
    ("PENDING", "queued", "Resources"),
    ("REQUEUED", "queued", "requeued"),
    ("REQUEUE_HOLD", "queued", "requeued and held: release it with 'scontrol release'"),
    ("CONFIGURING", "running", None),
    ("RUNNING", "running", None),
    ("COMPLETING", "running", None),
    ("SUSPENDED", "running", "suspended"),
    ("COMPLETED", "completed", None),
    ("TIMEOUT", "failed", "time limit"),
    ("NODE_FAIL", "failed", "node failure"),
    ("OUT_OF_MEMORY", "failed", "out of memory"),
    ("PREEMPTED", "failed", "preempted"),
    ("BOOT_FAIL", "failed", "node boot failure"),
    ("DEADLINE", "failed", "deadline"),
])
def test_slurm_states_map_to_brightrun_statuses(state, status, reason):
    mapped = map_state("7", _record(state, "Resources"), trainer_exit=None)
    assert (mapped.state, mapped.status, mapped.reason) == (state, status, reason)
    assert mapped.nodes == ["n1", "n2"]
    assert (mapped.poll_code is None) == (status in ("queued", "running"))


def test_a_requeued_job_waits_again_and_its_old_exit_status_is_not_its_end():
    mapped = map_state("7", _record("PENDING", "BeginTime", restarts=1), trainer_exit=75)
    assert (mapped.status, mapped.reason, mapped.restarts, mapped.poll_code) == ("queued", "BeginTime", 1, None)


def test_how_a_failed_job_ended():
    stopped = _record("FAILED", "NonZeroExitCode", exit_code=75)
    warning = map_state("7", stopped, trainer_exit=75, time_left="0:40", lead_s=50)
    assert (warning.status, warning.reason, warning.poll_code) == ("failed", "time limit", 75)
    early = map_state("7", stopped, trainer_exit=75, time_left="1:00:00", lead_s=300)
    assert early.reason == "stopped by SIGTERM after saving a checkpoint"
    assert map_state("7", _record("FAILED", exit_code=2), trainer_exit=2).reason == "invalid spec or inputs"
    killed = map_state("7", _record("FAILED", "NonZeroExitCode", exit_code=-9), trainer_exit=None)
    assert (killed.reason, killed.poll_code) == ("killed by signal 9", -9)


def test_cancelled_says_whether_brightrun_asked():
    ours = map_state("7", _record("CANCELLED", exit_code=75), trainer_exit=75, stop_requested=True)
    assert (ours.status, ours.reason, ours.poll_code) == ("cancelled", "cancelled", 75)
    theirs = map_state("7", _record("CANCELLED", exit_code=None), trainer_exit=None)
    assert theirs.status == "cancelled" and "scancel" in theirs.reason and theirs.poll_code == 1


def test_a_job_slurm_forgot_ends_by_its_exit_status():
    assert map_state("7", None, trainer_exit=0).status == "completed"
    assert map_state("7", None, trainer_exit=1).status == "failed"
    lost = map_state("7", None, trainer_exit=None)
    assert lost.status == "failed" and "no record" in lost.reason


@pytest.mark.parametrize(("text", "hosts"), [
    ("n1", ["n1"]),
    ("n[1-2]", ["n1", "n2"]),
    ("gpu[07-09,12],login1", ["gpu07", "gpu08", "gpu09", "gpu12", "login1"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("(null)", []),
    ("", []),
])
def test_node_lists(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize(("text", "seconds"), [
    ("5", 300), ("0:45", 45), ("1:00:00", 3600), ("2-00:00:00", 172800), ("1-12", 129600), ("1-0:30", 88200),
    ("UNLIMITED", None),
])
def test_slurm_time_syntax(text, seconds):
    assert slurm_seconds(text) == seconds


@pytest.mark.parametrize("text", ["slurm:12", "slurm:x:01jz0000000000000000000000", "ssh:12:01jz0000000000000000000000",
                                  "slurm:12:../../etc"])
def test_bad_handles_are_refused(text):
    with pytest.raises(UsageError):
        _SlurmHandle.parse(text)
