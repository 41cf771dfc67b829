"""Write a randomly initialised Llama of a chosen size with the built-in byte-level tokenizer.

For GPU throughput benchmarks where no hub download is possible: the speed of a
training loop does not depend on what the weights have learned.

    python scripts/make_random_llama.py OUT_DIR [--hidden 1024 --layers 16 --heads 16]
    python scripts/make_random_llama.py OUT_DIR --shape llama-3.1-8b     # Llama-3.1-8B's config

A --shape copies a published config (sizes, GQA, vocabulary, tied or not, RoPE base), so
the FLOPs, memory and kernel shapes are the real model's; the tokenizer is still the
built-in byte-level one (ids below 259), which leaves the 128,256-row embedding and
output layer at their real size. Initialised on the GPU in bf16 when there is one (an 8B
model in seconds; on a CPU in fp32 that takes minutes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# config.json values of the published models (meta-llama/Llama-3.2-1B, meta-llama/Llama-3.1-8B),
# and a tiny one of the same family for CPU smoke runs.
SHAPES = {
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
                         max_position_embeddings=131072, rope_theta=500000.0),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
                         max_position_embeddings=131072, rope_theta=500000.0),
    "tiny-llama-3": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128256, tie_word_embeddings=True,
                         max_position_embeddings=4096, rope_theta=500000.0),
}


def make_random_llama(out: Path, shape: str | None = None, *, hidden: int = 1024, layers: int = 16, heads: int = 16,
                      kv_heads: int = 4) -> int:
    """Write the model and tokenizer to `out`; returns the parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from brightrun_cli.builtin import resolve_base_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("builtin:tiny"))
    if shape is not None:
        sizes = dict(SHAPES[shape])
        sizes["rope_parameters"] = {"rope_type": "default", "rope_theta": sizes.pop("rope_theta")}
    else:
        sizes = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 64 * 64,
                     num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                     max_position_embeddings=4096, tie_word_embeddings=True)
    config = LlamaConfig(**sizes, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return model.num_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), help="a published model's config (overrides the sizes below)")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    args = parser.parse_args()
    params = make_random_llama(args.out, args.shape, hidden=args.hidden, layers=args.layers, heads=args.heads,
                               kv_heads=args.kv_heads)
    print(f"wrote {args.out}: {params / 1e6:.0f}M parameters")


if __name__ == "__main__":
    main()
