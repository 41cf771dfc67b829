"""Refusals `train` makes before anything is queued that `estimate` also reports (as
warnings: an estimate may price a run this machine cannot make): a quantised base where
bitsandbytes cannot run, and tool calls a base model's chat template would drop."""

from __future__ import annotations

import sys

from brightrun_cli.builtin import absolute_base_model
from brightrun_cli.errors import UsageError
from brightrun_cli.generation import quantization as quantized_base
from brightrun_cli.registry.rows import DatasetRow, HostRow
from brightrun_cli.services.base_model import display_name


def check_quantization_host(quantization: str, hosts: list[HostRow]) -> None:
    """`--set quantization=4bit|8bit` runs bitsandbytes on CUDA GPUs: refused on a CPU host, and
    where bitsandbytes is missing (here: looked up; on an SSH or Slurm host: as its last
    `hosts check` found it; a host never checked is left to the trainer, which exits 2)."""
    if quantization == "none":
        return
    flag = f"--set quantization={quantization}"
    cpu = next((h for h in hosts if h.gpu_type == "cpu"), None)
    if cpu is not None:
        where = "this machine has no GPU" if cpu.kind == "local" else f"host '{cpu.name}' has no GPU"
        raise UsageError(f"{flag} needs a CUDA GPU (bitsandbytes), and {where}",
                         "run it on a GPU host (--host), or drop the quantization")
    if hosts[0].kind == "local":
        if not quantized_base.bitsandbytes_installed():
            raise UsageError(f"{flag} needs bitsandbytes, which is not installed here",
                             f"install it: {sys.executable} -m pip install bitsandbytes")
        return
    for host in hosts:
        found = (host.last_check or {}).get("packages") or {}
        if "bitsandbytes" in found and found["bitsandbytes"] is None:
            raise UsageError(f"{flag} needs bitsandbytes, which 'hosts check {host.name}' found missing there",
                             f"install it on '{host.name}' (pip install bitsandbytes), run 'brightrun hosts check {host.name}', then train again")

def check_tool_call_template(dataset: DatasetRow, base_model: str, chat_template: str | None) -> None:
    """Refuse, before anything is queued, data with tool calls for the base model its
    tokens were counted with when that model's chat template drops the calls (`dataset add`
    found it out: stats.template_drops_tool_calls) and the run keeps that template. With
    another base model the trainer checks its template (trainer/data.check_tool_calls)."""
    stats = dataset.stats or {}
    if not stats.get("template_drops_tool_calls") or chat_template == "chatml" or not dataset.base_model:
        return
    if absolute_base_model(dataset.base_model) != absolute_base_model(base_model):
        return
    from brightrun_cli.generation.chat import DROPPED_CALLS_HINT

    turns = stats.get("tool_call_turns")
    raise UsageError(f"dataset '{dataset.name}' calls tools{f' ({turns:,} assistant turns)' if turns else ''}, and base model "
                     f"'{display_name(base_model, short=True)}' has a chat template that does not write tool calls: it would learn empty answers",
                     DROPPED_CALLS_HINT)
