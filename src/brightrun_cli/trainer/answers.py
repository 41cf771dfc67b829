"""The answer eval at the end of a job: base vs tuned greedy answers to held-out prompts.

It runs right after the final adapter is saved, on the job's host, with the model
already in memory, and writes `final/eval.jsonl` and `final/eval_summary.json`
(formats: generation/evaluate.py). It is part of the job but never decides its outcome:
the training has completed, so a failed eval is logged and recorded in
eval_summary.json (status "failed", with the error), and the job still completes.

Only the main process evaluates; the others end as they would without it (no
collective follows, so nothing waits on them or for them). A sharded model (FSDP,
DeepSpeed) exists whole on no process, so it is skipped and says so.
"""

from __future__ import annotations

import signal
import traceback

from brightrun_cli.generation import evaluate as answer_eval

from .loop import Run


class _Interrupted(Exception):
    """SIGTERM during the eval: the adapter is saved, so the eval just stops."""


def evaluate_answers(run: Run) -> None:
    settings, spec, log = run.spec.eval, run.spec, run.log
    if settings is None:
        log.info("answer eval: off in the spec")
        return
    if not run.accelerator.is_main_process:
        return
    out = spec.output_dir / "final"
    reason = None
    if spec.validation_file is None:
        reason = "the job has no held-out split to evaluate on"
    elif run.sharded:
        reason = ("the model is sharded (FSDP/DeepSpeed) and whole on no single process; "
                  "evaluate the saved adapter on one device instead")
    if reason:
        log.info("answer eval skipped: %s", reason)
        answer_eval.write_eval(out, None, answer_eval.unfinished_summary(
            "skipped", reason, limit=settings.limit, max_new_tokens=settings.max_new_tokens))
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        from brightrun_cli.generation.engine import ChatModel

        chat_model = ChatModel(run.accelerator.unwrap_model(run.model), run.tokenizer)
        with run.accelerator.autocast():
            summary = answer_eval.run_eval(chat_model, spec.validation_file, out, limit=settings.limit,
                                           max_new_tokens=settings.max_new_tokens, log=log.info)
        log.info("answer eval: %d samples in %.1f s, written to %s", summary["samples"], summary["seconds"], out)
    except Exception as exc:  # any failure of the eval, including SIGTERM: recorded, the job still completes
        error = "stopped by SIGTERM" if isinstance(exc, _Interrupted) else f"{type(exc).__name__}: {exc}"
        log.error("answer eval failed: %s\n%s", error, "" if isinstance(exc, _Interrupted) else traceback.format_exc())
        answer_eval.write_eval(out, None, answer_eval.unfinished_summary(
            "failed", error, limit=settings.limit, max_new_tokens=settings.max_new_tokens))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise _Interrupted()
