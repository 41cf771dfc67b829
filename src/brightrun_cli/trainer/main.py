"""Entry point: run one spec, write result.json, exit 0 / 2 / 75 / 1 (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
import traceback
from pathlib import Path

from .files import setup_logging, write_json_atomic
from .spec import SpecError, load_spec
from .trackers import TrackerProcess

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_STOPPED = 0, 1, 2, 75
USAGE = "usage: accelerate launch -m brightrun_cli.trainer SPEC.json  (or: python -m brightrun_cli.trainer SPEC.json)"


def _quiet_libraries() -> None:
    """The trainer's output goes to log files: no progress bars (carriage-return redraws
    of every weight shard), and no library deprecation notices unless debugging."""
    from brightrun_cli.errors import quiet_library_logs, quiet_library_warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers follows it (read at its import)
    quiet_library_warnings()
    quiet_library_logs()


def main(argv: list[str], *, own_process: bool = False) -> int:
    """Run the spec named by argv. own_process: this process is the trainer's alone (the
    `python -m` entry), so start-up may tune its garbage collector (_startup_without_gc)."""
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return EXIT_INVALID if argv[:1] not in (["-h"], ["--help"]) else EXIT_OK
    started = time.time()
    rank = int(os.environ.get("RANK", "0"))
    try:
        spec = load_spec(argv[0])
    except SpecError as exc:
        # No trustworthy run dir yet: report next to the spec file when it exists.
        print(f"error: {exc}", file=sys.stderr)
        spec_dir = Path(argv[0]).resolve().parent
        if rank == 0 and spec_dir.is_dir():
            _write_result(spec_dir, started, "failed", EXIT_INVALID, None, str(exc))
        return EXIT_INVALID
    log = setup_logging(spec.output_dir, rank, rank == 0)
    log.info("brightrun trainer: spec %s (job %s)", spec.path, spec.job_id or "-")
    _quiet_libraries()
    if own_process:
        from brightrun_cli.errors import own_the_process
        from brightrun_cli.generation.quantization import keep_bitsandbytes_out

        own_the_process()
        if spec.hyperparameters.quantization == "none":
            keep_bitsandbytes_out()  # its base loads unquantised, and so does the answer eval's
    # A process of its own (trainer/trackers.py), started once setup has written the first
    # metric point: on a busy CPU its imports (mlflow, wandb: seconds) would delay that point.
    # The handle is made now, so that it sends this attempt's points from the first one.
    trackers = TrackerProcess(spec, log) if rank == 0 and spec.report_to else None
    run = None
    try:
        with _startup_without_gc(freeze=own_process):
            from . import loop

            run = loop.setup(spec, log)
        if trackers:
            trackers.start()
        loop.fit(run)
        loop.save_final(run)
        from .answers import evaluate_answers

        evaluate_answers(run)  # never raises: a failed eval is recorded in final/eval_summary.json
        status, code, error = "completed", EXIT_OK, None
    except SpecError as exc:
        log.error("invalid spec or inputs: %s", exc)
        status, code, error = "failed", EXIT_INVALID, str(exc)
    except Exception as exc:
        from .loop import Stopped

        if isinstance(exc, Stopped):
            log.info("stopped by SIGTERM at step %d; resume with \"resume\": true", run.state.step)
            status, code, error = "stopped", EXIT_STOPPED, None
        else:
            log.error("training failed: %s\n%s", exc, traceback.format_exc())
            status, code, error = "failed", EXIT_FAILED, f"{type(exc).__name__}: {exc}"
    if rank == 0:
        _write_result(spec.output_dir, started, status, code, run, error)
        if trackers:
            trackers.finish(status)
    if run is not None:
        run.metrics.close()
    log.info("%s (exit %d)", status, code)
    return code


@contextlib.contextmanager
def _startup_without_gc(*, freeze: bool):
    """Start-up (importing torch, transformers, peft and accelerate, loading data and model)
    creates a few million objects that live as long as the process. With the cyclic
    collector on, it rescans them again and again: 1 to 2 s of an 8 s start on a 2-core
    machine. It stays off until setup is done; then, in a process of its own, those
    objects are frozen out of every later collection (the training loop's stay small)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if enabled:
            gc.enable()


def _write_result(run_dir: Path, started: float, status: str, code: int, run, error: str | None) -> None:
    state = run.state if run is not None else None
    write_json_atomic(run_dir / "result.json", {
        "status": status,
        "exit_code": code,
        "steps": state.step if state else 0,
        "epochs": round(state.step / run.steps_per_epoch, 4) if state else 0,
        "tokens": state.tokens_seen if state else 0,
        "base_validation_loss": state.base_validation_loss if state else None,
        "final_validation_loss": state.validation_loss if state and status == "completed" else None,
        "final_training_loss": state.training_loss if state else None,
        "duration_s": round(time.time() - started, 3),
        "error": error,
    })
