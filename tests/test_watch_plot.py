"""`jobs plot`: the loss and learning-rate curves as a PNG."""

from __future__ import annotations

import pytest

from brightrun_cli.errors import ConflictError, UsageError
from brightrun_cli.services.plots import plot_job
from brightrun_cli.workspace import Workspace
from watch_sim import make_job, running_job

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_a_png_of_the_curves(tmp_path, cli):
    ws = Workspace.open()
    job_id = running_job(ws, done=20)
    out = tmp_path / "loss.png"
    result = cli("jobs", "plot", job_id[:10], "--out", str(out))
    assert result.exit_code == 0, result.stderr
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def test_plot_refuses_a_job_without_points_and_bad_paths(tmp_path):
    ws = Workspace.open()
    job_id = make_job(ws)
    with pytest.raises(ConflictError, match="no metric points yet"):
        plot_job(ws, job_id, tmp_path / "a.png")
    with pytest.raises(UsageError, match="not a .png"):
        plot_job(ws, job_id, tmp_path / "a.jpg")
    with pytest.raises(UsageError, match="does not exist"):
        plot_job(ws, job_id, tmp_path / "missing" / "a.png")
    assert list(tmp_path.iterdir()) == []
