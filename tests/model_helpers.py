"""For tests that plan runs without training them: base model directories (a config, a
valid tiny safetensors file and the built-in tokenizer: what `train`'s pre-flight checks)
and ready dataset rows with token statistics."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from brightrun_cli.builtin import resolve_base_model
from brightrun_cli.registry.tables import Dataset

LLAMA_7B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False,
    "hidden_act": "silu",
}
LLAMA_70B = {**LLAMA_7B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
             "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256}
SMALL = {**LLAMA_7B, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 4, "vocab_size": 1000}
# SmolLM2-135M's config.json (the shape the CPU figures in services/flops.py and estimates.py were measured on).
SMOLLM2_135M = {
    "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
    "tie_word_embeddings": True, "hidden_act": "silu",
}


def write_safetensors(path: Path, data_bytes: int = 16) -> Path:
    """A valid safetensors file of one float32 tensor (u64 header length, JSON header, data)."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [data_bytes // 4], "data_offsets": [0, data_bytes]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(data_bytes))
    return path


def model_dir(tmp_path: Path, config: dict, name: str = "model") -> str:
    """A model directory `train`'s pre-flight accepts; estimates read only its config."""
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    write_safetensors(path / "model.safetensors")
    shutil.copy(Path(resolve_base_model("builtin:tiny")) / "tokenizer.json", path / "tokenizer.json")
    return str(path)


def dataset_with_stats(ws, name="support-v1", status="ready", conversations=1000, train_tokens=900_000, validation_tokens=100_000,
                       tokens_per_conversation: dict | None = None, counted_with: str | None = None) -> Dataset:
    """A dataset row as `dataset add` leaves it, with the token statistics estimates read:
    counted with `counted_with`'s tokenizer (`--base-model`), else approximated."""
    dist = tokens_per_conversation or {"min": 100, "p50": 800, "p90": 1500, "p99": 2500, "max": 4000}
    with ws.registry.write() as session:
        row = Dataset(
            name=name, status=status, storage_path=f"datasets/{name}/data.jsonl", file_name="d.jsonl", file_size=1,
            total_conversations=conversations, total_training_pairs=conversations, total_validation_pairs=100,
            total_tokens=train_tokens + validation_tokens, training_ready=status == "ready",
            stats={"train_conversations": conversations, "validation_conversations": 100, "train_tokens": train_tokens,
                   "validation_tokens": validation_tokens,
                   "tokens_per_conversation": {**dist, "mean": train_tokens / conversations}},
            base_model=counted_with, token_count_method=f"tokenizer:{counted_with}" if counted_with else "approx:chars/4",
        )
        session.add(row)
    return row
