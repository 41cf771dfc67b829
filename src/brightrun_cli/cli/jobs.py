"""`brightrun train` and the `jobs` group: list, show, logs, cancel, retry, resume, rm, plot, export, report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

from brightrun_cli.cli import common, term
from brightrun_cli.services.base_model import display_name

if TYPE_CHECKING:
    from brightrun_cli.registry.rows import JobRow

jobs_app = common.Group(name="jobs", help="Training jobs: list, show, logs, cancel, retry, resume, rm, plot, export, report.", no_args_is_help=True)

JobArg = Annotated[str, common.Arg(help="Job id or unique id prefix (see 'brightrun jobs list').", show_default=False)]


commands = common.Group()  # what this module adds to the root command: `train` and the `jobs` group
commands.add_group(jobs_app)


@commands.command("train")
def train(
    ctx: common.Context,
    dataset: common.DatasetOpt,
    preset: common.PresetOpt = None,
    overrides: common.SetOpt = None,
    config_file: common.ConfigOpt = None,
    base_model: common.BaseModelOpt = None,
    host: common.HostOpt = None,
    hosts: Annotated[Optional[str], common.Opt("--hosts", help="Comma-separated SSH hosts for a multi-node run (the first is the main node).", show_default=False)] = None,
    gpus: common.GpusOpt = None,
    nodes: Annotated[Optional[int], common.Opt("--nodes", help="Nodes of a Slurm host's job (at most the host's --nodes-max); --gpus is then per node.", show_default=False)] = None,
    max_cost: common.MaxCostOpt = None,
    accelerate_config: Annotated[Optional[Path], common.Opt("--accelerate-config", help="accelerate config file (FSDP, DeepSpeed) passed to 'accelerate launch --config_file'; brightrun's process counts, rendezvous and precision still apply.", show_default=False)] = None,
    report_to: Annotated[Optional[str], common.Opt("--report-to", help="Experiment trackers, comma-separated: tensorboard, mlflow, wandb (default: config.toml report_to; 'none' for none).", show_default=False)] = None,
    require: common.RequireOpt = None,
    detach: Annotated[bool, common.Opt("--detach", help="Queue the job, print its id and return.")] = False,
    dry_run: Annotated[bool, common.Opt("--dry-run", help="Print the resolved spec and launch command; change nothing.")] = False,
    force: Annotated[bool, common.Opt("--force", help="Queue it even when the pre-flight says it cannot run (base model files missing, does not fit in memory).")] = False,
    json_output: common.JsonOpt = False,
) -> None:
    """Queue a LoRA training run (validated and estimated first) and follow it until it ends.

    Before queuing, the base model's files are checked (weights, tokenizer, config) and
    the estimate must fit in memory; --force queues it anyway.

    Exit codes when followed: 0 completed, 3 failed, 4 cancelled, 6 a --require failed on the
    job's answer eval (see 'brightrun watch').

    Examples:
      brightrun train --dataset support-v1 --preset tiny --base-model builtin:tiny
      brightrun train -d support-v1 -p tiny --base-model ./SmolLM2-135M-Instruct.Q4_1.gguf --require "rougeL>base"
      brightrun train -d support-v1 -p balanced --base-model ./Mistral-7B --max-cost 25 --detach
      brightrun train -d support-v1 --host gpu-box --gpus 2 --set learning_rate=1e-4 --dry-run
      brightrun train -d support-v1 -p tiny --base-model builtin:tiny --report-to tensorboard,mlflow
    """
    from brightrun_cli.errors import UsageError
    from brightrun_cli.services import training
    from brightrun_cli.services.evals import parse_requirements

    if host and hosts:
        raise UsageError("--host and --hosts were both given", "use --host NAME for one host, --hosts a,b for a multi-node run")
    requirements = parse_requirements(require)
    if requirements and detach:
        raise UsageError("--require is checked at the end of a followed run", "drop --detach, or check later with 'brightrun watch JOB --require ...'")
    ws = common.workspace(ctx)
    request = training.TrainRequest(
        dataset=dataset, preset=preset, overrides=tuple(overrides or ()), config_file=config_file, base_model=base_model,
        host=host, hosts=tuple(h.strip() for h in hosts.split(",") if h.strip()) if hosts else (), gpus=gpus,
        nodes=nodes, max_cost=max_cost, accelerate_config=accelerate_config, report_to=report_to, force=force,
        requirements=tuple(requirements),
    )
    submitted = training.train(ws, request, dry_run=dry_run)
    plan, job = submitted.plan, submitted.job
    if job is None:  # a dry run: the gates were parsed and the held-out split they need checked
        if json_output:
            common.print_json({**plan.to_json(), "require": [r._asdict() for r in requirements]})  # value null: the base model's
        else:
            _print_plan(plan)
            if requirements:
                common.echo(f"gates: {', '.join(r.text for r in requirements)} (checked on the answer eval at the end of the "
                            "followed run; exit 6 if one fails)")
        return
    if json_output:
        # the first line of the NDJSON stream a followed run goes on with ("metric", "status", "model")
        common.print_json({"type": "job", **job.to_json(), "estimate": plan.estimate.to_json()})
    else:
        _print_estimate(plan)
        state = "started" if job.status != "queued" else "queued (waiting for a free slot)"
        common.echo(f"job {job.id} {state} on {', '.join(job.host_names)}")
    if detach:
        if not json_output:
            common.echo(f"follow it with: brightrun watch {job.id}")
        return
    from brightrun_cli.cli.watch import follow_job

    raise SystemExit(follow_job(ws, job.id, json_output=json_output, requirements=requirements))


def _print_estimate(plan) -> None:

    est = plan.estimate.to_json()
    details = est.get("training_details") or {}
    budget = f", budget ${plan.max_cost:,.2f}" if plan.max_cost is not None else ""
    common.echo(
        f"estimate: ${est['estimated_cost']:,.2f} (compute ${est['cost_breakdown']['compute']:,.2f} + storage ${est['cost_breakdown']['storage']:,.2f}), "
        f"{common.human_duration(plan.estimate.estimated_duration_hours * 3600)}, {details.get('total_steps')} steps on {plan.gpu_config['count']}x {plan.gpu_config['type']}"
        + (f" on each of {plan.gpu_config['nodes']} nodes" if plan.gpu_config.get("nodes") else "") + budget
    )
    for warning in plan.estimate.warnings:
        common.echo(f"warning: {warning}", err=True)


def _print_plan(plan) -> None:
    import json

    con = common.console()
    con.print(f"[bold]dry run[/bold]: nothing was created (job id would be {plan.job_id})")
    con.print(f"dataset {plan.dataset.name} ({plan.dataset.id}), preset {plan.resolved.preset_id}, hosts {', '.join(h.name for h in plan.hosts)}")
    _print_estimate(plan)
    if plan.accelerate_config is not None:
        common.echo(f"accelerate config {plan.accelerate_config.path} ({plan.accelerate_config.distributed_type}), "
                   f"copied into the run dir as {plan.spec['accelerate_config']}")
    con.print("[bold]spec.json[/bold]")
    common.echo(json.dumps(plan.spec, indent=2))
    con.print("[bold]launch command[/bold]")
    common.echo(shlex.join(plan.argv))
    if plan.batch_script is not None:
        con.print("[bold]batch script[/bold] (sbatch.sh, in the run directory)")
        common.echo(plan.batch_script, nl=False)


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


@jobs_app.command("list")
def list_cmd(
    ctx: common.Context,
    status: Annotated[Optional[str], common.Opt("--status", help="Only these statuses (comma-separated), or 'active'.", show_default=False)] = None,
    limit: common.LimitOpt = None,
    json_output: common.JsonOpt = False,
) -> None:
    """List jobs, most recently queued first (a resumed job counts from its new queueing).

    Examples:
      brightrun jobs list
      brightrun jobs list --status active
      brightrun jobs list --status failed,cancelled --json
    """
    from brightrun_cli.services import jobs

    ws = common.workspace(ctx)
    if json_output:
        common.print_raw_json(jobs.list_jobs_json(ws, status=status, limit=limit))
        return
    rows = jobs.list_jobs(ws, status=status, limit=limit or common.LIST_DEFAULT)
    table = common.list_table("ID", "STATUS", "PROG", "STEP", "PRESET", "HOST", "COST", "EST", "QUEUED",
                              wrap=("HOST",), right=("PROG", "COST", "EST"))
    for job in rows:
        table.add_row(
            common.short_id(job.id), jobs.shown_status(job), f"{job.progress:.0f}%", f"{job.current_step}/{job.total_steps or '?'}", job.preset_id,
            ",".join(job.host_names), _money(job.cost), _money(job.estimated_total_cost), f"{job.queued_at:%m-%d %H:%M}",
        )
    con = common.console()
    if not rows:
        con.print("no jobs yet: start one with 'brightrun train --dataset NAME'" if not status else f"no {status} jobs")
        return
    con.print(table)
    if limit is None and len(rows) == common.LIST_DEFAULT:
        common.more_rows_note(len(rows), jobs.count_jobs(ws, status=status))


@jobs_app.command("show")
def show_cmd(ctx: common.Context, job: JobArg, json_output: common.JsonOpt = False) -> None:
    """Show one job: status, progress, metrics, cost, its experiment trackers, and what to run next.

    Examples:
      brightrun jobs show 01jd4
      brightrun jobs show 01jd4 --json
    """
    from brightrun_cli.services import jobs, trackers

    ws = common.workspace(ctx)
    shown = trackers.show_job(ws, job)
    if json_output:
        common.print_json(shown)
        return
    resumable = shown.job.status in ("failed", "cancelled") and jobs.has_progress_to_resume(ws, shown.job)
    _print_job(shown.job, jobs.shown_status(shown.job), shown.trackers, resumable=resumable, attempts=shown.attempts)


def _tracker_line(record: dict) -> str:
    """One tracker of `jobs show`: its status, where its data went, its error."""
    line = f"{record.get('status')}"
    if record.get("where"):
        line += f"  {record['where']}"
    if record.get("run_id"):
        line += f" (run {record['run_id']})"
    if record.get("points"):
        line += f", {record['points']} points"
    if record.get("remote"):
        line += ", copied here from the host's run dir when the job ended"
    if record.get("error"):
        line += f"; error: {record['error']}"
    return line


def _print_job(job: "JobRow", shown: str, trackers: dict | None = None, *, resumable: bool, attempts: list[dict] = ()) -> None:
    con = common.console()
    if shown != job.status:  # e.g. waiting in Slurm's queue: the stage says why, the status stays
        con.print(f"[bold]job {job.id}[/bold]  [bold yellow]{term.escape(job.current_stage)}[/bold yellow] (status {job.status})")
    else:
        con.print(f"[bold]job {job.id}[/bold]  {job.status} ({term.escape(job.current_stage)})")
    nodes = job.gpu_config.get("nodes")
    lines = [
        ("dataset", job.dataset_id), ("preset", job.preset_id), ("base model", display_name(job.base_model)),
        ("hosts", ", ".join(job.host_names)),
        ("gpus", f"{job.gpu_config.get('count')}x {job.gpu_config.get('type')}" + (f" on each of {nodes} nodes" if nodes else "")),
        ("progress", f"{job.progress:.1f}%  epoch {job.current_epoch}/{job.total_epochs}  step {job.current_step}/{job.total_steps or '?'}"),
        ("cost", f"{_money(job.cost)} (estimate {_money(job.estimated_total_cost)}"
                 + (f", budget {_money(job.max_cost)})" if job.max_cost is not None else ")")),
        ("queued", f"{job.queued_at:%Y-%m-%d %H:%M:%S} UTC"),
    ]
    if job.started_at:
        lines.append(("started", f"{job.started_at:%Y-%m-%d %H:%M:%S} UTC"))
    if job.completed_at:
        lines.append(("ended", f"{job.completed_at:%Y-%m-%d %H:%M:%S} UTC"))
    elif job.estimated_completion_at:
        lines.append(("eta", f"{job.estimated_completion_at:%Y-%m-%d %H:%M:%S} UTC"))
    for key in ("training_loss", "validation_loss", "learning_rate", "throughput"):
        value = (job.current_metrics or {}).get(key)
        if value is not None:
            lines.append((key.replace("_", " "), f"{value:.4g}"))
    if job.retry_count or job.resume_count:
        ran = ""
        if len(attempts) > 1:  # the cost covers every attempt: so does the time shown beside it
            ran = f"; ran {common.human_duration(sum(a['hours'] or 0 for a in attempts) * 3600)} over {len(attempts)} attempts"
        lines.append(("attempts", f"retry {job.retry_count}, resumed {job.resume_count}x{ran}"))
    if job.artifact_id:
        lines.append(("model", job.artifact_id))
    if job.error_message:
        lines.append(("error", job.error_message))
    lines.append(("run dir", job.run_dir or "-"))
    if job.external_job_id:
        lines.append(("launched as", job.external_job_id))
    for key, value in lines:
        con.print(f"  {key:<16}{value}", markup=False)
    if trackers:
        con.print("  trackers")
        for name, record in trackers.items():
            con.print(f"    {name:<14}{_tracker_line(record)}", markup=False)
    from brightrun_cli.services.jobs import again_command

    again = again_command(job, resumable=resumable)  # resume needs a checkpoint
    hint = {
        "queued": f"brightrun watch {job.id}", "initializing": f"brightrun watch {job.id}", "running": f"brightrun watch {job.id}",
        "completed": "brightrun models list", "failed": f"brightrun jobs logs {job.id}  /  {again}", "cancelled": again,
    }[job.status]
    con.print(f"  {'next':<16}{hint}", markup=False)


@jobs_app.command("logs")
def logs_cmd(
    ctx: common.Context,
    job: JobArg,
    follow: Annotated[bool, common.Opt("--follow", "-f", help="Keep printing new lines until the job ends.")] = False,
    which: Annotated[str, common.Opt("--log", help="Which log: trainer, launcher (accelerate's output) or supervisor.")] = "trainer",
) -> None:
    """Print a job's log (with -f, follow it until the job ends).

    Examples:
      brightrun jobs logs 01jd4
      brightrun jobs logs 01jd4 -f
      brightrun jobs logs 01jd4 --log supervisor
    """
    from brightrun_cli.services import jobs

    try:
        for chunk in jobs.follow_log(common.workspace(ctx), job, which=which, follow=follow):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    except BrokenPipeError:
        raise SystemExit(0) from None


@jobs_app.command("cancel")
def cancel_cmd(ctx: common.Context, job: JobArg, yes: common.YesOpt = False, json_output: common.JsonOpt = False) -> None:
    """Stop a job: TERM its whole process tree, wait for the checkpoint, KILL leftovers; cost so far is recorded.

    Asks for confirmation on a terminal; --yes (or no terminal) does not ask.

    Examples:
      brightrun jobs cancel 01jd4
      brightrun jobs cancel 01jd4 --yes --json
    """
    from brightrun_cli.services import jobs

    ws = common.workspace(ctx)
    before = jobs.get_job(ws, job)
    if not yes and common.stdin_is_tty() and before.status != "cancelled":
        common.confirm(f"cancel job {before.id} ({before.status}, step {before.current_step})?", abort=True)
    row = jobs.cancel_job(ws, before.id)
    if json_output:
        common.print_json({**row.to_json(), "already_cancelled": before.status == "cancelled"})
        return
    if before.status == "cancelled":  # a second cancel (a script's retry): what was asked is so, exit 0
        common.echo(f"job {row.id} was already cancelled")
    elif row.started_at is None:  # never ran: no step, no cost, no checkpoint to resume from
        common.echo(f"job {row.id} {row.status} before it started; nothing billed")
    else:
        common.echo(f"job {row.id} {row.status} at step {row.current_step}; cost {_money(row.cost)}")
    if row.status != "cancelled":
        return
    if row.started_at is None:
        common.echo(f"run it again with: {jobs.again_command(row, resumable=False)}")
    elif jobs.has_progress_to_resume(ws, row):
        common.echo(f"continue it with: {jobs.again_command(row, resumable=True)}")
    else:  # stopped before the trainer saved a checkpoint: only a fresh start can follow
        common.echo(f"no checkpoint was saved; run it again with: {jobs.again_command(row, resumable=False)}")


@jobs_app.command("retry")
def retry_cmd(
    ctx: common.Context,
    job: JobArg,
    max_cost: Annotated[Optional[float], common.Opt("--max-cost", help="A new budget in USD (default: the job's; needed after a budget stop).", show_default=False)] = None,
    json_output: common.JsonOpt = False,
) -> None:
    """Run a failed or cancelled job again from scratch, as a new job.

    Examples:
      brightrun jobs retry 01jd4
      brightrun jobs retry 01jd4 --max-cost 40 --json
    """
    from brightrun_cli.services import jobs

    row = jobs.retry_job(common.workspace(ctx), job, max_cost=max_cost)
    if json_output:
        common.print_json(row)
    else:
        common.echo(f"job {row.id} {row.status} (retry {row.retry_count} of {job}); follow it with: brightrun watch {row.id}")


@jobs_app.command("resume")
def resume_cmd(
    ctx: common.Context,
    job: JobArg,
    max_cost: Annotated[Optional[float], common.Opt("--max-cost", help="A new budget in USD (after a budget stop).", show_default=False)] = None,
    json_output: common.JsonOpt = False,
) -> None:
    """Continue a failed or cancelled job from its last checkpoint (same job id).

    Examples:
      brightrun jobs resume 01jd4
      brightrun jobs resume 01jd4 --max-cost 50
    """
    from brightrun_cli.services import jobs

    row = jobs.resume_job(common.workspace(ctx), job, max_cost=max_cost)
    if json_output:
        common.print_json(row)
    else:
        common.echo(f"job {row.id} {row.status} (resume {row.resume_count}); follow it with: brightrun watch {row.id}")


@jobs_app.command("rm")
def rm_cmd(ctx: common.Context, job: JobArg, yes: common.YesOpt = False, json_output: common.JsonOpt = False) -> None:
    """Remove a finished job, its metric points and run directory (its model and cost records stay).

    Examples:
      brightrun jobs rm 01jd4 --yes
    """
    from brightrun_cli.errors import UsageError
    from brightrun_cli.services import jobs

    ws = common.workspace(ctx)
    row = jobs.get_job(ws, job)
    if not yes:
        if not common.stdin_is_tty():
            raise UsageError(f"removing job {row.id} needs confirmation", "pass --yes")
        common.confirm(f"remove job {row.id} ({row.status}) and its run directory?", abort=True)
    removed = jobs.remove_job(ws, row.id)
    if json_output:
        common.print_json({"id": removed.id, "removed": True})
    else:
        common.echo(f"removed job {removed.id}")


@jobs_app.command("plot")
def plot_cmd(
    ctx: common.Context,
    job: JobArg,
    out: Annotated[Path, common.Opt("--out", "-o", help="PNG file to write.", show_default=False)],
) -> None:
    """Write the job's loss and learning-rate curves as a picture.

    Examples:
      brightrun jobs plot 01jd4 --out curves.png
    """
    from brightrun_cli.services.plots import plot_job

    path = plot_job(common.workspace(ctx), job, out)
    common.echo(f"wrote {path}")


@jobs_app.command("export")
def export_cmd(
    ctx: common.Context,
    job: JobArg,
    to: Annotated[str, common.Opt("--to", help="Tracker: mlflow or tensorboard.", show_default=False)],
    out: Annotated[Optional[Path], common.Opt("--out", "-o", help="MLflow: a directory for a SQLite store (default: config.toml tracking_uri, else <home>/mlflow). TensorBoard: the event files' directory (default: <home>/tensorboard/<job id>).", show_default=False)] = None,
    json_output: common.JsonOpt = False,
) -> None:
    """Send a job (hyperparameters, every metric point, quality, eval, the adapter) to an experiment tracker.

    Each export is a new tracker run; a job trained with --report-to is already there.

    Examples:
      brightrun jobs export 01jd4 --to mlflow
      brightrun jobs export 01jd4 --to tensorboard --out ./tb/01jd4
      brightrun jobs export 01jd4 --to mlflow --out ./mlruns-share --json
    """
    from brightrun_cli.services import trackers

    result = trackers.export_job(common.workspace(ctx), job, to, out)
    if json_output:
        common.print_json({"tracker": result.tracker, "where": result.where, "run_id": result.run_id,
                           "points": result.points, "artifact": result.artifact})
        return
    run = f" as run {result.run_id}" if result.run_id else ""
    common.echo(f"exported {result.points} points of job {job} to {result.tracker}{run}: {result.where}")
    if result.artifact:
        common.echo(f"adapter: {result.artifact}")
    common.echo("open it with: " + trackers.EXPORT_HINT[result.tracker].format(where=shlex.quote(result.where)))


@jobs_app.command("report")
def report_cmd(
    ctx: common.Context,
    job: JobArg,
    out: Annotated[Path, common.Opt("--out", "-o", help="HTML file to write.", show_default=False)],
) -> None:
    """Write one self-contained HTML page about a job: curves, quality, evals, hyperparameters, cost, timeline.

    The file needs no network to view: attach it to a ticket or mail it.

    Examples:
      brightrun jobs report 01jd4 --out report.html
    """
    from brightrun_cli.services.report import write_report

    path = write_report(common.workspace(ctx), job, out)
    common.echo(f"wrote {path}")
