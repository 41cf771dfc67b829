"""The trainer under accelerate's FSDP on CPU, for tests only:

    accelerate launch --config_file fsdp.yaml ... tests/fsdp_cpu.py spec.json

torch's FSDP (v1 and v2) runs on a gloo CPU process group, but accelerate chooses FSDP
only for GPU-like devices: a CPU run stays MULTI_CPU (plain DDP) whatever the config says
(accelerate/state.py, AcceleratorState.__init__), and the trainer refuses that. This
wrapper turns that state into FSDP, with the plugin accelerate built from the launcher's
environment, before the trainer prepares anything, so the trainer's FSDP paths (sharded
evaluation, gathered saving, save_state/load_state checkpoints) run on a CPU machine.
"""

from __future__ import annotations

import os
import sys

import accelerate.state as state
import torch
import torch.distributed.fsdp as fsdp
from accelerate.utils import DistributedType

_init = state.AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.fsdp_plugin = fsdp_plugin
        self.distributed_type = DistributedType.FSDP
        # AcceleratorState() re-reads PartialState's shared state on every construction.
        state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        # accelerate numbers the device cpu:<rank>, which FSDP1 refuses as inconsistent with
        # its CPU compute device ("cpu"); every process computes on the one CPU anyway.
        self.device = state.PartialState._shared_state["device"] = torch.device("cpu")


_FullStateDictConfig = fsdp.FullStateDictConfig


def _full_state_dict_on_cpu(offload_to_cpu: bool = False, rank0_only: bool = False):
    """FSDP1's gathered state dict with offload_to_cpu (what accelerate asks for) clones freed
    memory when the model already is on the CPU: a segfault (torch 2.13). On a CPU there is
    nothing to offload."""
    return _FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only)


state.AcceleratorState.__init__ = _fsdp_on_cpu
fsdp.FullStateDictConfig = _full_state_dict_on_cpu  # accelerate imports it when it gathers
os.environ["ACCELERATE_USE_CPU"] = "true"  # the gloo process group (the trainer asks for none under FSDP)

if __name__ == "__main__":
    from brightrun_cli.trainer.main import main

    sys.exit(main(sys.argv[1:]))
