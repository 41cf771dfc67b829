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


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_the_plot_and_the_report_get_the_permissions_the_umask_gives_and_replace_an_older_file_whole(tmp_path, cli, mask):
    """Results meant to be shared: what `open()` would give them (a scratch file's 0600 was
    the plot's until now), written through a temporary file that no symlink can redirect."""
    import os
    import stat

    ws = Workspace.open()
    job_id = running_job(ws, done=5)
    plot, report = tmp_path / "loss.png", tmp_path / "report.html"
    report.write_text("older")
    os.symlink(tmp_path / "elsewhere", tmp_path / f".{report.name}.{os.getpid()}.tmp")  # the old, predictable scratch name
    previous = os.umask(mask)
    try:
        assert cli("jobs", "plot", job_id, "--out", str(plot)).exit_code == 0
        assert cli("jobs", "report", job_id, "--out", str(report)).exit_code == 0
    finally:
        os.umask(previous)
    for path in (plot, report):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, (path, oct(path.stat().st_mode))
    assert report.read_text().startswith("<!DOCTYPE html>") and not (tmp_path / "elsewhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.is_symlink()) == ["loss.png", "report.html"]
