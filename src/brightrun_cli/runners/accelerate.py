"""The exact command line that starts the trainer: `accelerate launch` for several
processes, the trainer itself for one.

One process needs no launcher: for a single process `accelerate launch` only sets a few
environment variables and runs the same `python -m brightrun_cli.trainer` command, but
its own interpreter imports torch and accelerate first (1.3 s on a quick machine, 3 to
5 s on a loaded 2-core one) before the trainer imports them again. The trainer builds
its `Accelerator` with the device and precision from the spec, so the result is the
same; `trainer_command` passes the one variable that matters (ACCELERATE_USE_CPU). A job
with an accelerate config file always goes through the launcher, which is what reads it.

Every value accelerate would otherwise take from a config file or default with a
warning is passed explicitly, so a machine with no `accelerate config` neither prompts
nor warns. Notes on the forms chosen:

- Several processes use `--multi_gpu`: on a host without CUDA that form starts
  `num_processes` workers with the gloo backend (real CPU DDP). `--cpu --num_processes N`
  does not: it silently runs a single process.
- `--num_cpu_threads_per_process 1` only sets OMP_NUM_THREADS for the launch; the
  trainer sizes its own CPU thread pool from the cores it may use and its local world
  size, which the launching machine (possibly a remote one) cannot know.
- `--quiet` keeps a failing trainer from adding accelerate's traceback. accelerate
  turns any non-zero exit into 1, so a supervisor reads the trainer's own status and
  exit code from `result.json` (0 / 2 / 75 / 1).
- A user's accelerate config file (`train --accelerate-config`, for FSDP or DeepSpeed)
  is passed as `--config_file`. accelerate takes a value from the file only where the
  command line gives none, so brightrun's explicit flags still win: num_processes,
  num_machines, machine_rank, main_process_ip/port and mixed_precision ("no": the
  trainer picks its precision from the spec). `services.jobs` refuses a file whose
  values for these differ, so nothing is overridden silently. For FSDP and DeepSpeed no
  `--multi_gpu`/`--cpu` is added: the file's distributed_type picks accelerate's launcher.
"""

from __future__ import annotations

import sys
from typing import Any

TRAINER_MODULE = "brightrun_cli.trainer"
# Launch values brightrun passes itself; an accelerate config file may repeat them only unchanged.
LAUNCH_KEYS = ("num_processes", "num_machines", "machine_rank", "main_process_ip", "main_process_port", "mixed_precision")


def trainer_command(spec_path: str, **options: Any) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) that start the trainer: the trainer module directly for
    one process, `accelerate launch` (see `accelerate_argv`, whose keyword arguments
    `options` are) for more, or whenever the job has an accelerate config file (only the
    launcher reads it: FSDP and DeepSpeed are set up from the environment it derives)."""
    if options.get("num_processes", 1) == 1 and options.get("num_machines", 1) == 1 and options.get("config_file") is None:
        python = options.get("python", sys.executable)
        return [python, "-m", TRAINER_MODULE, str(spec_path)], ({"ACCELERATE_USE_CPU": "true"} if options.get("cpu") else {})
    return accelerate_argv(spec_path, **options), {}


def accelerate_argv(
    spec_path: str,
    *,
    num_processes: int = 1,
    num_machines: int = 1,
    machine_rank: int = 0,
    main_process_ip: str | None = None,
    main_process_port: int | None = None,
    python: str = sys.executable,
    cpu: bool | None = None,
    config_file: str | None = None,
    distributed_type: str | None = None,
) -> list[str]:
    """argv for `python -m accelerate.commands.launch ... -m brightrun_cli.trainer spec_path`.

    num_processes is the number of processes on each machine (GPUs per host; 1 on a
    CPU host unless CPU DDP is wanted). cpu=True forces CPU for a single process;
    None lets the trainer use a GPU when there is one. config_file is an accelerate
    config file, passed as `--config_file`, whose distributed_type is given with it;
    the explicit flags here still override the file's values (see the module docstring).
    """
    if num_processes < 1 or num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise ValueError("num_processes and num_machines must be >= 1 and 0 <= machine_rank < num_machines")
    world = num_processes * num_machines
    if cpu and world > 1:
        raise ValueError("cpu=True runs one process; for CPU DDP leave cpu unset on a host without GPUs")
    if num_machines > 1 and (not main_process_ip or not main_process_port):
        raise ValueError("multi-machine launches need main_process_ip and main_process_port")
    if (config_file is None) != (distributed_type is None):
        raise ValueError("config_file and distributed_type go together")
    argv = [python, "-m", "accelerate.commands.launch", "--quiet"]
    if config_file is not None:
        argv += ["--config_file", str(config_file)]
    if distributed_type in ("FSDP", "DEEPSPEED"):
        pass  # the file's distributed_type picks the launcher; --multi_gpu or --cpu would override it
    elif world > 1:
        argv.append("--multi_gpu")
    elif cpu:
        argv.append("--cpu")
    argv += [
        "--num_processes", str(world),
        "--num_machines", str(num_machines),
        "--mixed_precision", "no",  # the trainer picks its precision from the spec
        "--dynamo_backend", "no",
        "--num_cpu_threads_per_process", "1",
    ]
    if num_machines > 1:
        argv += ["--machine_rank", str(machine_rank), "--main_process_ip", main_process_ip,
                 "--main_process_port", str(main_process_port)]
    elif world > 1 and main_process_port:
        argv += ["--main_process_port", str(main_process_port)]
    return argv + ["-m", TRAINER_MODULE, str(spec_path)]
