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
from accelerate.utils import DistributedType

_init = state.AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.fsdp_plugin = fsdp_plugin
        self.distributed_type = DistributedType.FSDP
        # AcceleratorState() re-reads PartialState's shared state on every construction.
        state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP


state.AcceleratorState.__init__ = _fsdp_on_cpu
os.environ["ACCELERATE_USE_CPU"] = "true"  # the gloo process group (the trainer asks for none under FSDP)

if __name__ == "__main__":
    from brightrun_cli.trainer.main import main

    sys.exit(main(sys.argv[1:]))
