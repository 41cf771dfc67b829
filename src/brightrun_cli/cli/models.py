"""`brightrun models list|show|export|merge|rm`: the adapters that completed jobs left behind."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brightrun_cli.cli import common

models_app = typer.Typer(
    help="Trained adapters: measured quality, model card, export and merge.",
    no_args_is_help=True,
)

ModelArg = Annotated[str, typer.Argument(help="Model id, unique id prefix, NAME@VERSION, or NAME (its newest version).", show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Write into a non-empty target, overwriting files of the same names.")]


def _fmt(value, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


@models_app.command("list")
def list_command(
    ctx: typer.Context,
    sort: Annotated[str, typer.Option("--sort", help="created (newest first), score (best first) or cost (cheapest first).")] = "created",
    limit: common.LimitOpt = None,
    json_output: common.JsonOpt = False,
) -> None:
    """List stored models.

    Examples:
      brightrun models list --sort score
      brightrun models list --json
    """
    from brightrun_cli.services.models import count_models, list_models, list_models_json

    ws = common.workspace(ctx)
    if json_output:
        common.print_raw_json(list_models_json(ws, sort=sort, limit=limit))
        return
    rows = list_models(ws, sort=sort, limit=limit or common.LIST_DEFAULT)
    table = common.list_table("ID", "NAME", "VERSION", "SCORE", "CONVERGENCE", "VAL LOSS", "COST", "CREATED", wrap=("NAME",), right=("COST",))
    for m in rows:
        q = m.quality_metrics
        table.add_row(
            common.short_id(m.id),
            m.name,
            m.version,
            f"{q.get('overall_score')}/5",
            q.get("convergence_quality") or "-",
            f"{_fmt(q.get('base_validation_loss'), '.3g')}→{_fmt(q.get('final_validation_loss'), '.3g')}",
            f"${_fmt(m.training_summary.get('total_cost'), '.2f')}",
            f"{m.created_at:%m-%d %H:%M}",
        )
    if not rows:
        common.console().print("No models yet: a completed 'brightrun train' job stores one.")
        return
    common.console().print(table)
    if limit is None and len(rows) == common.LIST_DEFAULT:
        common.more_rows_note(len(rows), count_models(ws))


@models_app.command("show")
def show_command(ctx: typer.Context, model: ModelArg, json_output: common.JsonOpt = False) -> None:
    """Quality (against the base model), training summary, configuration and files of a model.

    Examples:
      brightrun models show 01jd4
      brightrun models show support-v1-2026-01-31
      brightrun models show support-v1-2026-01-31@1.1.0 --json
    """
    from brightrun_cli.services.models import get_model

    row = get_model(common.workspace(ctx), model)
    if json_output:
        common.print_json(row)
        return
    from rich.table import Table

    out = common.console()
    q, s, c = row.quality_metrics, row.training_summary, row.configuration
    out.print(f"[bold]{row.name}[/bold] v{row.version}  ({row.id})")
    out.print(f"base model {row.base_model}   job {row.job_id}   dataset {row.dataset_id}   status {row.status}")
    improvement = q.get("validation_loss_improvement")
    quality = Table("quality", "", box=None)
    quality.add_row("score", f"{q.get('overall_score')}/5 ({q.get('score_reason')})")
    quality.add_row("convergence", str(q.get("convergence_quality")))
    quality.add_row("validation loss", f"base {_fmt(q.get('base_validation_loss'))} -> tuned {_fmt(q.get('final_validation_loss'))}"
                    + ("" if improvement is None else f" ({improvement:+.1%})"))
    quality.add_row("perplexity", f"base {_fmt(q.get('base_perplexity'))} -> tuned {_fmt(q.get('perplexity'))}")
    quality.add_row("final training loss", _fmt(q.get("final_training_loss")))
    out.print(quality)
    out.print(f"[dim]rule: {q.get('score_rule')}[/dim]")
    training = Table("training", "", box=None)
    tokens = s.get("total_tokens")
    training.add_row("epochs / steps / tokens",
                     f"{s.get('epochs_completed')} / {s.get('total_steps')} / {tokens:,}" if isinstance(tokens, int) else f"{s.get('epochs_completed')} / {s.get('total_steps')} / -")
    training.add_row("duration", f"{_fmt(s.get('duration_s'), '.1f')} s")
    training.add_row("cost", f"${_fmt(s.get('total_cost'), '.2f')}")
    gpu = c.get("gpu_config") or {}
    rate = f" at ${gpu['hourly_rate']:.2f}/h" if isinstance(gpu.get("hourly_rate"), (int, float)) else ""
    training.add_row("preset / GPUs", f"{c.get('preset_id')} / {gpu.get('count', 1)} x {gpu.get('type', '?')}{rate}")
    for key, value in sorted((c.get("hyperparameters") or {}).items()):
        training.add_row(f"  {key}", str(value))
    out.print(training)
    files = Table("file", "size", "sha256", box=None)
    for entry in row.artifacts.get("files", []):
        files.add_row(entry["path"], f"{entry['size']:,}", entry["sha256"][:16])
    out.print(files)
    out.print(f"storage: {row.storage_path}")


@models_app.command("export")
def export_command(
    ctx: typer.Context,
    model: ModelArg,
    target: Annotated[str, typer.Argument(help="Local directory or fsspec URL (e.g. s3://bucket/path).", show_default=False)],
    force: ForceOpt = False,
    json_output: common.JsonOpt = False,
) -> None:
    """Copy a model's PEFT adapter directory (with tokenizer, config, metrics and card) somewhere.

    Loads with PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), TARGET).
    Credentials come from the target filesystem's usual sources; for an S3-compatible
    server set AWS_ENDPOINT_URL.

    Examples:
      brightrun models export 01jd4 ./my-adapter
      brightrun models export 01jd4 s3://bucket/adapters/run-1
    """
    from brightrun_cli.services.models import export_model

    exported = export_model(common.workspace(ctx), model, target, force=force)
    if json_output:
        common.print_json({"target": exported.target, "files": exported.files, "bytes": exported.bytes})
        return
    common.console().print(f"exported {len(exported.files)} files ({exported.bytes:,} bytes) to {exported.target}")


@models_app.command("merge")
def merge_command(
    ctx: typer.Context,
    model: ModelArg,
    out_dir: Annotated[Path, typer.Argument(help="Directory for the merged model.", show_default=False)],
    force: ForceOpt = False,
) -> None:
    """Merge base model + adapter into a standard Hugging Face model directory (safetensors).

    Loads with AutoModelForCausalLM.from_pretrained(OUT_DIR); needs the base model locally.

    Examples:
      brightrun models merge 01jd4 ./merged
    """
    from brightrun_cli.services.models import merge_model

    path = merge_model(common.workspace(ctx), model, out_dir, force=force)
    common.console().print(f"merged model written to {path}")


@models_app.command("rm")
def rm_command(ctx: typer.Context, model: ModelArg, yes: common.YesOpt = False) -> None:
    """Delete a model's stored files and remove it from the list (refused while another model derives from it).

    Examples:
      brightrun models rm 01jd4 --yes
    """
    from brightrun_cli.services.models import get_model, remove_model

    ws = common.workspace(ctx)
    if not yes:
        if not common.stdin_is_tty():
            from brightrun_cli.errors import UsageError

            raise UsageError("refusing to delete without confirmation (stdin is not a terminal)", "pass --yes")
        row = get_model(ws, model)
        typer.confirm(f"delete model {row.name} v{row.version} ({row.id}) and its files?", abort=True)
    removed = remove_model(ws, model)
    common.console().print(f"removed model {removed.id}")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the root app."""
    app.add_typer(models_app, name="models")
