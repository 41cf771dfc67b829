"""`brightrun jobs report JOB --out report.html`: gather a job's registry rows and run
files into a `report.ReportData` and write the rendered page atomically.

What it reads: the job row (status, hyperparameters, times, costs, error), its dataset's
name, its metric points, its model's quality metrics, the answer eval when the job has
one (`final/eval_summary.json` and `final/eval.jsonl` in the run dir, else the copies
stored with its model), its cost records by type, its notifications (the timeline) and
`trackers.json`. Every file is optional: a queued job renders too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from brightrun_cli import __version__, lifecycle
from brightrun_cli.errors import UsageError
from brightrun_cli.generation import gguf
from brightrun_cli.registry import costs as cost_records
from brightrun_cli.registry import datasets as dataset_rows
from brightrun_cli.registry import jobs as job_rows
from brightrun_cli.registry import models as model_rows
from brightrun_cli.registry import notifications as notification_rows
from brightrun_cli.registry import points as point_rows
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.report import EvalSample, ReportData, ReportPoint, TimelineEvent, render_report
from brightrun_cli.services.output_files import check_parent, write_atomically
from brightrun_cli.services.trackers import eval_summary, model_file
from brightrun_cli.trackers.records import read_records
from brightrun_cli.workspace import Workspace

EVAL_FILE = "eval.jsonl"


def build_report(ws: Workspace, ref: str) -> ReportData:
    """Everything the report of job `ref` shows."""
    with ws.registry.reading() as conn:
        job = job_rows.resolve(conn, ref)
        dataset = dataset_rows.get(conn, job.dataset_id)
        points = point_rows.of_job(conn, job.id)
        model = model_rows.of_job(conn, job.id)
        breakdown = cost_records.job_by_type(conn, job.id)
        notes = notification_rows.of_job(conn, job.id)
    model = model if model is not None and model.deleted_at is None else None
    gpu = job.gpu_config or {}
    error = job.error_message
    if error and job.error_stack:
        error = f"{error}\n\n{job.error_stack}"
    return ReportData(
        job_id=job.id, status=job.status, base_model=gguf.describe(job.base_model), dataset=dataset.name if dataset else None,
        host=", ".join(job.host_names) or None, gpu_type=gpu.get("type"), gpu_count=gpu.get("count"),
        hyperparameters=dict(job.hyperparameters or {}),
        points=[ReportPoint.from_row(p.to_fields()) for p in points],
        quality=model.quality_metrics if model else None,
        eval_summary=eval_summary(ws, job, model),
        eval_samples=eval_samples(model_file(ws, job, model, EVAL_FILE)),
        cost=job.cost, estimated_cost=job.estimated_total_cost, max_cost=job.max_cost, cost_breakdown=breakdown,
        queued_at=job.queued_at, started_at=job.started_at, completed_at=job.completed_at,
        events=[TimelineEvent(n.created_at, n.type, n.message) for n in notes],
        error=error, trackers=read_records(lifecycle.run_dir(ws.home, job)),
        generated_at=utcnow(), version=__version__,
    )


def eval_samples(text: str | None) -> list[EvalSample]:
    """eval.jsonl's samples (generation/evaluate.py's format) as the report shows them: the
    question (the prompt's last turn, with how many came before it), the reference, both
    answers, and whether the tuned answer matched exactly. Lines of another shape are skipped."""
    samples = []
    for line in (text or "").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("reference"), str):
            continue
        base, tuned = record.get("base") or {}, record.get("tuned") or {}
        exact = (tuned.get("scores") or {}).get("exact_match") if isinstance(tuned, dict) else None
        samples.append(EvalSample(prompt=_question(record.get("prompt")), reference=record["reference"],
                                  base=_answer(base), tuned=_answer(tuned),
                                  match=None if not isinstance(exact, (int, float)) else exact >= 1.0))
    return samples


def _question(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    turns = [t for t in prompt if isinstance(t, dict)] if isinstance(prompt, list) else []
    if not turns:
        return ""
    last = str(turns[-1].get("content", ""))
    return f"({len(turns) - 1} earlier turns) {last}" if len(turns) > 1 else last


def _answer(side: Any) -> str | None:
    return str(side.get("answer")) if isinstance(side, dict) and side.get("answer") is not None else None


def write_report(ws: Workspace, ref: str, out: Path) -> Path:
    """Render job `ref`'s report into `out` (atomically: a reader never sees half a page)."""
    out = out.expanduser()
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory", "pass a file name, e.g. --out report.html")
    check_parent(out, "--out")
    page = render_report(build_report(ws, ref))
    return write_atomically(out, lambda handle: handle.write(page.encode("utf-8")))
