"""The 'local' host follows this machine's GPUs (nvidia-smi), so `train` on a GPU box uses
every GPU and bills GPU-hours with no `hosts` command first. A fake nvidia-smi on PATH
stands in for the driver."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from brightrun_cli.services.hosts import catalog_gpu_for
from brightrun_cli.workspace import Workspace

from jobs_helpers import conversations


def fake_nvidia_smi(tmp_path: Path, lines: list[str], monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "nvidia-smi"
    body = "".join(f"echo '{l}'\n" for l in lines)
    script.write_text(f"#!/bin/sh\n{body}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize("name, memory, expected", [
    ("NVIDIA H100 80GB HBM3", 79.6, "H100"),
    ("NVIDIA H200", 140.4, "H200"),
    ("NVIDIA A100-SXM4-40GB", 40.0, "A100-40GB"),
    ("NVIDIA A100 80GB PCIe", 80.0, "A100-80GB"),
    ("Tesla V100-SXM2-32GB", 32.0, "V100-32GB"),
    ("NVIDIA L40S", 45.0, "L40S"),
    ("NVIDIA L4", 22.5, "L4"),
    ("NVIDIA A10G", 22.0, "A10G"),
    ("NVIDIA GeForce RTX 4090", 24.0, "RTX-4090"),
    ("NVIDIA RTX A6000", 48.0, None),
])
def test_nvidia_smi_names_map_to_catalog_types(brightrun_home, name, memory, expected):
    assert catalog_gpu_for(Workspace.open(), name, memory) == expected


def local_host(cli) -> tuple[int, str]:
    local = next(h for h in json.loads(cli("hosts", "list", "--json").stdout) if h["name"] == "local")
    return local["gpus"], local["gpu_type"]


def test_train_on_a_gpu_box_uses_every_local_gpu_and_its_price(cli, tmp_path, monkeypatch):
    data = conversations(tmp_path / "chat.jsonl", 12)
    assert cli("dataset", "add", str(data), "--name", "chat", "--base-model", "builtin:tiny").exit_code == 0
    fake_nvidia_smi(tmp_path, ["NVIDIA A100-SXM4-40GB, 40960", "NVIDIA A100-SXM4-40GB, 40960"], monkeypatch)
    assert local_host(cli) == (2, "A100-40GB")

    result = cli("train", "--dataset", "chat", "--preset", "tiny", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    argv = plan["argv"]
    assert "--multi_gpu" in argv and argv[argv.index("--num_processes") + 1] == "2"
    assert plan["gpu_config"]["type"] == "A100-40GB" and plan["gpu_config"]["count"] == 2
    assert plan["gpu_config"]["hourly_rate"] > 0

    # The GPUs gone (driver removed): back to one CPU slot.
    (tmp_path / "bin" / "nvidia-smi").unlink()
    assert local_host(cli) == (1, "cpu")


def test_a_gpu_outside_the_catalog_is_reported_and_left_as_it_was(cli, tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, ["NVIDIA RTX A6000, 49140"], monkeypatch)
    result = cli("hosts", "check", "local")
    assert result.exit_code == 1
    assert "NVIDIA RTX A6000" in result.stdout + result.stderr and "not one type of the GPU catalog" in result.stdout + result.stderr
    assert local_host(cli) == (1, "cpu")
