"""`brightrun watch [JOB] [--json]`: follow a job (or all jobs) live until it ends.

Three outputs from one polling loop: a Rich Live dashboard on a terminal, one plain
line per change when stdout is not a terminal, NDJSON with `--json`. watch only reads:
Ctrl-C leaves watch and never touches the job.

Exit codes (following one job), for CI scripts:
  0 completed · 3 failed · 4 cancelled · 5 job not found · 6 a --require failed · 130 left with Ctrl-C
  (1 and 2 keep their usual meaning: watch itself failed / bad usage)
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated

from brightrun_cli.cli import common

if TYPE_CHECKING:
    from brightrun_cli.registry.rows import ModelRow
    from brightrun_cli.services.watch import BoardRow, Change, JobView, Point, WatchState
    from brightrun_cli.workspace import Workspace

EXIT_COMPLETED = 0
EXIT_JOB_FAILED = 3
EXIT_JOB_CANCELLED = 4
EXIT_JOB_NOT_FOUND = 5
EXIT_INTERRUPTED = 130
EXIT_CODES = {"completed": EXIT_COMPLETED, "failed": EXIT_JOB_FAILED, "cancelled": EXIT_JOB_CANCELLED}

POLL_SECONDS = 0.25  # 4 looks a second: a new point shows within ~0.3 s
KICK_SECONDS = 10.0  # how often follow_job reaps dead supervisors / starts queued jobs
BOARD_POLL_SECONDS = 0.5
CLOCK_SECONDS = 1.0  # redraw at least this often on a terminal, for elapsed time and ETA


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stderr(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _interactive() -> bool:
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


class _Sink:
    """Where follow_job's changes go. The live one holds the terminal while entered."""

    def __enter__(self) -> "_Sink":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, state: WatchState, change: Change) -> None:
        raise NotImplementedError

    def tick(self, state: WatchState) -> None:
        """Called between polls: time passes even when nothing changed."""

    def tracker_problems(self, lines: list[str]) -> None:
        """A tracker that failed or was cut short: one warning line each, once (the job goes on)."""
        for line in lines:
            _stderr(f"warning: {line}")

    def model(self, job: JobView, model: "ModelRow | None") -> None:
        """After a completed job: the model it left (None when none could be stored)."""
        if model is None:
            _stderr(f"job {job.id} completed, but no model was stored; see 'brightrun jobs show {job.id}'")
            return
        sys.stdout.write(_model_line(model) + "\n")
        sys.stdout.flush()


class _StreamSink(_Sink):
    """Writes one record per status change and per metric point, in the order they
    happened: a terminal status after the points that led to it, others before. Entering,
    leaving or waiting for another reason in Slurm's queue counts as a status change."""

    def __init__(self) -> None:
        self._status: tuple[str, str | None] | None = None

    def update(self, state: WatchState, change: Change) -> None:
        job = state.job
        records = [self.point_record(p, job) for p in change.new_points]
        shown = (job.status, job.current_stage if job.shown_status != job.status else None)
        if shown != self._status:
            self._status = shown
            status = self.status_record(job)
            records = records + [status] if job.terminal else [status] + records
        if records:
            sys.stdout.write("".join(r + "\n" for r in records))
            sys.stdout.flush()
        self.tracker_problems(change.new_tracker_problems)

    def point_record(self, point: Point, job: JobView) -> str:
        raise NotImplementedError

    def status_record(self, job: JobView) -> str:
        raise NotImplementedError


class _JsonSink(_StreamSink):
    """NDJSON on stdout (every metric point once, in order; every status change; the model);
    the status as text on stderr, for a person watching a script's log."""

    def model(self, job: JobView, model: "ModelRow | None") -> None:
        if model is None:
            return super().model(job, model)
        _stderr(_model_line(model))
        sys.stdout.write(_json({"type": "model", "job_id": job.id, **model.to_json()}) + "\n")
        sys.stdout.flush()

    def point_record(self, point: Point, job: JobView) -> str:
        return _json({"type": "metric", **_point_fields(point)})

    def status_record(self, job: JobView) -> str:
        _stderr(_status_line(job))
        return _json({"type": "status", **_status_fields(job)})


class _PlainSink(_StreamSink):
    """Not a terminal: one plain line per status change and per metric point, no animation."""

    def point_record(self, point: Point, job: JobView) -> str:
        from brightrun_cli.cli.watch_view import point_line

        return point_line(point, job)

    def status_record(self, job: JobView) -> str:
        return _status_line(job)


class _LiveSink(_Sink):
    """The Rich Live dashboard, redrawn on every change and once a second for the clock."""

    def __init__(self) -> None:
        from rich.live import Live

        self.console = common.rich_console()
        self._live = Live(console=self.console, auto_refresh=False, redirect_stderr=False)
        self._drawn_at = 0.0

    def __enter__(self) -> "_LiveSink":
        self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        self._live.stop()

    def _draw(self, state: WatchState) -> None:
        from brightrun_cli.cli.watch_view import render_job

        self._live.update(render_job(state, _now(), height=self.console.size.height), refresh=True)
        self._drawn_at = time.monotonic()

    def update(self, state: WatchState, change: Change) -> None:
        if change.any or not self._drawn_at:
            self._draw(state)

    def tick(self, state: WatchState) -> None:
        if time.monotonic() - self._drawn_at >= CLOCK_SECONDS:
            self._draw(state)


def _status_line(job: JobView) -> str:
    from brightrun_cli.cli.watch_view import status_line

    return status_line(job, _now())


def _json(obj: dict) -> str:
    return json.dumps(obj, default=common._default, ensure_ascii=False)


def _status_fields(job: JobView) -> dict:
    names = (
        "status shown_status current_stage progress current_epoch total_epochs current_step total_steps tokens_processed "
        "started_at completed_at estimated_completion_at current_cost estimated_total_cost max_cost final_cost error_message"
    ).split()
    return {"job_id": job.id, **{name: getattr(job, name) for name in names}}


def _point_fields(point: Point) -> dict:
    fields = point.to_fields()
    fields.pop("id")
    return fields


def _model_line(model: "ModelRow") -> str:
    q = model.quality_metrics or {}
    loss = ""
    if q.get("base_validation_loss") is not None and q.get("final_validation_loss") is not None:
        loss = f", held-out loss {q['base_validation_loss']:.4g} -> {q['final_validation_loss']:.4g}"
    if model.deleted_at is not None:  # its eval stays on record (a gate can still judge it); its files are gone
        return f"model {model.id} ({model.name}@{model.version}): score {q.get('overall_score')}/5{loss}; removed since ('models rm')"
    return (f"model {model.id} ({model.name}@{model.version}): score {q.get('overall_score')}/5{loss}; "
            f"see 'brightrun models show {model.id}'")


def follow_job(ws: "Workspace", job_ref: str, *, json_output: bool = False, requirements: list | None = None) -> int:
    """Follow one job until it ends; return its exit code (see the module doc).

    A terminal gets the live dashboard, other outputs plain lines, `json_output` NDJSON.
    `requirements` (services.evals.parse_requirements of --require) are checked against
    the completed job's answer eval: 6 when one fails.
    """
    from brightrun_cli.errors import NotFoundError
    from brightrun_cli.services.jobs import get_job, wait_for_model
    from brightrun_cli.services.watch import JobFollower

    if json_output:
        sink: _Sink = _JsonSink()
    elif _interactive():
        sink = _LiveSink()
    else:
        sink = _PlainSink()
    job_id = job_ref
    try:
        job_id = get_job(ws, job_ref).id
        with JobFollower(ws, job_id) as follower, sink:
            last_kick = time.monotonic()
            while True:
                change = follower.poll()
                sink.update(follower.state, change)
                if follower.state.job.terminal:
                    break
                time.sleep(POLL_SECONDS)
                sink.tick(follower.state)
                if time.monotonic() - last_kick >= KICK_SECONDS:
                    # A supervisor that died leaves its job "running" forever unless someone
                    # reaps it: watch is often the only brightrun command a user has open.
                    last_kick = time.monotonic()
                    common.kick_queue(ws.home)
        if follower.state.job.status == "completed":
            sink.model(follower.state.job, wait_for_model(ws, job_id))
        _Sink.tracker_problems(sink, follower.new_tracker_problems())  # e.g. a remote run's copy home
    except NotFoundError as exc:  # never there, or removed (`jobs rm`) while watched
        _stderr(f"error: {exc}")
        return EXIT_JOB_NOT_FOUND
    except BrokenPipeError:
        return common.reader_left()
    except KeyboardInterrupt:
        _stderr(f"left watch; job {job_id} keeps running (brightrun watch {job_id} to follow it again, brightrun jobs cancel {job_id} to stop it)")
        return EXIT_INTERRUPTED
    code = EXIT_CODES[follower.state.job.status]
    if requirements and code == EXIT_COMPLETED:
        return check_job_requirements(ws, job_id, requirements, json_output=json_output)
    return code


def check_job_requirements(ws: "Workspace", job_id: str, requirements: list, *, json_output: bool) -> int:
    """`--require` of train/watch against the job's own answer eval: each check on stdout (a
    JSON object with --json), `error:` on stderr and 6 when one fails, else 0."""
    from brightrun_cli.errors import EXIT_REQUIREMENT_FAILED
    from brightrun_cli.services.evals import failure_message, job_requirements

    stored, checks = job_requirements(ws, job_id, requirements)
    if json_output:
        common.print_json({"type": "gates", "job_id": job_id, "eval_id": stored.row.id, "requirements": [
            {"requirement": c.requirement.text, "holds": c.holds, "actual": c.actual, "wanted": c.wanted} for c in checks]})
    else:
        for c in checks:
            wanted = "base" if c.requirement.value is None else "required"
            actual = "-" if c.actual is None else f"{c.actual:.4g}"
            common.echo(f"{'ok  ' if c.holds else 'FAIL'} {c.requirement.text}: tuned {actual}, {wanted} "
                       f"{'-' if c.wanted is None else format(c.wanted, '.4g')}")
    failed = [c for c in checks if not c.holds]
    if failed:
        _stderr(f"error: {failure_message(failed)}; see the answers with 'brightrun models show {stored.row.model_id} --eval job'")
        return EXIT_REQUIREMENT_FAILED
    return EXIT_COMPLETED



class _Keys:
    """Single key presses from a terminal (cbreak mode while entered); none elsewhere."""

    def __init__(self) -> None:
        self._saved = None

    def __enter__(self) -> "_Keys":
        if sys.stdin is not None and sys.stdin.isatty():
            import termios
            import tty

            self._saved = termios.tcgetattr(sys.stdin)
            tty.setcbreak(sys.stdin)
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, self._saved)

    @property
    def active(self) -> bool:
        return self._saved is not None

    def wait(self, seconds: float) -> str | None:
        """Sleep up to `seconds`; return the key pressed meanwhile, if any."""
        if not self.active:
            time.sleep(seconds)
            return None
        import select

        ready, _, _ = select.select([sys.stdin], [], [], seconds)
        return sys.stdin.read(1) if ready else None


def _board_changes(rows: list[BoardRow], seen: dict[str, tuple]) -> list[BoardRow]:
    """Rows whose status or step moved since last reported (updates `seen`)."""
    moved = []
    for row in rows:
        key = (row.job.status, row.job.current_step)
        if seen.get(row.job.id) != key:
            seen[row.job.id] = key
            moved.append(row)
    return moved


def watch_all(ws: "Workspace", *, json_output: bool = False) -> int:
    """The all-jobs view. On a terminal: a live table until q or Ctrl-C (1-9 follows a
    job). Otherwise: a line (or JSON object) per job change until no job is active."""
    from brightrun_cli.services.watch import JobsBoard

    try:
        with JobsBoard(ws) as board:
            if json_output or not _interactive():
                return _stream_board(board, json_output)
            selected = _live_board(board)
    except BrokenPipeError:
        return common.reader_left()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_COMPLETED if selected is None else follow_job(ws, selected)


def _stream_board(board, json_output: bool) -> int:
    from brightrun_cli.cli.watch_view import board_line

    seen: dict[str, tuple] = {}
    while True:
        if board.poll():
            for row in _board_changes(board.rows, seen):
                if json_output:
                    sys.stdout.write(_json({"type": "status", **_status_fields(row.job), "training_loss": row.training_loss, "throughput": row.throughput}) + "\n")
                else:
                    sys.stdout.write(board_line(row) + "\n")
            sys.stdout.flush()
        if not board.active:
            if not board.rows:
                _stderr("no jobs yet: start one with 'brightrun train --dataset NAME'")
            return EXIT_COMPLETED
        time.sleep(BOARD_POLL_SECONDS)


def _live_board(board) -> str | None:
    """Run the live table; the id of the job picked with 1-9, or None when left with q."""
    from rich.live import Live

    from brightrun_cli.cli.watch_view import render_board

    console = common.rich_console()
    # Transient: a job picked from the table replaces it on the screen.
    with _Keys() as keys, Live(console=console, auto_refresh=False, transient=True) as live:
        drawn_at = 0.0
        while True:
            changed = board.poll()
            if changed or time.monotonic() - drawn_at >= CLOCK_SECONDS:
                live.update(render_board(board.rows, _now(), selectable=keys.active), refresh=True)
                drawn_at = time.monotonic()
            key = keys.wait(BOARD_POLL_SECONDS)
            if key in ("q", "Q"):
                return None
            if key and key.isdigit() and 1 <= int(key) <= min(9, len(board.rows)):
                return board.rows[int(key) - 1].job.id


JobOpt = Annotated[
    str | None,
    common.Arg(help="Job id or unique id prefix. Without it: a live table of all queued and running jobs.", show_default=False),
]


commands = common.Group()  # what this module adds to the root command


@commands.command("watch")
def watch(ctx: common.Context, job: JobOpt = None, require: common.RequireOpt = None, json_output: common.JsonOpt = False) -> None:
    """Follow a training job live until it ends (or all jobs, without JOB).

    On a terminal: a dashboard (progress, ETA, losses, learning rate, tokens/s, GPU,
    cost vs estimate and budget, loss curve, log tail). Piped: one plain line per
    change. --json: NDJSON on stdout, one object per metric point and status change.

    Exit codes: 0 completed, 3 failed, 4 cancelled, 5 job not found, 6 a --require
    failed on the job's answer eval, 130 Ctrl-C (the job keeps running).

    Examples:
      brightrun watch
      brightrun watch 01jd3k
      brightrun watch 01jd3k --require "rougeL>base"
      brightrun train --dataset support-v1 --detach && brightrun watch $JOB --json
    """
    from brightrun_cli.errors import UsageError
    from brightrun_cli.services.evals import parse_requirements

    requirements = parse_requirements(require)
    if requirements and job is None:
        raise UsageError("--require needs a JOB to follow", "pass the job id: brightrun watch JOB --require ...")
    ws = common.workspace(ctx)
    code = (follow_job(ws, job, json_output=json_output, requirements=requirements) if job is not None
            else watch_all(ws, json_output=json_output))
    raise SystemExit(code)
