"""`render_report`: one self-contained HTML page for a run (inline CSS, inline SVG, no
script, nothing fetched), to attach to a ticket or mail to a colleague.

Everything that comes from a user or a model (names, hyperparameters, prompts, answers,
error messages) goes through `html.escape`: a dataset or prompt holding `<script>`
renders as text.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from html import escape
from typing import Any

from brightrun_cli.trackers.points import epoch_seconds

from .data import ReportData, ReportPoint, Time, TimelineEvent
from .svg import Series, line_chart

TRAIN_COLOR, VALIDATION_COLOR, RATE_COLOR, THROUGHPUT_COLOR, NORM_COLOR = "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"
MAX_SAMPLES = 100  # eval samples shown; the rest are counted

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2433;background:#fff;margin:0}
main{max-width:980px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e3e6ec;padding-bottom:4px}
.sub{color:#5a6275}.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
color:#fff;background:#6b7280;vertical-align:middle}.completed{background:#15803d}.failed{background:#b91c1c}
.running,.initializing{background:#1d4ed8}.queued{background:#b45309}.cancelled{background:#6b7280}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:10px;margin-top:16px}
.card{border:1px solid #e3e6ec;border-radius:8px;padding:8px 12px}.card b{display:block;font-size:18px}
.card span{color:#5a6275;font-size:12px}
table{border-collapse:collapse;width:100%;margin:4px 0}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f4;
vertical-align:top}th{color:#5a6275;font-weight:600}td.num{font-variant-numeric:tabular-nums}
.samples td{white-space:pre-wrap;word-break:break-word;font-size:13px}
.error{background:#fef2f2;border:1px solid #fecaca;border-radius:8px;padding:8px 12px;white-space:pre-wrap;
font-family:ui-monospace,Menlo,monospace;font-size:12px}
.note{color:#5a6275;font-size:12px}.charts{display:grid;gap:14px}
svg.chart{width:100%;max-width:720px;height:auto;display:block}
svg .frame{fill:none;stroke:#c9ced8}svg .grid{stroke:#eef0f4}svg .tick,svg .axis{font-size:11px;fill:#5a6275}
svg .chart-title{font-size:13px;font-weight:600;fill:#1d2433}svg .legend{font-size:12px;fill:#1d2433}
svg .empty{font-size:13px;fill:#8a91a3}footer{margin-top:32px;color:#8a91a3;font-size:12px}
"""


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return escape(str(value))
        return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}g}"
    return escape(str(value))


def _usd(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:.4f}"


def _when(value: Time | None) -> str:
    seconds = epoch_seconds(value)
    if seconds is None:
        return "—"
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _table(rows: list[tuple[str, str]], header: tuple[str, ...] | None = None) -> str:
    """Rows of already-escaped HTML cells."""
    head = "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" if header else ""
    body = "".join(f"<tr><th>{label}</th><td class=\"num\">{value}</td></tr>" for label, value in rows)
    return f"<table>{head}{body}</table>"


def _curve(points: list[ReportPoint], split: str, attribute: str) -> list[tuple[float, float]]:
    return [(float(p.step), float(v)) for p in points if p.split == split
            and isinstance(v := getattr(p, attribute), (int, float)) and not isinstance(v, bool)]


def _charts(points: list[ReportPoint]) -> str:
    loss = line_chart("loss", "Loss", [
        Series("train", TRAIN_COLOR, _curve(points, "train", "training_loss")),
        Series("validation", VALIDATION_COLOR, _curve(points, "validation", "validation_loss"), markers=True),
    ], y_label="loss")
    rate = line_chart("learning_rate", "Learning rate", [Series("learning rate", RATE_COLOR, _curve(points, "train", "learning_rate"))])
    throughput = line_chart("throughput", "Throughput", [Series("tokens/s", THROUGHPUT_COLOR, _curve(points, "train", "throughput"))],
                            y_label="tokens/s")
    norm = line_chart("gradient_norm", "Gradient norm", [Series("grad norm", NORM_COLOR, _curve(points, "train", "gradient_norm"))])
    return f'<div class="charts">{loss}{rate}{throughput}{norm}</div>'


def _change(improvement: float | None) -> str:
    """A relative change of validation loss, said as what it is: lower is better."""
    if improvement is None:
        return "—"
    if improvement > 0:
        return f"{improvement:.1%} lower than the base model"
    if improvement < 0:
        return f"{-improvement:.1%} higher than the base model"
    return "same as the base model"


def _final_losses(data: ReportData) -> tuple[float | None, float | None, float | None]:
    """(base validation, final validation, final training) loss: the quality metrics' when
    given, else the curves' ends."""
    quality = data.quality or {}
    validation = _curve(data.points, "validation", "validation_loss")
    train = _curve(data.points, "train", "training_loss")
    base = quality.get("base_validation_loss")
    if base is None:
        base = next((v for s, v in validation if s == 0), None)
    final_val = quality.get("final_validation_loss")
    if final_val is None and validation and validation[-1][0] > 0:
        final_val = validation[-1][1]
    final_train = quality.get("final_training_loss")
    if final_train is None and train:
        final_train = train[-1][1]
    return base, final_val, final_train


def _improvement(base: float | None, final: float | None, quality: dict[str, Any]) -> float | None:
    if quality.get("validation_loss_improvement") is not None:
        return quality["validation_loss_improvement"]
    if base is None or final is None or base <= 0:
        return None
    return (base - final) / base


def _cards(data: ReportData) -> str:
    base, final_val, final_train = _final_losses(data)
    quality = data.quality or {}
    improvement = _improvement(base, final_val, quality)
    steps = max((p.step for p in data.points), default=None)
    started, ended = epoch_seconds(data.started_at), epoch_seconds(data.completed_at)
    cards = [
        ("final validation loss", _num(final_val), f"base {_num(base)}"),
        ("validation loss change", f"{-improvement:+.1%}" if improvement is not None else "—", _change(improvement)),
        ("score", f"{quality['overall_score']}/5" if quality.get("overall_score") is not None else "—",
         escape(str(quality.get("convergence_quality") or ""))),
        ("final training loss", _num(final_train), f"{steps:,} steps" if steps else ""),
        ("cost", _usd(data.cost), f"estimate {_usd(data.estimated_cost)}"),
        ("duration", _duration(ended - started if started is not None and ended is not None else None),
         f"started {_when(data.started_at)}" if started is not None else ""),
    ]
    return '<div class="cards">' + "".join(f"<div class=\"card\"><span>{label}</span><b>{value}</b><span>{note}</span></div>"
                                           for label, value, note in cards) + "</div>"


def _quality(data: ReportData) -> str:
    base, final_val, final_train = _final_losses(data)
    quality = data.quality or {}
    if base is None and final_val is None and not quality:
        return '<p class="note">No quality measurement: the job has no validation points and no model.</p>'
    rows = [
        ("validation loss", _num(base), _num(final_val)),
        ("perplexity", _num(quality.get("base_perplexity")), _num(quality.get("perplexity"))),
        ("best validation loss", "", _num(quality.get("best_validation_loss"))),
        ("final training loss", "", _num(final_train)),
    ]
    table = ("<table><tr><th></th><th>base model</th><th>tuned</th></tr>"
             + "".join(f"<tr><th>{label}</th><td class=\"num\">{b}</td><td class=\"num\">{t}</td></tr>" for label, b, t in rows)
             + "</table>")
    summary = [("change", escape(_change(_improvement(base, final_val, quality))))]
    if quality.get("convergence_quality"):
        summary.append(("convergence", escape(str(quality["convergence_quality"]))))
    if quality.get("overall_score") is not None:
        summary.append(("score", f"{_num(quality['overall_score'])}/5 — {escape(str(quality.get('score_reason') or ''))}"))
    rule = f'<p class="note">Rule: {escape(str(quality["score_rule"]))}</p>' if quality.get("score_rule") else ""
    return table + _table(summary) + rule


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out.append((prefix, value))


def _evals(data: ReportData) -> str:
    if not data.eval_summary and not data.eval_samples:
        return ""
    parts = ["<h2>Generation eval</h2>"]
    if data.eval_summary:
        flat: list[tuple[str, Any]] = []
        _flatten("", data.eval_summary, flat)
        parts.append(_table([(escape(key), _num(value)) for key, value in flat]))
    if data.eval_samples:
        shown = data.eval_samples[:MAX_SAMPLES]
        rows = "".join(
            f"<tr><td>{escape(s.prompt)}</td><td>{escape(s.reference)}</td><td>{escape(s.base or '')}</td>"
            f"<td>{escape(s.tuned or '')}</td><td>{'—' if s.match is None else '✓' if s.match else '✗'}</td></tr>"
            for s in shown)
        parts.append('<table class="samples"><tr><th>prompt</th><th>reference</th><th>base</th><th>tuned</th>'
                     f"<th>match</th></tr>{rows}</table>")
        if len(data.eval_samples) > len(shown):
            parts.append(f'<p class="note">{len(shown)} of {len(data.eval_samples)} samples shown.</p>')
    return "".join(parts)


def _cost(data: ReportData) -> str:
    rows = [("cost", _usd(data.cost)), ("estimate", _usd(data.estimated_cost))]
    if data.cost is not None and data.estimated_cost:
        delta = data.cost / data.estimated_cost - 1
        rows.append(("vs estimate", f"{abs(delta):.0%} {'over' if delta > 0 else 'under'}" if abs(delta) >= 0.005 else "on estimate"))
    if data.max_cost is not None:
        rows.append(("budget (--max-cost)", _usd(data.max_cost)))
    rows.extend((escape(kind), _usd(amount)) for kind, amount in sorted(data.cost_breakdown.items()))
    return _table(rows)


def _timeline(data: ReportData) -> str:
    events = [TimelineEvent(t, label) for t, label in
              ((data.queued_at, "queued"), (data.started_at, "started"), (data.completed_at, data.status)) if t is not None]
    events += data.events
    timed = sorted(((epoch_seconds(e.time), e) for e in events if epoch_seconds(e.time) is not None), key=lambda te: te[0])
    if not timed:
        return '<p class="note">No recorded times.</p>'
    first = timed[0][0]
    rows = "".join(f"<tr><td>{_when(t)}</td><td class=\"num\">+{_duration(t - first)}</td><td>{escape(e.label)}</td>"
                   f"<td>{escape(e.detail)}</td></tr>" for t, e in timed)
    return f"<table><tr><th>time</th><th>since queued</th><th>event</th><th>detail</th></tr>{rows}</table>"


def _trackers(data: ReportData) -> str:
    if not data.trackers:
        return ""
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{escape(str(r.get('status') or ''))}</td><td>{escape(str(r.get('where') or ''))}</td>"
        f"<td>{escape(str(r.get('error') or ''))}</td></tr>" for name, r in data.trackers.items())
    return f"<h2>Experiment trackers</h2><table><tr><th>tracker</th><th>status</th><th>where</th><th>error</th></tr>{rows}</table>"


def render_report(data: ReportData) -> str:
    """The whole report as one HTML document (UTF-8 text)."""
    gpu = f"{data.gpu_count} × {data.gpu_type}" if data.gpu_type and data.gpu_count else (data.gpu_type or None)
    subtitle = " · ".join(escape(part) for part in (data.base_model, data.dataset and f"dataset {data.dataset}",
                                                     data.host and f"host {data.host}", gpu) if part)
    error = f'<h2>Error</h2><div class="error">{escape(data.error)}</div>' if data.error else ""
    hyperparameters = _table([(escape(str(k)), _num(", ".join(map(str, v)) if isinstance(v, list) else v))
                              for k, v in sorted(data.hyperparameters.items())]) if data.hyperparameters else \
        '<p class="note">None recorded.</p>'
    footer = " · ".join(part for part in (
        f"brightrun {escape(data.version)}" if data.version else "brightrun",
        f"generated {_when(data.generated_at)}" if data.generated_at is not None else "",
        "self-contained: opens without a network") if part)
    return "".join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>brightrun job {escape(data.job_id)}</title><style>{CSS}</style></head><body><main>",
        f'<h1>Job {escape(data.job_id)} <span class="badge {escape(data.status)}">{escape(data.status)}</span></h1>',
        f'<div class="sub">{subtitle}</div>',
        _cards(data),
        error,
        "<h2>Curves</h2>",
        _charts(data.points) if data.points else '<p class="note">No metric points were recorded.</p>',
        "<h2>Quality</h2>",
        _quality(data),
        _evals(data),
        "<h2>Hyperparameters</h2>",
        hyperparameters,
        "<h2>Cost</h2>",
        _cost(data),
        "<h2>Timeline</h2>",
        _timeline(data),
        _trackers(data),
        f"<footer>{footer}</footer></main></body></html>\n",
    ])
