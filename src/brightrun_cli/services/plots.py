"""`jobs plot`: a job's loss and learning-rate curves as a PNG, for reports.

Drawn with matplotlib's object API on the Agg canvas (no pyplot global state, no
display needed); written to a temporary file then renamed, so a failed plot never
leaves a half-written picture behind.
"""

from __future__ import annotations

from pathlib import Path

from brightrun_cli.errors import ConflictError, UsageError
from brightrun_cli.generation import gguf
from brightrun_cli.services.output_files import check_parent, write_atomically


def plot_job(ws, job_ref: str, out: Path) -> Path:
    """Write training/validation loss and learning rate against step for `job_ref` to `out` (PNG)."""
    from brightrun_cli.services.jobs import get_job
    from brightrun_cli.services.watch import JobFollower

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out} is not a .png file", "name the output file with a .png suffix")
    check_parent(out, "--out")
    job = get_job(ws, job_ref)
    with JobFollower(ws, job.id) as follower:
        follower.poll()
        state = follower.state
    if not state.points:
        raise ConflictError(f"job {job.id} has no metric points yet ({state.job.status})", "plot it once training has logged a step")
    figure = _figure(state)
    return write_atomically(out, lambda handle: figure.savefig(handle, format="png", dpi=120))


def _figure(state):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    job = state.job
    train = [p for p in state.points if p.split == "train" and p.training_loss is not None]
    val = [p for p in state.points if p.split == "validation" and p.validation_loss is not None]
    rates = [p for p in train if p.learning_rate is not None]

    figure = Figure(figsize=(9, 6.5), layout="constrained")
    FigureCanvasAgg(figure)
    loss_ax, lr_ax = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    if train:
        loss_ax.plot([p.step for p in train], [p.training_loss for p in train], label="training loss", color="tab:blue", linewidth=1.2)
    if val:
        loss_ax.plot([p.step for p in val], [p.validation_loss for p in val], label="validation loss", color="tab:red", marker="o", linewidth=1.0)
    loss_ax.set_ylabel("loss")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend(loc="upper right")
    dataset = job.dataset_name or job.dataset_id
    loss_ax.set_title(f"job {job.id} · {dataset} · preset {job.preset_id} · {gguf.describe(job.base_model, short=True)} · {job.status}", fontsize=9)
    if rates:
        lr_ax.plot([p.step for p in rates], [p.learning_rate for p in rates], color="tab:green", linewidth=1.2)
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("step")
    lr_ax.grid(alpha=0.3)
    return figure
