"""The GPU catalog (`presets/data/gpus.toml`) with the user's price overrides applied."""

from __future__ import annotations

import functools
import os
import sys

import msgspec

from brightrun_cli.errors import UsageError
from brightrun_cli.presets import GPU_CATALOG_FILE
from brightrun_cli.workspace import Workspace


class Gpu(msgspec.Struct, frozen=True):
    name: str
    memory_gb: float
    bf16_tflops: float  # dense peak per device
    price_per_hour: float  # USD per device-hour, after config.toml overrides
    utilization: float  # assumed model FLOPs utilisation before calibration
    reference_tokens_per_sec: float | None  # the reference estimator's figure, where it had one
    price_source: str  # "catalog" | "config.toml"

    def to_json(self) -> dict:
        """Named as a job's `gpu_config` names them: `type`, and `hourly_rate` (here of one GPU)."""
        return {
            "type": self.name,
            "memory_gb": self.memory_gb,
            "bf16_tflops": self.bf16_tflops,
            "hourly_rate": self.price_per_hour,
            "utilization": self.utilization,
            "reference_tokens_per_sec": self.reference_tokens_per_sec,
            "price_source": self.price_source,
        }


def normalize_gpu_name(name: str) -> str:
    """'RTX 4090', 'rtx-4090' and 'RTX4090' are one type."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _host_memory_gb() -> float:
    """The machine's RAM in GiB, the unit the estimates compare memory in."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def _host_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def _catalog() -> dict:
    """The shipped catalog, parsed once per process (a train plans with it several times).
    tomllib is imported here: `jobs list` imports this module and never reads the catalog."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib.loads(GPU_CATALOG_FILE.read_text(encoding="utf-8"))


def list_gpus(ws: Workspace) -> list[Gpu]:
    catalog = _catalog()
    by_key = {normalize_gpu_name(name): name for name in catalog}
    prices: dict[str, float] = {}
    for name, price in ws.config.gpu_prices.items():
        key = by_key.get(normalize_gpu_name(name))
        if key is None:
            raise UsageError(f"config.toml gpu_prices: unknown GPU type '{name}'", f"use one of {', '.join(catalog)}")
        if price < 0:
            raise UsageError(f"config.toml gpu_prices: price for '{name}' is negative ({price})", "give USD per GPU-hour, 0 or more")
        prices[key] = float(price)
    gpus = []
    for name, entry in catalog.items():
        gpus.append(Gpu(
            name=name,
            memory_gb=float(entry["memory_gb"]) if "memory_gb" in entry else round(_host_memory_gb(), 1),
            bf16_tflops=float(entry["bf16_tflops"]) if "bf16_tflops" in entry else float(entry["tflops_per_core"]) * _host_cores(),
            price_per_hour=prices.get(name, float(entry["price_per_hour"])),
            utilization=float(entry["utilization"]),
            reference_tokens_per_sec=entry.get("reference_tokens_per_sec"),
            price_source="config.toml" if name in prices else "catalog",
        ))
    return gpus


def get_gpu(ws: Workspace, name: str) -> Gpu:
    gpus = list_gpus(ws)
    wanted = normalize_gpu_name(name)
    for gpu in gpus:
        if normalize_gpu_name(gpu.name) == wanted:
            return gpu
    raise UsageError(f"unknown GPU type '{name}'", f"use one of {', '.join(g.name for g in gpus)} ('brightrun gpus' lists them)")
