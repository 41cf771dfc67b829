"""The supervisor's entry point:

    python -m brightrun_cli.supervisor JOB_ID --marker TOKEN --home HOME
    python -m brightrun_cli.supervisor --standby --marker TOKEN --home HOME   (the id comes on stdin)

Started by the queue (supervisor.launch) in its own session, so it outlives the
terminal that submitted the job. SIGTERM/SIGINT = cancel the job; SIGHUP is ignored.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys

from brightrun_cli.supervisor import request_stop


def _on_signal(signum, _frame) -> None:
    logging.getLogger("brightrun.supervisor").info("received signal %d: stopping the job", signum)
    request_stop("cancelled")


def _import_for_run() -> None:
    """What Supervisor.run imports on its way to the launch, loaded while a standby waits."""
    import brightrun_cli.registry.tables  # noqa: F401  (SQLModel, SQLAlchemy, pydantic)
    import brightrun_cli.runners.local  # noqa: F401
    import brightrun_cli.services.datasets  # noqa: F401
    import brightrun_cli.supervisor.run  # noqa: F401


def _log_to(ws, job_id: str) -> None:
    """A standby started with no run dir to log to: from here on, stdout and stderr go to the
    job's supervisor.log (as for a supervisor spawned for the job), and it works from there."""
    from brightrun_cli.supervisor.launch import open_supervisor_log

    run_dir, fd = open_supervisor_log(ws, job_id)
    for target in (1, 2):
        os.dup2(fd, target)
    os.close(fd)
    os.chdir(run_dir)


def main(argv: list[str] | None = None) -> int:
    # First thing: a cancel that arrives while we are still importing must not kill us unrecorded.
    signal.signal(signal.SIGTERM, _on_signal)
    # No cyclic collections until the trainer is launched (Supervisor.run): start-up only
    # builds long-lived objects, and every collection before the launch delays the job.
    gc.disable()
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    parser = argparse.ArgumentParser(prog="brightrun-supervisor", description="Supervise one attempt of one brightrun job.")
    parser.add_argument("job_id", nargs="?", help="the job (claimed with --marker); with --standby, read from stdin")
    parser.add_argument("--marker", required=True, help="the attempt's token (also how liveness checks recognise this process)")
    parser.add_argument("--home", required=True)
    parser.add_argument("--standby", action="store_true",
                        help="started before the job exists (supervisor.launch.Standby): import, then wait for its id on stdin")
    args = parser.parse_args(argv)
    if args.standby == bool(args.job_id):
        parser.error("give either a job id or --standby")
    from brightrun_cli.registry.ids import is_id
    from brightrun_cli.workspace import Workspace

    ws = Workspace.open(args.home)
    job_id = args.job_id
    if args.standby:
        _import_for_run()
        job_id = sys.stdin.readline().strip()
        if not is_id(job_id):
            return 0  # no job after all (bad input, or it queued behind others): leave no trace
        _log_to(ws, job_id)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    from brightrun_cli.services import queue
    from brightrun_cli.supervisor.run import Supervisor

    code = Supervisor(ws, job_id, args.marker).run()
    try:
        queue.kick(ws)  # this slot is free now: start the next queued job
    except Exception:
        logging.getLogger("brightrun.supervisor").exception("starting the next queued job")
    return code


if __name__ == "__main__":
    sys.exit(main())
