"""The trainer's experiment trackers (spec `report_to`): a process of their own.

    python -m brightrun_cli.trainer.trackers SPEC.json OFFSET SINCE   # started by the trainer, rank 0

The trainer starts this process when its setup is done (that is, once the job's first
metric point, the base model's held-out loss, is written: importing mlflow or wandb on a
busy CPU would otherwise delay it) and never waits for it while training: it follows
metrics.jsonl as the supervisor does, from byte OFFSET, the file's size when the trainer
began (a resumed run's earlier points were sent by the earlier attempt; this attempt's
first point is sent late, not lost), and sends what has
accumulated about once a second as one batch (an MLflow SQLite transaction costs ~5 ms:
one per step would cost a fast GPU run a share of its steps). A process rather than a
thread of the trainer's: a thread importing and serialising in Python holds the GIL in
5 ms slices, and a CPU training step, thousands of short torch calls that each take the
GIL back, would queue behind it. It runs at a lower priority, ignores SIGTERM/SIGINT
(the trainer decides when it ends) and ends when the trainer closes its stdin, or dies.

Then it sends result.json's losses, final/eval_summary.json when present and the adapter
(final/) where the tracker keeps files, and closes the runs. The trainer waits for that
up to a time limit (FINISH_TIMEOUT_S), then stops it and marks what was still running
as incomplete.

A tracker that cannot be opened (library missing, bad URI) or raises later is dropped:
one warning in trainer.log, and `trackers.json` in the run directory says so:

    {"version": 1, "updated": 1764100000.1,
     "trackers": {"mlflow": {"status": "done", "where": "sqlite:////.../mlflow.db", "run_id": "3f2a...",
                             "points": 52, "artifact": "file:///.../adapter", "error": null}, ...}}

status: "running" (open, sending), "done" (everything sent, run closed), "failed"
(dropped; `error` says while doing what, and why), "incomplete" (still sending when the
trainer had to exit). `where`: the directory or URI the data went to; `run_id`: the
tracker's id of the run (MLflow's, W&B's), reused when the job is resumed.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from brightrun_cli.trackers.points import final_values, point_from_metrics_line, run_params
from brightrun_cli.trackers.records import TRACKERS_FILE, empty_record, read_records, write_records

from .files import setup_logging
from .spec import Spec, load_spec

FLUSH_INTERVAL_S = 1.0
# How long the trainer waits at its end for the trackers to take the last points, the
# results and the adapter. A stopped run (SIGTERM) must exit within the supervisor's grace.
FINISH_TIMEOUT_S = {"stopped": 10.0}
DEFAULT_FINISH_TIMEOUT_S = 60.0
NICENESS = 10  # below the training processes on a busy CPU; a GPU host's idle cores make it moot
RESULT_QUALITY = ("base_validation_loss", "final_validation_loss", "final_training_loss")


# ---------------------------------------------------------------- trainer side

class TrackerProcess:
    """The trainer's handle on the trackers process (see the module docstring)."""

    def __init__(self, spec: Spec, log):
        self.spec, self.log = spec, log
        metrics = spec.output_dir / "metrics.jsonl"
        self._offset = metrics.stat().st_size if metrics.exists() else 0
        self._since = time.time()  # a result.json older than this attempt is not its result
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the trackers process (once). The trainer calls it when setup is done."""
        if self._process is not None:
            return
        # The same brightrun_cli as this trainer's, whatever put it on sys.path.
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        argv = [sys.executable, "-m", __name__, str(self.spec.path), str(self._offset), repr(self._since)]
        try:
            self._process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
        except OSError as exc:
            self._give_up(f"cannot start the trackers process: {exc.strerror or exc}")

    def finish(self, status: str) -> None:
        """The run has ended with `status` and result.json is written: let the trackers send
        the end, waiting for them up to the status's time limit. A run that ended in setup,
        before the process was started, starts it now: its trackers still record the
        failure (or the stop) and its error."""
        self.start()
        if self._process is None:
            return
        self._process.stdin.close()
        timeout = FINISH_TIMEOUT_S.get(status, DEFAULT_FINISH_TIMEOUT_S)
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            self._mark_running("incomplete", f"still sending after {timeout:.0f} s when the trainer exited; "
                               "its run may lack the last data")
            return
        if code != 0:  # it died outside a tracker call: its traceback went to the trainer's stderr
            self._mark_running("failed", f"the trackers process exited with code {code} (see launcher.log)")

    def _mark_running(self, status: str, error: str) -> None:
        """Trackers still `running` in trackers.json did not get to the end: say so, once each."""
        records = read_records(self.spec.output_dir)
        for name in self.spec.report_to:
            record = records.setdefault(name, empty_record())
            if record["status"] == "running":
                record.update(status=status, error=error)
                self.log.warning("tracker %s: %s (see %s)", name, error, TRACKERS_FILE)
        write_records(self.spec.output_dir, records)

    def _give_up(self, error: str) -> None:
        self.log.warning("trackers %s dropped: %s; training goes on without them (see %s)",
                         ", ".join(self.spec.report_to), error, TRACKERS_FILE)
        write_records(self.spec.output_dir, {name: empty_record("failed", error) for name in self.spec.report_to})


# ---------------------------------------------------------------- trackers process

class Follower:
    """Follows one run's metrics.jsonl into its trackers, then sends its end."""

    def __init__(self, spec: Spec, offset: int, since: float, log):
        self.spec, self.log, self.offset, self.since = spec, log, offset, since
        self.run_dir = spec.output_dir
        self.records = {name: empty_record() for name in spec.report_to}
        self.sinks: dict[str, Any] = {}

    def run(self) -> None:
        self._open_all()
        ended = False
        while not ended:
            ended = _trainer_ended(FLUSH_INTERVAL_S)
            self._send_new_points()
        self._send_end(self._result())

    def _run_info(self):
        from brightrun_cli.trackers.sinks import RunInfo

        spec = self.spec
        params = run_params(spec.base_model, asdict(spec.hyperparameters), seed=spec.seed, max_steps=spec.max_steps)
        earlier = read_records(self.run_dir).get("mlflow", {}).get("run_id") if spec.resume else None
        tags = {"brightrun.job_id": spec.job_id, "brightrun.source": "trainer"}
        return RunInfo(job_id=spec.job_id, params=params, tags=tags, resume_run_id=earlier)

    def _open_all(self) -> None:
        from brightrun_cli.trackers.sinks import local_directory, open_sink

        run = self._run_info()
        for name in self.spec.report_to:
            settings = self.spec.trackers.get(name, {})
            sink = self._guard(name, "opening it", lambda: open_sink(name, settings, local_directory(name, self.run_dir), run))
            if sink is not None:
                self.sinks[name] = sink
                self.records[name].update(where=sink.where, run_id=sink.run_id)
                self.log.info("tracker %s: %s%s", name, sink.where, f" (run {sink.run_id})" if sink.run_id else "")
        write_records(self.run_dir, self.records)

    def _guard(self, name: str, doing: str, call):
        """Run one tracker call; a tracker that raises is dropped, warned about once."""
        try:
            return call()
        except Exception as exc:
            from brightrun_cli.trackers.sinks import describe_error

            error = describe_error(exc)
            self.sinks.pop(name, None)
            self.records[name].update(status="failed", error=f"{doing}: {error}")
            self.log.warning("tracker %s dropped while %s: %s; training goes on without it (see %s)",
                             name, doing, error, TRACKERS_FILE)
            write_records(self.run_dir, self.records)
            return None

    def _send_new_points(self) -> None:
        lines, self.offset = read_new_lines(self.run_dir / "metrics.jsonl", self.offset)
        points = [p for p in map(point_from_metrics_line, lines) if p is not None]
        if not points:
            return
        for name, sink in list(self.sinks.items()):
            if self._guard(name, "sending metrics", lambda: sink.log_points(points) or True):
                self.records[name]["points"] += len(points)

    def _result(self) -> dict[str, Any]:
        """This attempt's result.json (one left by an earlier attempt does not count)."""
        path = self.run_dir / "result.json"
        try:
            if path.stat().st_mtime >= self.since:
                return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
        return {"status": "failed", "error": "the trainer ended without writing result.json (killed?)"}

    def _send_end(self, result: dict[str, Any]) -> None:
        status = result.get("status", "failed")
        numbers, texts = final_values(quality={key: result.get(key) for key in RESULT_QUALITY}, eval=self._eval_summary())
        texts["run/status"] = status
        if result.get("error"):
            texts["run/error"] = str(result["error"])
        final_dir = self.run_dir / "final"
        for name, sink in list(self.sinks.items()):
            if not self._guard(name, "sending the results", lambda: sink.log_final(result.get("steps", 0), numbers, texts) or True):
                continue
            if status == "completed" and sink.keeps_files and (final_dir / "adapter_model.safetensors").is_file():
                where = self._guard(name, "storing the adapter", lambda: sink.log_artifact(final_dir))
                if where is None:
                    continue
                self.records[name]["artifact"] = where
            if self._guard(name, "closing its run", lambda: sink.close(status) or True):
                self.records[name]["status"] = "done"
        write_records(self.run_dir, self.records)

    def _eval_summary(self) -> dict[str, Any] | None:
        """final/eval_summary.json when the run's generation eval wrote one."""
        try:
            summary = json.loads((self.run_dir / "final" / "eval_summary.json").read_text())
        except (OSError, ValueError):
            return None
        return summary if isinstance(summary, dict) else None


def read_new_lines(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The complete JSON lines of `path` after byte `offset`, and the offset after them
    (a line still being written stays for the next read; an unparseable one is skipped)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    lines = []
    for raw in data[:end].splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines, offset + end


def _trainer_ended(timeout: float) -> bool:
    """Wait up to `timeout` for the trainer to close our stdin (it ended, or died)."""
    readable, _, _ = select.select([sys.stdin.buffer], [], [], timeout)
    return bool(readable) and not os.read(sys.stdin.fileno(), 4096)


def main(argv: list[str]) -> int:
    # The trainer decides when this ends (a cancel's SIGTERM reaches the whole process group).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(NICENESS)
    spec = load_spec(argv[0])
    log = setup_logging(spec.output_dir, 0, True, prefix="[trackers] ")
    Follower(spec, int(argv[1]), float(argv[2]), log).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
