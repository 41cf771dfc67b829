"""`brightrun presets list | show NAME | validate FILE`: the training presets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

from brightrun_cli.cli import common, term

presets_app = common.Group(help="Training presets: shipped ones and yours in <home>/presets/.", no_args_is_help=True)


def _preset_json(preset) -> dict:
    return {"name": preset.name, "description": preset.description, "source": preset.source,
            "path": str(preset.path), "config": preset.config.to_dict()}


@presets_app.command("list")
def list_cmd(ctx: common.Context, json_output: common.JsonOpt = False) -> None:
    """List presets with their main values.

    Examples:
      brightrun presets list
      brightrun presets list --json
    """
    from brightrun_cli.services.presets import shipped_names, survey_presets

    presets, problems = survey_presets(common.workspace(ctx))
    shipped = shipped_names()
    for problem in problems:
        common.echo(f"warning: {problem.error}", err=True)
    if json_output:
        common.print_json([{**_preset_json(p), "overrides_shipped": p.source == "user" and p.name in shipped} for p in presets]
                          + [{"path": str(x.path), "error": x.error} for x in problems])
        return
    # Names are what a user types next: never truncated (the base model column folds instead).
    fixed = [term.Column(h, no_wrap=True) for h in ("name", "source", "lr", "batch", "epochs", "rank", "alpha", "seq len")]
    table = term.Table(*fixed, term.Column("base model"), box=term.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    for p in presets:
        c = p.config
        source = "yours, overrides shipped" if p.source == "user" and p.name in shipped else p.source
        table.add_row(p.name, source, f"{c.learning_rate:g}", str(c.batch_size), str(c.num_epochs),
                      str(c.lora_rank), str(c.lora_alpha), str(c.max_seq_length), c.base_model or "-")
    common.console().print(table)


def _show(preset, json_output: bool) -> None:
    from brightrun_cli.services.presets import preset_fields

    if json_output:
        common.print_json(_preset_json(preset))
        return
    if not sys.stdout.isatty():
        _show_plain(preset)
        return
    out = common.console()
    out.print(f"[bold]{preset.name}[/bold] ({preset.source}: {term.escape(str(preset.path))})")
    if preset.description:
        out.print(preset.description)
    table = term.Table("field", "value", "set here", "allowed", "meaning")
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
def show_cmd(ctx: common.Context, name: Annotated[str, common.Arg(help="Preset name (see 'presets list').")],
             json_output: common.JsonOpt = False) -> None:
    """Show every field of a preset, with its allowed range and meaning.

    Examples:
      brightrun presets show balanced
      brightrun presets show tiny --json
    """
    from brightrun_cli.services.presets import get_preset

    _show(get_preset(common.workspace(ctx), name), json_output)


@presets_app.command("validate")
def validate_cmd(file: Annotated[Path, common.Arg(help="A preset or config file (.toml, .json, .yaml).")],
                 json_output: common.JsonOpt = False) -> None:
    """Check a preset/config file; exit 2 with the field and allowed range when it is wrong.

    Examples:
      brightrun presets validate my-preset.toml
      cp my-preset.toml ~/.brightrun/presets/   # then: --preset my-preset
    """
    from brightrun_cli.services.presets import validate_preset_file

    _show(validate_preset_file(file), json_output)


commands = common.Group()  # what this module adds to the root command
commands.add_group(presets_app, name="presets")
