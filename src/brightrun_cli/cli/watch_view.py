"""What `watch` draws: pure functions from watch state to Rich renderables and lines.

Nothing here reads the registry or the clock: the caller passes the state and `now`,
so every state of a job renders the same way in a test's fixed-width console as on a
real terminal. Imports only rich/stdlib (the state classes are duck-typed).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from brightrun_cli.services.base_model import display_name

if TYPE_CHECKING:
    from brightrun_cli.services.watch import BoardRow, JobView, Point, WatchState

STATUS_STYLES = {
    "queued": "yellow",
    "initializing": "cyan",
    "running": "bold blue",
    "completed": "bold green",
    "failed": "bold red",
    "cancelled": "magenta",
}
STATUS_MARKS = {"queued": "◌", "initializing": "◐", "running": "●", "completed": "✔", "failed": "✘", "cancelled": "■"}
# A started job waiting in Slurm's queue looks queued (services.watch.JobView.shown_status).
STATUS_STYLES["queued in Slurm"] = STATUS_STYLES["queued"]
STATUS_MARKS["queued in Slurm"] = STATUS_MARKS["queued"]
# Side-by-side columns only where both halves keep room for a readable curve.
WIDE = 120
SUMMARY_WIDTH = 60


def duration(value: timedelta | None) -> str:
    if value is None:
        return "-"
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def number(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


def status_text(status: str) -> Text:
    return Text(f"{STATUS_MARKS.get(status, '?')} {status}", style=STATUS_STYLES.get(status, ""))


def _delta(current: float | None, previous: float | None) -> Text:
    """Change since the previous point; falling loss is good (green)."""
    if current is None or previous is None:
        return Text("")
    change = current - previous
    if abs(change) < 5e-5:
        return Text(" ±0.0000", style="dim")
    return Text(f" {'▼' if change < 0 else '▲'}{abs(change):.4f}", style="green" if change < 0 else "red")


def _steps(job: JobView) -> str:
    return f"{job.current_step}/{job.total_steps}" if job.total_steps else str(job.current_step)


def _gpus(job: JobView) -> str:
    count = job.gpu_count or 1
    kind = job.gpu_type or "gpu"
    nodes = f" on {job.nodes} nodes" if job.nodes > 1 else ""
    return f"{count}× {kind}{nodes}"


def header(job: JobView, now: datetime) -> RenderableType:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="ellipsis", no_wrap=True)
    started = "waiting" if job.waiting else "elapsed"
    line = status_text(job.shown_status) + Text(f"  {started} {duration(job.elapsed(now))}", style="dim")
    if job.shown_status != job.status:  # waiting in Slurm's queue: the stage is the news
        line.append(f"  {job.current_stage}", style=STATUS_STYLES["queued"])
    elif job.current_stage and job.current_stage != job.status:
        line.append(f"  ({job.current_stage})", style="dim")
    grid.add_row(Text("job", style="dim"), Text(job.id, style="bold"))
    grid.add_row(Text("status", style="dim"), line)
    grid.add_row(Text("data", style="dim"), Text(f"{job.dataset_name or job.dataset_id} · preset {job.preset_id} · {display_name(job.base_model, short=True)}"))
    hosts = ", ".join(job.host_names) or job.host_name or "local"
    grid.add_row(Text("on", style="dim"), Text(f"{hosts} · {_gpus(job)}"))
    return grid


def progress(job: JobView, now: datetime) -> RenderableType:
    fraction = job.fraction
    bar = ProgressBar(total=1.0, completed=fraction)
    epochs = f"epoch {job.current_epoch}/{job.total_epochs}"  # current_epoch counts the epoch under way from 1
    eta = job.eta(now)
    line = Text(f"{epochs}  step {_steps(job)}  {fraction * 100:.0f}%")
    if eta is not None:
        line.append(f"  ETA {duration(eta)}", style="bold")
    return Group(line, bar)


def metrics(state: WatchState) -> RenderableType:
    train, val = state.last("train"), state.last("validation")
    grid = Table.grid(padding=(0, 1), expand=False)
    for _ in range(2):
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(no_wrap=True, min_width=16)
    prev_train, prev_val = state.last("train", 1), state.last("validation", 1)
    train_loss = Text(number(train and train.training_loss)) + _delta(
        train and train.training_loss, prev_train and prev_train.training_loss
    )
    val_loss = Text(number(val and val.validation_loss)) + _delta(
        val and val.validation_loss, prev_val and prev_val.validation_loss
    )
    grid.add_row("train loss", train_loss, "val loss", val_loss)
    grid.add_row("learning rate", number(train and train.learning_rate, ".2e"), "grad norm", number(train and train.gradient_norm, ".3f"))
    gpu = "-"
    if train and (train.gpu_utilization is not None or train.gpu_memory is not None):
        gpu = f"{number(train.gpu_utilization, '.0f')}% · {number(train.gpu_memory, '.1f')} GiB"
    grid.add_row("tokens/s", number(train and train.throughput, ",.0f"), "GPU", gpu)
    return grid


def cost(job: JobView) -> Text:
    label = "cost" if job.terminal else "cost so far"
    line = Text(f"{label} ", style="dim") + Text(money(job.cost), style="bold")
    line.append(f" of estimated {money(job.estimated_total_cost)}")
    if job.estimated_total_cost:
        line.append(f" ({job.cost / job.estimated_total_cost * 100:.0f}%)")
    if job.max_cost is not None:
        over = job.cost > job.max_cost
        line.append(f" · budget {money(job.max_cost)}", style="bold red" if over else "")
        if over:
            line.append(" exceeded", style="bold red")
    else:
        line.append(" · no budget (train --max-cost)", style="dim")
    return line


_BRAILLE_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [row][column] in a 2x4 cell


def _trace(line: list[tuple[int, float]]) -> list[tuple[int, int]]:
    """The dots of a polyline through (x, y) points sorted by x: one per column, plus
    the vertical run between neighbours so steep drops stay connected."""
    dots: list[tuple[int, int]] = []
    previous: float | None = None
    for (x0, y0), (x1, y1) in zip(line, line[1:] + line[-1:]):
        for x in range(x0, max(x0, x1 - 1) + 1) if x1 != x0 else (x0,):
            y = y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 != x0 else y0
            low, high = sorted((round(previous if previous is not None else y), round(y)))
            dots.extend((x, dy) for dy in range(low, high + 1))
            previous = y
    return dots


class LossCurve:
    """Training loss as a braille line and validation loss as dots, rescaled to the data
    and to the width it is given on every render."""

    def __init__(self, points: list[Point], total_steps: int | None, height: int = 8):
        self.train = [(p.step, p.training_loss) for p in points if p.split == "train" and p.training_loss is not None]
        self.val = [(p.step, p.validation_loss) for p in points if p.split == "validation" and p.validation_loss is not None]
        self.total_steps = total_steps
        self.height = max(3, height)

    def _bounds(self) -> tuple[float, float, int]:
        values = [v for _, v in self.train + self.val if math.isfinite(v)]
        low, high = min(values), max(values)
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5
        last = max(step for step, _ in self.train + self.val)
        return low, high, max(1, self.total_steps or 0, last)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.train and not self.val:
            yield Text("loss curve: waiting for the first metric point", style="dim")
            return
        low, high, x_max = self._bounds()
        label_width = max(len(f"{high:.3f}"), len(f"{low:.3f}")) + 1
        cols = max(8, options.max_width - label_width - 1)
        rows = self.height
        dots_x, dots_y = cols * 2, rows * 4

        def to_dot(step: int, value: float) -> tuple[int, int]:
            x = round(step / x_max * (dots_x - 1))
            clamped = min(high, max(low, value)) if math.isfinite(value) else high
            y = round((high - clamped) / (high - low) * (dots_y - 1))
            return x, y

        cells = [[0] * cols for _ in range(rows)]
        # One mean per dot column keeps drawing O(width) however many points there are.
        buckets: dict[int, list[float]] = {}
        for step, value in self.train:
            x, y = to_dot(step, value)
            buckets.setdefault(x, []).append(y)
        line = [(x, sum(ys) / len(ys)) for x, ys in sorted(buckets.items())]
        for x, y in _trace(line):
            cells[y // 4][x // 2] |= _BRAILLE_BITS[y % 4][x % 2]
        markers = {(y // 4, x // 2) for x, y in (to_dot(s, v) for s, v in self.val)}
        for r in range(rows):
            label = f"{high:.3f}" if r == 0 else f"{low:.3f}" if r == rows - 1 else ""
            text = Text(label.rjust(label_width - 1) + " ", style="dim")
            text.append("│", style="dim")
            for c in range(cols):
                if (r, c) in markers:
                    text.append("●", style="bold magenta")
                elif cells[r][c]:
                    text.append(chr(0x2800 + cells[r][c]), style="cyan")
                else:
                    text.append(" ")
            yield text
        axis = Text(" " * label_width + "└" + "─" * cols, style="dim")
        yield axis
        end = f"step {x_max}"
        legend = Text(" " * (label_width + 1) + "0", style="dim")
        legend.append("  ")
        legend.append("⠤⠤ train", style="cyan")
        legend.append("  ")
        legend.append("● validation", style="magenta")
        pad = label_width + 1 + cols - legend.cell_len - len(end)
        legend.append(" " * max(1, pad) + end, style="dim")
        yield legend


def logs(lines: list[str], count: int) -> RenderableType:
    text = Text(style="dim", no_wrap=True, overflow="ellipsis")
    for i, line in enumerate(lines[-count:]):
        text.append(("\n" if i else "") + line.expandtabs(4))
    return text


SUMMARY_ROWS = 12  # header 4, blank, progress 2, blank, metrics 3, cost 1


def layout(height: int, *, wide: bool, has_logs: bool, failed: bool) -> tuple[int, int]:
    """Curve rows and log lines that fit `height` terminal rows (one kept for the cursor).

    Narrow: summary, curve and logs stacked; wide: the curve beside the summary, so it
    can be as tall as the summary for free. Logs go first when rows run short."""
    room = height - 1 - 2 - (3 if failed else 0)  # outer panel borders, error panel
    room -= 0 if wide else SUMMARY_ROWS + 1
    logs = min(6, (room - (14 if wide else 6)) // 2) if has_logs else 0
    log_rows = logs + 2 if logs >= 2 else 0
    if wide:
        return max(SUMMARY_ROWS - 2, min(14, room - log_rows - 2)), logs if log_rows else 0
    return max(3, min(12, room - log_rows - 2)), logs if log_rows else 0


class Dashboard:
    """The one-job view. Lays itself out for the width and height it is given."""

    def __init__(self, state: WatchState, now: datetime, height: int | None = None):
        self.state = state
        self.now = now
        self.height = height

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        state, job = self.state, self.state.job
        height = self.height or options.height or console.height or 40
        wide = options.max_width >= WIDE
        failed = job.status == "failed" and bool(job.error_message)
        curve_height, log_count = layout(height, wide=wide, has_logs=bool(state.log_lines), failed=failed)
        summary = Group(header(job, self.now), Text(""), progress(job, self.now), Text(""), metrics(state), cost(job))
        curve = LossCurve(state.points, job.total_steps, height=curve_height)
        title = Text("brightrun watch", style="bold")
        if wide:
            top = Table.grid(expand=True, padding=(0, 2))
            top.add_column(width=SUMMARY_WIDTH)
            top.add_column(ratio=1)
            top.add_row(summary, curve)
            body: list[RenderableType] = [top]
        else:
            body = [summary, Text(""), curve]
        if failed:
            body.append(Panel(Text(job.error_message, style="red"), title="error", border_style="red", title_align="left"))
        for line in state.tracker_problems.values():  # the job goes on without the tracker: one line each
            body.append(Text(f"warning: {line}", style="yellow"))
        yield Panel(Group(*body), title=title, title_align="left", border_style=STATUS_STYLES.get(job.status, ""))
        if log_count:
            yield Panel(logs(list(state.log_lines), log_count), title="log", title_align="left", border_style="dim")


def render_job(state: WatchState, now: datetime, height: int | None = None) -> RenderableType:
    return Dashboard(state, now, height)


class Board:
    """The all-jobs table: active jobs first, then the most recent finished ones. Under
    100 columns the id is cut to a prefix (still accepted by `watch`) and tokens/s dropped."""

    def __init__(self, rows: list[BoardRow], now: datetime, *, selectable: bool = False):
        self.rows = rows
        self.now = now
        self.selectable = selectable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.rows:
            yield Text("no jobs yet: start one with 'brightrun train --dataset NAME'", style="dim")
            return
        narrow = options.max_width < 100
        table = Table(title="brightrun jobs", title_justify="left", box=None, padding=(0, 1, 0, 0), header_style="bold underline")
        if self.selectable:
            table.add_column("#", justify="right", style="dim")
        table.add_column("job", no_wrap=True, max_width=12 if narrow else 26, overflow="crop")
        table.add_column("dataset", no_wrap=True, max_width=16 if narrow else 24, overflow="ellipsis")
        table.add_column("status", no_wrap=True)
        table.add_column("progress", no_wrap=True)
        numbers = ("loss", "cost", "ETA") if narrow else ("loss", "tok/s", "cost", "ETA")
        for name in numbers:
            table.add_column(name, justify="right", no_wrap=True)
        for index, row in enumerate(self.rows, start=1):
            job = row.job
            bar = Table.grid()
            bar.add_row(ProgressBar(total=1.0, completed=job.fraction, width=6), f" {job.fraction * 100:3.0f}%")
            values = {
                "loss": number(row.training_loss),
                "tok/s": number(row.throughput, ",.0f"),
                "cost": money(job.cost),
                "ETA": duration(job.eta(self.now)) if job.status == "running" else "",
            }
            cells: list[RenderableType] = [str(index)] if self.selectable else []
            cells += [job.id, job.dataset_name or job.dataset_id, status_text(job.shown_status), bar]
            table.add_row(*cells, *(values[name] for name in numbers))
        yield table
        if self.selectable:
            yield Text("press 1-9 to follow a job, q to quit", style="dim")


def render_board(rows: list[BoardRow], now: datetime, *, selectable: bool = False) -> RenderableType:
    return Board(rows, now, selectable=selectable)


def point_line(point: Point, job: JobView) -> str:
    """One plain line per metric point (non-terminal output)."""
    steps = f"{point.step}/{job.total_steps}" if job.total_steps else str(point.step)
    if point.split == "validation":
        return f"step {steps} epoch {point.epoch:.2f} val loss {number(point.validation_loss)}"
    parts = [f"step {steps}", f"epoch {point.epoch:.2f}", f"loss {number(point.training_loss)}", f"lr {number(point.learning_rate, '.2e')}"]
    if point.gradient_norm is not None:
        parts.append(f"grad {number(point.gradient_norm, '.3f')}")
    if point.throughput is not None:
        parts.append(f"tok/s {number(point.throughput, '.0f')}")
    return " ".join(parts)


def status_line(job: JobView, now: datetime) -> str:
    """One plain line per status change."""
    text = f"job {job.id} {job.status}"
    if job.status == "queued":
        return text + f" (preset {job.preset_id}, dataset {job.dataset_name or job.dataset_id})"
    if job.shown_status != job.status:
        return f"job {job.id} {job.current_stage} (status {job.status}, on {job.host_name or 'local'})"
    if job.terminal and job.started_at is None:
        text += " before it started"
        if job.error_message:
            text += f": {job.error_message}"
        return text
    if job.terminal:
        text += f" after {duration(job.elapsed(now))}"
        if job.earlier_attempts_s > 0:  # a resumed job: this attempt, then all of them (as its cost covers them)
            total = (job.elapsed(now) or timedelta(0)).total_seconds() + job.earlier_attempts_s
            text += f" (this attempt; {duration(timedelta(seconds=total))} over {job.resume_count + 1} attempts)"
        text += f", step {_steps(job)}, cost {money(job.cost)}"
        if job.status in ("failed", "cancelled") and job.error_message and job.error_message != "cancelled by the user":
            text += f": {job.error_message}"  # why it ended: e.g. over --max-cost, or cancelled in Slurm
        return text
    return text + f" on {job.host_name or 'local'} ({_gpus(job)})"


def board_line(row: BoardRow) -> str:
    job = row.job
    return f"{job.id} {job.dataset_name or job.dataset_id} {job.status} step {_steps(job)} loss {number(row.training_loss)} cost {money(job.cost)}"
