"""`brightrun presets list | show NAME | validate FILE`: the training presets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from brightrun_cli.cli import common

presets_app = typer.Typer(help="Training presets: shipped ones and yours in <home>/presets/.", no_args_is_help=True)


def _preset_json(preset) -> dict:
    return {"name": preset.name, "description": preset.description, "source": preset.source,
            "path": str(preset.path), "config": preset.config.to_dict()}


@presets_app.command("list")
def list_cmd(ctx: typer.Context, json_output: common.JsonOpt = False) -> None:
    """List presets with their main values.

    Examples:
      brightrun presets list
      brightrun presets list --json
    """
    from rich.table import Table

    from brightrun_cli.services.presets import list_presets

    presets = list_presets(common.workspace(ctx))
    if json_output:
        common.print_json([_preset_json(p) for p in presets])
        return
    from rich import box
    from rich.table import Column

    # Names are what a user types next: never truncated (the base model column folds instead).
    fixed = [Column(h, no_wrap=True) for h in ("name", "source", "lr", "batch", "epochs", "rank", "alpha", "seq len")]
    table = Table(*fixed, Column("base model", overflow="fold"), box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    for p in presets:
        c = p.config
        table.add_row(p.name, p.source, f"{c.learning_rate:g}", str(c.batch_size), str(c.num_epochs),
                      str(c.lora_rank), str(c.lora_alpha), str(c.max_seq_length), c.base_model or "-")
    common.console().print(table)


def _show(preset, json_output: bool) -> None:
    from rich.table import Table

    from brightrun_cli.services.presets import preset_fields

    if json_output:
        common.print_json(_preset_json(preset))
        return
    if not sys.stdout.isatty():
        _show_plain(preset)
        return
    out = common.console()
    out.print(f"[bold]{preset.name}[/bold] ({preset.source}: {preset.path})")
    if preset.description:
        out.print(preset.description)
    table = Table("field", "value", "set here", "allowed", "meaning")
    for field in preset_fields(preset):
        value = field.value
        shown = ",".join(value) if isinstance(value, list) else ("-" if value is None else str(value))
        table.add_row(field.name, shown, "yes" if field.set_here else "", field.allowed, field.meaning)
    out.print(table)


def _show_plain(preset) -> None:
    """Off a terminal: one `field = value  # allowed: meaning` line per field, as TOML (a
    file to start your own preset from), never wrapped or cut."""
    import json

    from brightrun_cli.services.presets import preset_fields

    lines = [f"# {preset.name} ({preset.source}: {preset.path})"]
    if preset.description:
        lines.append(f"# {preset.description}")
    for field in preset_fields(preset):
        value = field.value
        note = f"  # {field.allowed + ': ' if field.allowed else ''}{field.meaning}{' (set by this preset)' if field.set_here else ''}"
        if value is None:
            lines.append(f"# {field.name} ={note}")
        else:
            lines.append(f"{field.name} = {json.dumps(value)}{note}")  # JSON literals are TOML literals for these types
    sys.stdout.write("\n".join(lines) + "\n")


@presets_app.command("show")
def show_cmd(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Preset name (see 'presets list').")],
             json_output: common.JsonOpt = False) -> None:
    """Show every field of a preset, with its allowed range and meaning.

    Examples:
      brightrun presets show balanced
      brightrun presets show tiny --json
    """
    from brightrun_cli.services.presets import get_preset

    _show(get_preset(common.workspace(ctx), name), json_output)


@presets_app.command("validate")
def validate_cmd(file: Annotated[Path, typer.Argument(help="A preset or config file (.toml, .json, .yaml).")],
                 json_output: common.JsonOpt = False) -> None:
    """Check a preset/config file; exit 2 with the field and allowed range when it is wrong.

    Examples:
      brightrun presets validate my-preset.toml
      cp my-preset.toml ~/.brightrun/presets/   # then: --preset my-preset
    """
    from brightrun_cli.services.presets import validate_preset_file

    _show(validate_preset_file(file), json_output)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the root app."""
    app.add_typer(presets_app, name="presets")
