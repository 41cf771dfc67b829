"""A base model loaded as a QLoRA run loaded it: bitsandbytes NF4 or int8 weights on a CUDA GPU.

One definition of the quantisation settings serves the trainer (which trains on them),
the answer eval at the end of the job (the trainer's model, already loaded) and
`load_chat_model` (`models try` and evals after the job), so answers come from the base
as it was trained on. Light at import: bitsandbytes and transformers load inside.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

QUANTIZATIONS = ("none", "4bit", "8bit")


def bnb_config(kind: str, compute_dtype):
    """transformers' BitsAndBytesConfig for `kind`: 4bit is QLoRA's NF4 with double
    quantisation (the absmax constants quantised again: 0.127 instead of 0.5 extra bits
    per weight) computing in `compute_dtype`; 8bit is LLM.int8 (outliers kept in fp16)."""
    from transformers import BitsAndBytesConfig

    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"unknown quantization {kind!r} (one of {', '.join(QUANTIZATIONS)})")


def bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def keep_bitsandbytes_out() -> None:
    """For a process that loads no quantised model: peft, transformers and accelerate then
    see bitsandbytes as absent and do not import it (importlib's find_spec answers None for
    a module set to None in sys.modules). Where the `qlora` extra is installed, peft imports
    it eagerly: 1-2 s of a CPU's start-up, and on CPUs with AVX512-BF16 a compiled kernel
    fetched from the Hugging Face Hub for CPU inference. Only in a process brightrun owns
    (errors.own_the_process), and never once it is imported."""
    from brightrun_cli.errors import owns_the_process

    if owns_the_process():
        sys.modules.setdefault("bitsandbytes", None)


def trained_quantization(adapter_dir: str | Path | None) -> str:
    """The quantisation the adapter was trained on, from the spec.json the trainer saves
    beside it ("none" for an adapter without one, e.g. made elsewhere)."""
    if adapter_dir is None:
        return "none"
    try:
        spec = json.loads((Path(adapter_dir) / "spec.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "none"
    value = (spec.get("hyperparameters") or {}).get("quantization", "none") if isinstance(spec, dict) else "none"
    return value if value in QUANTIZATIONS else "none"
