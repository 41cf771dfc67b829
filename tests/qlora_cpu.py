"""The trainer with a quantised base on CPU, for tests only:

    python tests/qlora_cpu.py spec.json

brightrun refuses quantization without CUDA (trainer.loop.check_quantization: bitsandbytes'
CPU kernels are slower than fp32 weights, and a CPU host does not need the memory). They
compute the same NF4/int8 weights, though, so with that one check lifted the trainer's
whole QLoRA path (bitsandbytes loading, peft's k-bit preparation, the adapter it saves,
the answer eval on the quantised model) runs on a CPU machine.
"""

from __future__ import annotations

import sys

from brightrun_cli.trainer import loop

loop.check_quantization = lambda spec: None

# On CPUs with AVX512-BF16, bitsandbytes >= 0.50 repacks a 4-bit weight for its fused CPU
# inference kernel on the first no-grad forward, and that repacking assumes in-features a
# multiple of its 64-value block (builtin:tiny's MLP has 352): off, as on any other CPU.
try:
    import bitsandbytes.nn.modules as bnb_modules

    bnb_modules.has_avx512bf16 = lambda: False
except ImportError:
    pass

if __name__ == "__main__":
    from brightrun_cli.trainer.main import main

    sys.exit(main(sys.argv[1:]))
