"""`train --accelerate-config FILE`: an FSDP/DeepSpeed accelerate config passed through.

Checked before anything is created (bad file: one stderr line, exit 2, no job row), shown
by --dry-run, copied into the run dir (and shipped to SSH hosts with the spec), given to
`accelerate launch --config_file`, and read by the trainer, which refuses to run a sharded
config as something else.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from brightrun_cli.runners.accelerate import accelerate_argv
from brightrun_cli import lifecycle
from brightrun_cli.services import jobs, training
from brightrun_cli.services.hosts import add_host
from brightrun_cli.workspace import Workspace
from brightrun_cli.trainer.spec import SpecError, load_spec

from jobs_helpers import conversations
from test_hosts_local import fake_nvidia_smi
from test_trainer import result, write_run_dir

SRC = str(Path(__file__).resolve().parents[1] / "src")
FSDP2 = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
machine_rank: 0
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_state_dict_type: FULL_STATE_DICT
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def chat(cli, tmp_path) -> str:
    data = conversations(tmp_path / "chat.jsonl", 12)
    assert cli("dataset", "add", str(data), "--name", "chat", "--base-model", "builtin:tiny").exit_code == 0
    return "chat"


@pytest.fixture
def two_gpus(tmp_path, monkeypatch) -> None:
    """The local host becomes a box with two A100s (a fake nvidia-smi)."""
    fake_nvidia_smi(tmp_path, ["NVIDIA A100-SXM4-40GB, 40960", "NVIDIA A100-SXM4-40GB, 40960"], monkeypatch)


def train(cli, *args: str):
    return cli("train", "--dataset", "chat", "--preset", "tiny", *args)


def assert_nothing_created(cli, brightrun_home: Path) -> None:
    assert json.loads(cli("jobs", "list", "--json").stdout) == []
    assert not (brightrun_home / "runs").exists() or not any((brightrun_home / "runs").iterdir())


# ---------------------------------------------------------------- argv


def test_argv_passes_the_config_file_and_lets_a_sharded_type_pick_the_launcher():
    argv = accelerate_argv("/r/spec.json", num_processes=2, main_process_port=29555,
                           config_file="/r/accelerate_config.yaml", distributed_type="FSDP")
    assert argv[argv.index("--config_file") + 1] == "/r/accelerate_config.yaml"
    assert "--multi_gpu" not in argv and "--cpu" not in argv  # either would override the file's FSDP
    # brightrun's own launch values are still explicit, so they win over the file's
    for flag, value in (("--num_processes", "2"), ("--num_machines", "1"), ("--mixed_precision", "no"),
                        ("--main_process_port", "29555")):
        assert argv[argv.index(flag) + 1] == value
    assert argv[-3:] == ["-m", "brightrun_cli.trainer", "/r/spec.json"]


def test_argv_with_a_ddp_config_keeps_brightruns_mode_flag():
    argv = accelerate_argv("s.json", num_processes=2, config_file="a.yaml", distributed_type="MULTI_GPU")
    assert "--multi_gpu" in argv and argv[argv.index("--config_file") + 1] == "a.yaml"
    assert "--config_file" not in accelerate_argv("s.json")
    with pytest.raises(ValueError):
        accelerate_argv("s.json", config_file="a.yaml")


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("text, message", [
    ("distributed_type: [FSDP\n", "is not valid YAML"),
    ("- FSDP\n", "must be a mapping"),
    ("distributed_type: TPU\n", "distributed_type must be one of NO, MULTI_GPU, MULTI_CPU, FSDP, DEEPSPEED, got 'TPU'"),
    ("num_machines: 1\n", "got None"),
    ("distributed_type: FSDP\nnum_processes: 8\n", "num_processes = 8 differs from this job's 2"),
    ("distributed_type: FSDP\nnum_machines: 2\n", "num_machines = 2 differs from this job's 1"),
    ("distributed_type: FSDP\nmain_process_port: 29500\n", "main_process_port = 29500 differs from this job's own choice"),
    ("distributed_type: FSDP\nmixed_precision: fp16\n", "mixed_precision = fp16 differs"),
    ("distributed_type: 'NO'\n", "distributed_type NO runs one process, this job launches 2"),
    ("distributed_type: NO\n", "got False (quote it: 'NO'; YAML reads a bare NO as false)"),
    ("distributed_type: FSDP\nfsdp_config:\n  fsdp_use_orig_params: false\n", "needs fsdp_use_orig_params: true"),
    ("distributed_type: DEEPSPEED\ndeepspeed_config:\n  deepspeed_config_file: ds.json\n", "deepspeed_config_file names a file"),
    ("distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 3\n", "zero3_save_16bit_model: true"),
    ("distributed_type: DEEPSPEED\n", "asks for DeepSpeed, which is not installed here"),
])
def test_a_bad_config_is_one_line_exit_2_and_creates_nothing(cli, chat, two_gpus, tmp_path, brightrun_home, text, message):
    pytest.importorskip("yaml")
    if "not installed" in message and __import__("importlib").util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    config = write(tmp_path / "accel.yaml", text)
    res = train(cli, "--accelerate-config", str(config), "--detach")
    assert res.exit_code == 2, res.stdout
    assert message in res.stderr
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr
    assert_nothing_created(cli, brightrun_home)


def test_a_missing_file_and_fsdp_on_a_cpu_host_are_refused(cli, chat, tmp_path, brightrun_home):
    res = train(cli, "--accelerate-config", str(tmp_path / "nope.yaml"))
    assert res.exit_code == 2 and "is not a file" in res.stderr
    # This machine has no GPU: accelerate would quietly run DDP, so brightrun says so instead.
    res = train(cli, "--accelerate-config", str(write(tmp_path / "fsdp.yaml", FSDP2)))
    assert res.exit_code == 2
    assert "host 'local' has no GPU and accelerate shards only on GPUs" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert_nothing_created(cli, brightrun_home)


# ---------------------------------------------------------------- dry run, submit, retry


def test_dry_run_shows_the_config_in_the_spec_and_the_argv(cli, chat, two_gpus, tmp_path, brightrun_home):
    config = write(tmp_path / "fsdp.yaml", FSDP2)
    res = train(cli, "--accelerate-config", str(config), "--dry-run", "--json")
    assert res.exit_code == 0, res.stderr
    plan = json.loads(res.stdout)
    run_dir = brightrun_home / "runs" / plan["job_id"]
    assert plan["accelerate_config"] == {"source": str(config), "file": "accelerate_config.yaml", "distributed_type": "FSDP"}
    assert plan["spec"]["accelerate_config"] == "accelerate_config.yaml"
    argv = plan["argv"]
    assert argv[argv.index("--config_file") + 1] == str(run_dir / "accelerate_config.yaml")
    assert "--multi_gpu" not in argv and argv[argv.index("--num_processes") + 1] == "2"
    assert_nothing_created(cli, brightrun_home)

    human = train(cli, "--accelerate-config", str(config), "--dry-run")
    assert human.exit_code == 0, human.stderr
    assert f"accelerate config {config} (FSDP), copied into the run dir as accelerate_config.yaml" in human.stdout
    assert "--config_file" in human.stdout and '"accelerate_config": "accelerate_config.yaml"' in human.stdout


def test_submit_copies_the_config_into_the_run_dir_and_retry_carries_it(chat, two_gpus, tmp_path, brightrun_home, monkeypatch):
    from brightrun_cli.services import queue

    monkeypatch.setattr(queue, "kick", lambda ws, **_: None)  # queue it only: nothing starts
    ws = Workspace.open()
    config = write(tmp_path / "ds.json", json.dumps({"distributed_type": "MULTI_GPU", "num_processes": 2}))
    plan = training.plan_training(ws, training.TrainRequest(dataset="chat", preset="tiny", accelerate_config=config))
    job = training.submit(ws, plan)
    copied = brightrun_home / "runs" / job.id / "accelerate_config.json"  # .json stays JSON for accelerate
    assert copied.read_text() == config.read_text()
    assert job.spec["accelerate_config"] == "accelerate_config.json"

    with ws.registry.write() as session:
        lifecycle.transition(session, job.id, lifecycle.CANCELLED)
    again = jobs.retry_job(ws, job.id)
    assert (brightrun_home / "runs" / again.id / "accelerate_config.json").read_text() == config.read_text()

    copied.unlink()  # the cancelled job's run dir lost it: a retry could not launch as configured
    with pytest.raises(jobs.ConflictError, match="accelerate config"):
        jobs.retry_job(ws, job.id)


def test_ssh_runner_ships_the_config_and_names_it_next_to_the_spec(tmp_path):
    from brightrun_cli.runners.base import LaunchRequest
    from brightrun_cli.runners.ssh import SSHRunner, run_inputs

    ws = Workspace.open()
    host = add_host(ws, "gpu1", "me@gpu1", gpus=2, gpu_type="A100-40GB", connect=False)
    run_dir = tmp_path / "run"
    write_run_dir(run_dir, accelerate_config="accelerate_config.yaml")
    write(run_dir / "accelerate_config.yaml", FSDP2)
    request = LaunchRequest(job_id="01jz0000000000000000000000", run_dir=run_dir, spec_path=run_dir / "spec.json",
                            num_processes=2, accelerate_config="accelerate_config.yaml", distributed_type="FSDP")
    runner = SSHRunner(ws, [host])
    assert "accelerate_config.yaml" in run_inputs(request)
    remote = shlex.split(runner.launch_argv(request)[-1])  # the words the remote shell runs
    assert remote[remote.index("--config_file") + 1] == "accelerate_config.yaml" and "--multi_gpu" not in remote


# ---------------------------------------------------------------- the trainer side


def test_the_spec_reads_the_config_next_to_it(tmp_path):
    spec_path = write_run_dir(tmp_path, accelerate_config="accelerate_config.yaml")
    with pytest.raises(SpecError, match="accelerate_config 'accelerate_config.yaml' does not exist"):
        load_spec(spec_path)
    write(tmp_path / "accelerate_config.yaml", FSDP2)
    config = load_spec(spec_path).accelerate_config
    assert config.distributed_type == "FSDP" and config.sharded and config.settings["fsdp_config"]["fsdp_version"] == 2


def run_trainer(spec_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "brightrun_cli.trainer", str(spec_path)], capture_output=True, text=True,
                          env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}, timeout=300)


@pytest.mark.skipif(__import__("importlib").util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_trainer_without_deepspeed_fails_fast_with_exit_2(tmp_path):
    spec_path = write_run_dir(tmp_path, accelerate_config="accelerate_config.yaml")
    write(tmp_path / "accelerate_config.yaml", "distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 2\n")
    proc = run_trainer(spec_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    res = result(tmp_path)
    assert res["status"] == "failed" and res["exit_code"] == 2 and res["steps"] == 0
    assert "asks for DeepSpeed, which is not installed on this host: run 'pip install deepspeed' there" in res["error"]


def test_trainer_refuses_to_run_an_fsdp_config_as_something_else(tmp_path):
    # Without `accelerate launch --config_file` (or on a CPU) accelerate would silently not shard.
    spec_path = write_run_dir(tmp_path, accelerate_config="accelerate_config.yaml")
    write(tmp_path / "accelerate_config.yaml", FSDP2)
    proc = run_trainer(spec_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    res = result(tmp_path)
    assert res["exit_code"] == 2 and res["steps"] == 0
    assert "asks for FSDP, but accelerate set up NO here" in res["error"]
