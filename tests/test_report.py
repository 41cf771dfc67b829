"""The shareable run report: one self-contained HTML file whose user-provided text stays
text, whose curves are drawn (checked in headless Chromium: DOM and pixels), and which
renders for jobs with thousands of points, none, no validation, or a failure."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from brightrun_cli.report import EvalSample, ReportData, ReportPoint, TimelineEvent, render_report
from brightrun_cli.report.html import RATE_COLOR, TRAIN_COLOR, VALIDATION_COLOR
from brightrun_cli.report.svg import MAX_POINTS, downsample, nice_ticks

EVIL = '<script>alert("x")</script>'


class Elements(HTMLParser):
    """Start tags with their attributes, and the page's text, from an HTML document."""

    def __init__(self, document: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(document)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def polylines(self) -> dict[tuple[str, str], int]:
        """(chart, series) -> number of points of its polyline."""
        found, chart = {}, None
        for tag, attrs in self.tags:
            if tag == "svg":
                chart = attrs.get("data-chart")
            elif tag == "polyline":
                found[(chart, attrs["data-series"])] = len(attrs["points"].split())
        return found


def training_points(steps: int, validate_every: int) -> list[ReportPoint]:
    points = [ReportPoint(step=0, split="validation", validation_loss=4.0)]
    for step in range(1, steps + 1):
        points.append(ReportPoint(step=step, split="train", epoch=step / validate_every,
                                  training_loss=3.5 * math.exp(-step / (steps / 3)) + 0.3,
                                  learning_rate=2e-4 * min(1.0, step / 50), throughput=5000.0 + step % 7 * 40,
                                  gradient_norm=1.0 + step % 5 / 10))
        if step % validate_every == 0:
            points.append(ReportPoint(step=step, split="validation", validation_loss=3.6 * math.exp(-step / (steps / 3)) + 0.4))
    return points


def report_data(**overrides) -> ReportData:
    data = dict(
        job_id="01jreport", status="completed", base_model="builtin:tiny", dataset=f"support {EVIL}", host="gpu-box",
        gpu_type="A100-80GB", gpu_count=2,
        hyperparameters={"learning_rate": 2e-4, "target_modules": ["q_proj", "v_proj"], "note": EVIL},
        points=training_points(3000, 1000),
        quality={"overall_score": 4, "convergence_quality": "good", "base_validation_loss": 4.0, "final_validation_loss": 0.58,
                 "validation_loss_improvement": 0.855, "perplexity": 1.79, "base_perplexity": 54.6,
                 "score_reason": "validation loss 85.5% lower", "score_rule": "score from the relative improvement"},
        eval_summary={"base": {"exact_match": 0.1}, "tuned": {"exact_match": 0.6}},
        eval_samples=[EvalSample(prompt=f"Where is my order? {EVIL}", reference="It shipped.", base="No idea.",
                                 tuned="It shipped.", match=True)],
        cost=1.23, estimated_cost=1.0, max_cost=5.0, cost_breakdown={"compute": 1.2, "storage": 0.03},
        queued_at="2026-12-01T10:00:00Z", started_at="2026-12-01T10:00:30Z", completed_at="2026-12-01T11:02:00Z",
        events=[TimelineEvent("2026-12-01T11:02:01Z", "artifact_ready", f"Model {EVIL} ready")],
        trackers={"mlflow": {"status": "done", "where": "sqlite:///home/mlflow/mlflow.db", "error": None}},
        generated_at="2026-12-02T09:00:00Z", version="0.1.0",
    )
    data.update(overrides)
    return ReportData(**data)


# ---------------------------------------------------------------- pure rendering

def test_user_provided_text_renders_as_text_never_as_markup():
    page = render_report(report_data(error=f"Traceback: {EVIL}", host=EVIL, job_id="01j<u>x"))
    parsed = Elements(page)
    assert [tag for tag, _ in parsed.tags if tag in ("script", "u", "iframe", "img", "link")] == []
    text = "".join(parsed.text)
    assert f"support {EVIL}" in text and f"Where is my order? {EVIL}" in text and f"Traceback: {EVIL}" in text
    assert f"Model {EVIL} ready" in text and "01j<u>x" in text
    assert EVIL not in page  # only its escaped form is in the file


def test_the_file_needs_no_network_and_holds_everything_in_one_document():
    page = render_report(report_data())
    assert re.findall(r"https?://[^\"' )]+", page) == ["http://www.w3.org/2000/svg"] * 4  # the SVG namespace, never fetched
    assert not re.search(r"<(script|link|img|iframe)\b|\bsrc=|url\(", page)
    assert page.count("<svg") == 4 and page.startswith("<!DOCTYPE html>")


def test_a_finished_job_shows_its_quality_eval_cost_and_timeline():
    text = " ".join(Elements(render_report(report_data())).text)
    assert "85.5% lower than the base model" in text and "4/5" in text and "-85.5%" in text
    assert "score from the relative improvement" in text
    assert "tuned.exact_match" in text and "It shipped." in text and "✓" in text
    assert "$1.23" in text and "23% over" in text and "$5.00" in text
    assert "2 × A100-80GB" in text and "gpu-box" in text and "q_proj, v_proj" in text
    timeline = text.split("Timeline", 1)[1]
    times = re.findall(r"2026-12-01 \d\d:\d\d:\d\d UTC", timeline)
    assert len(times) == 4 and times == sorted(times) and "+1 h 02 min" in timeline and "sqlite:///home/mlflow/mlflow.db" in text


def test_thousands_of_points_are_downsampled_but_keep_their_spikes():
    points = training_points(20_000, 5000)
    spike = 10_001
    points = [ReportPoint(**{**p.__dict__, "training_loss": 50.0}) if p.step == spike and p.split == "train" else p for p in points]
    page = render_report(report_data(points=points))
    lines = Elements(page).polylines()
    assert 100 < lines[("loss", "train")] <= MAX_POINTS + 2 and lines[("loss", "validation")] == 5
    assert len(page) < 250_000
    kept = downsample([(float(p.step), p.training_loss) for p in points if p.split == "train"])
    assert (float(spike), 50.0) in kept and kept[0][0] == 1 and kept[-1][0] == 20_000


def test_a_failed_job_without_points_renders_with_its_error():
    page = render_report(ReportData(job_id="01jfail", status="failed", base_model="org/model", error="CUDA out of memory",
                                    queued_at="2026-12-01T10:00:00Z"))
    text = " ".join(Elements(page).text)
    assert "failed" in text and "CUDA out of memory" in text and "No metric points were recorded" in text
    assert "No quality measurement" in text and "<polyline" not in page


def test_a_run_without_validation_draws_the_training_curve_alone():
    points = [p for p in training_points(50, 1000) if p.split == "train"]
    lines = Elements(render_report(report_data(points=points, quality=None))).polylines()
    assert lines[("loss", "train")] == 50 and ("loss", "validation") not in lines
    assert lines[("learning_rate", "learning rate")] == 50


def test_without_a_model_the_losses_come_from_the_curves():
    points = training_points(30, 10)  # validation 4.0 at step 0, ~0.62 at step 30
    text = " ".join(Elements(render_report(report_data(status="cancelled", points=points, quality=None))).text)
    final = points[-1].validation_loss
    assert f"{(4.0 - final) / 4.0:.1%} lower than the base model" in text and f"{final:.4g}" in text
    assert "cancelled" in text.split("Timeline", 1)[1]


def test_ticks_are_round_numbers_covering_the_range():
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(-0.00012, 0.00021, 3) == [-0.0001, 0.0, 0.0001, 0.0002]
    assert nice_ticks(3, 97, 4) == [20, 40, 60, 80]
    assert nice_ticks(5.0, 5.0) == [5.0]


# ---------------------------------------------------------------- in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))


def _pixels_near(image, color: str, tolerance: int = 40):
    """(x, y) coordinates of the screenshot's pixels within `tolerance` of `color`, per channel."""
    import numpy as np

    pixels = np.asarray(image, dtype=np.int16)
    near = (np.abs(pixels - np.array(_rgb(color), dtype=np.int16)) <= tolerance).all(axis=2)
    ys, xs = np.nonzero(near)
    return list(zip(xs.tolist(), ys.tolist()))


def render_in_chromium(page, tmp_path):
    """(the DOM as headless Chromium built it, its 1100x1400 screenshot's path) of `page`.
    No network: the background-networking flags keep Chromium from reaching out at all."""
    png = tmp_path / "report.png"
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1400", "--hide-scrollbars",
            f"--screenshot={png}", "--dump-dom", page.as_uri()]
    shown = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    return Elements(shown.stdout), png


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium, see scripts/system-deps.sh)")
def test_the_report_renders_in_headless_chromium_with_its_content_and_curves(tmp_path):
    from PIL import Image

    page = tmp_path / "report.html"
    page.write_text(render_report(report_data()), encoding="utf-8")
    dom, png = render_in_chromium(page, tmp_path)
    text = " ".join(dom.text)
    assert "Job 01jreport" in text and f"support {EVIL}" in text and "85.5% lower than the base model" in text
    assert [tag for tag, _ in dom.tags if tag == "script"] == []
    lines = dom.polylines()
    assert lines[("loss", "validation")] == 4 and 100 < lines[("loss", "train")] <= MAX_POINTS + 2
    assert lines[("learning_rate", "learning rate")] > 100 and lines[("throughput", "tokens/s")] > 100

    image = Image.open(png).convert("RGB")
    assert image.size == (1100, 1400)
    train = _pixels_near(image, TRAIN_COLOR)
    xs = [x for x, _ in train]
    assert len(train) > 1000 and max(xs) - min(xs) > 400  # a curve across the chart, not the legend swatch alone
    assert len(_pixels_near(image, VALIDATION_COLOR)) > 200 and len(_pixels_near(image, RATE_COLOR)) > 300
