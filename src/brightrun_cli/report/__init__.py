"""The shareable run report (`brightrun jobs report JOB --out report.html`).

`render_report(ReportData) -> str` is pure: the caller gathers a job's row, metric
points, quality, eval samples, costs and notifications into a `ReportData` and writes
the returned HTML where the user asked. No heavy imports.
"""

from .data import EvalSample, ReportData, ReportPoint, TimelineEvent
from .html import render_report

__all__ = ["EvalSample", "ReportData", "ReportPoint", "TimelineEvent", "render_report"]
