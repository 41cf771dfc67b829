"""`brightrun estimate` (time, cost, memory of a run) and `brightrun gpus` (the catalog)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from brightrun_cli.cli import common, term
from brightrun_cli.services.base_model import display_name

if TYPE_CHECKING:
    from brightrun_cli.services.estimates import Estimate

GpuOpt = Annotated[str | None, common.Opt("--gpu", help="GPU type ('brightrun gpus'); default: the default host's.", show_default=False)]


def _steps(est, cfg) -> str:
    whole = est.steps_per_epoch * cfg.num_epochs
    text = f"{est.steps_per_epoch:,} per epoch x {cfg.num_epochs} epochs = {whole:,}"
    if cfg.max_steps is None:
        return text
    if est.total_steps < whole:
        return f"{est.total_steps:,} (max_steps; {est.total_steps / est.steps_per_epoch:.3g} epochs of {text})"
    return f"{text} (under max_steps {cfg.max_steps:,}: no effect)"


def _warmup(est: "Estimate") -> str:
    asked = est.config.warmup_steps
    if est.warmup_steps < asked:
        return f" (warm-up {est.warmup_steps}: warmup_steps {asked} cut to {est.config.max_warmup_fraction:.0%} of the run)"
    return f" (warm-up {est.warmup_steps})"


def render_estimate(est: "Estimate") -> term.Group:
    """The human view of an estimate (also printed by `train` before it queues)."""
    cfg = est.config
    details = term.Table.grid(padding=(0, 2))
    details.add_column(style="bold")
    details.add_column()
    rows = [
        ("dataset", f"{est.dataset.name} ({est.plan.train_tokens:,} training tokens, {est.plan.sequences:,} sequences/epoch of {est.plan.sequence_length})"),
        ("preset", f"{est.resolved.preset_id}" + (f" (from {est.resolved.base_preset})" if est.resolved.preset_id != est.resolved.base_preset else "")),
        ("base model", f"{display_name(cfg.base_model, short=True)} ({est.shape.total_params / 1e6:,.1f}M params, LoRA {est.shape.lora_params(cfg.target_modules, cfg.lora_rank, dora=cfg.use_dora) / 1e6:,.2f}M)"),
        ("GPUs", f"{est.devices} x {est.gpu.name}"),
        ("steps", _steps(est, cfg) + _warmup(est)),
        ("throughput", f"{est.tokens_per_sec:,.0f} tokens/s ({est.calibration.message})"),
        ("duration", common.human_duration(est.estimated_duration_hours * 3600)
                     + f" (start-up {common.human_duration(est.startup_s)}, training {common.human_duration(est.train_s)}, "
                     f"held-out loss and answer eval {common.human_duration(est.duration_s - est.startup_s - est.train_s)})"),
        ("hourly rate", f"${est.hourly_rate:.2f}/h"),
        ("cost", f"${est.compute_cost:.2f} compute + ${est.storage_cost:.2f} storage = ${est.estimated_cost:.2f}"),
    ]
    for label, value in rows:
        details.add_row(label, value)
    mem = est.memory
    fit = term.Text(f"{mem.total / 2**30:.1f} GB of {est.memory_capacity / 2**30:.0f} GB: ")
    fit.append("fits" if est.fits_in_memory else "does not fit", style="green" if est.fits_in_memory else "bold red")
    details.add_row("memory", fit)
    parts: list = [details]  # the memory advice, when it does not fit, is one of the warnings
    parts += [term.Text(f"warning: {w}", style="yellow") for w in est.warnings]
    return term.Group(*parts)


def estimate_cmd(
    ctx: common.Context,
    dataset: common.DatasetOpt,
    preset: common.PresetOpt = None,
    overrides: common.SetOpt = None,
    config_file: common.ConfigOpt = None,
    base_model: common.BaseModelOpt = None,
    gpu: GpuOpt = None,
    gpus: common.GpusOpt = None,
    json_output: common.JsonOpt = False,
) -> None:
    """Estimate steps, duration, cost and GPU memory of a training run.

    Examples:
      brightrun estimate --dataset support-v1 --preset balanced --base-model ./Mistral-7B --gpu A100-80GB --gpus 2
      brightrun estimate -d support-v1 -p tiny --base-model builtin:tiny
      brightrun estimate -d support-v1 --base-model ./my-model --set lora_rank=32 --json
    """
    from brightrun_cli.services.estimates import estimate

    est = estimate(common.workspace(ctx), dataset, preset=preset, overrides=tuple(overrides or ()),
                   config_file=config_file, base_model=base_model, gpu_type=gpu, gpus=gpus)
    if json_output:
        common.print_json(est.to_json())
    else:
        common.console().print(render_estimate(est))


def gpus_cmd(ctx: common.Context, json_output: common.JsonOpt = False) -> None:
    """List the GPU catalog: memory, dense bf16 peak, price per GPU-hour.

    Prices can be overridden in <home>/config.toml, e.g. gpu_prices = {H100 = 2.99}.

    Examples:
      brightrun gpus
      brightrun gpus --json
    """
    from brightrun_cli.services.gpus import list_gpus

    catalog = list_gpus(common.workspace(ctx))
    if json_output:
        common.print_json([g.to_json() for g in catalog])
        return
    rows = [(g.name, f"{g.memory_gb:g}", f"{g.bf16_tflops:g}", f"{g.price_per_hour:.2f}", f"{g.utilization:.0%}", g.price_source)
            for g in catalog]
    # Types (what --gpu takes) and numbers are never cut in two on a narrow terminal; the headers wrap instead.
    table = term.Table(*term.value_columns(("type", "memory GB", "bf16 TFLOP/s", "$/h", "assumed MFU", "price from"), rows))
    for row in rows:
        table.add_row(*row)
    common.console().print(table)


commands = common.Group()  # what this module adds to the root command
commands.command("estimate")(estimate_cmd)
commands.command("gpus")(gpus_cmd)
