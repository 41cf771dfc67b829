"""The learning-rate warm-up rule, shared by the trainer's schedule and the estimates: its
own module (the standard library alone) so that an estimate does not import the spec."""

from __future__ import annotations

import math


def warmup_for(warmup_steps: int, max_warmup_fraction: float, total_steps: int) -> int:
    """The optimizer steps of linear warm-up a run of `total_steps` does: `warmup_steps`,
    cut to `max_warmup_fraction` of the run, so a short run is not spent mostly below its
    peak learning rate. The trainer's schedule and the estimate both use this."""
    return max(0, min(warmup_steps, math.floor(max_warmup_fraction * total_steps + 1e-9)))
