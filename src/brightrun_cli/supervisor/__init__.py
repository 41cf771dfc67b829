"""The per-job supervisor: a program of its own (`python -m brightrun_cli.supervisor`).

- `launch`: starting supervisors (spawned for a claimed job, or a standby started ahead
  of one), liveness and signals; what the queue and the job commands call.
- `run`: the `Supervisor` of one attempt of one job: launch the trainer through its
  runner, follow it, record the outcome.
- `ingest`: the trainer's metrics.jsonl lines -> metrics_points values.
- `__main__`: the entry point.

It talks to the trainer through the run directory's files and to the commands through
the registry (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

# Why the running attempt is to stop: "cancelled" (SIGTERM/SIGINT, i.e. `jobs cancel`) or
# "budget". Set from signal handlers, so it lives here, importable before anything heavy.
stop: dict[str, str | None] = {"reason": None}


def request_stop(reason: str = "cancelled") -> None:
    """The attempt stops at its next poll (the first reason wins)."""
    stop["reason"] = stop["reason"] or reason
