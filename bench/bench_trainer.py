"""Trainer throughput: brightrun vs transformers Trainer + peft vs TRL SFTTrainer (packing), one run.

    PYTHONPATH=src .venv/bin/python bench/bench_trainer.py            # CPU, ~5 min on 2 cores
    PYTHONPATH=src .venv/bin/python bench/bench_trainer.py --steps 40 # longer, steadier
    python bench/bench_trainer.py --base-model DIR --batch 32            # a bigger model on a GPU

Same model (builtin:tiny + LoRA r=16 on q/k/v/o), same conversations (log-normal answer
lengths), same number of optimizer steps, same ~tokens per step. The figure is real
tokens per second: non-padding tokens fed to the model / wall time of the training
loop. Baselines:
  (a) transformers Trainer + peft with a padding collator (DataCollatorForSeq2Seq),
      8 conversations per step, padded to the longest;
  (b) TRL SFTTrainer with its default packing (TRL 1.16: best-fit-decreasing,
      padding-free), one packed row of up to 8 x mean length tokens per step.
Padding efficiency = real tokens / processed tokens. On a GPU it also prints model
FLOPs utilisation (MFU) from 6 x parameters x tokens/s against the card's bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

BATCH = 8  # conversations per optimizer step (--batch)
WARMUP = 0  # --warmup-steps: steps left out of every method's timing (CUDA/Triton start-up)
BASE = "builtin:tiny"  # --base-model: a built-in name or a local model directory
LORA = dict(r=16, alpha=32, targets=["q_proj", "k_proj", "v_proj", "o_proj"])
LR = 1e-3
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def conversations(n: int, seed: int) -> list[list[dict[str, str]]]:
    """Support-style chats whose answer lengths are log-normal (median ~150 chars, long tail)."""
    rng = random.Random(seed)
    words = "order refund lamp bulb account billing plan shipping delivery reset password device app hub light".split()
    out = []
    for _ in range(n):
        q = " ".join(rng.choice(words) for _ in range(rng.randint(4, 20))) + "?"
        n_chars = min(1400, int(rng.lognormvariate(math.log(150), 0.8)))
        a = ""
        while len(a) < n_chars:
            a += rng.choice(words) + " "
        out.append([{"role": "system", "content": "You are a support assistant."},
                    {"role": "user", "content": q}, {"role": "assistant", "content": a.strip()}])
    return out


def bench_brightrun(data, steps: int, work: Path) -> dict:
    from brightrun_cli.trainer.main import main as trainer_main

    (work / "train.jsonl").write_text("".join(json.dumps({"conversation_id": str(i), "turns": c}) + "\n" for i, c in enumerate(data)))
    spec = {
        "version": 1, "base_model": BASE, "train_file": "train.jsonl", "validation_file": None, "seed": 1,
        "hyperparameters": {"learning_rate": LR, "batch_size": BATCH, "num_epochs": 100, "lora_rank": LORA["r"],
                            "lora_alpha": LORA["alpha"], "lora_dropout": 0.0, "warmup_steps": 0, "max_seq_length": 2048,
                            "target_modules": LORA["targets"], "packing": True},
        "logging_steps": 1, "max_steps": steps,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    assert trainer_main([str(work / "spec.json")]) == 0
    lines = [{"tokens_seen": 0}] + [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    tokens = lines[-1]["tokens_seen"] - lines[WARMUP]["tokens_seen"]
    seconds = sum((b["tokens_seen"] - a["tokens_seen"]) / b["tokens_per_sec"] for a, b in zip(lines[WARMUP:], lines[WARMUP + 1:]))
    return {"real_tokens": tokens, "processed_tokens": tokens, "seconds": seconds}


class _Counter:
    """Wraps a collator to count real (attention) and processed (tensor) tokens."""

    def __init__(self, collator):
        self.collator, self.real, self.processed = collator, 0, 0

    def __call__(self, features):
        batch = self.collator(features)
        ids = batch["input_ids"]
        self.processed += ids.numel()
        self.real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
        return batch


def _timed(trainer, counter: _Counter) -> dict:
    """Train; time and count tokens from the end of step WARMUP (or the start, if 0) to the end."""
    import torch
    from transformers import TrainerCallback

    marks = {}

    def mark(key):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        marks[key] = (time.perf_counter(), counter.real, counter.processed)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **k):
            if WARMUP == 0:
                mark("begin")

        def on_step_end(self, args, state, control, **k):
            if state.global_step == WARMUP:
                mark("begin")

        def on_train_end(self, *a, **k):
            mark("end")

    trainer.add_callback(Clock())
    trainer.train()
    (t0, r0, p0), (t1, r1, p1) = marks["begin"], marks["end"]
    return {"real_tokens": r1 - r0, "processed_tokens": p1 - p0, "seconds": t1 - t0}


def _lora_model():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from brightrun_cli.builtin import resolve_base_model

    # On a GPU the frozen base is loaded in bf16, as brightrun's trainer does, so only the loops differ.
    dtype = torch.bfloat16 if _cuda() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(resolve_base_model(BASE), attn_implementation="sdpa", dtype=dtype)
    return get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                                            target_modules=LORA["targets"], task_type="CAUSAL_LM"))


def _common_args(steps: int, work: Path) -> dict:
    return dict(output_dir=str(work), max_steps=steps, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
                logging_steps=10_000, save_strategy="no", report_to=[], seed=1, dataloader_num_workers=0,
                use_cpu=not _cuda(), bf16=_cuda(), disable_tqdm=True)


def bench_hf_trainer(data, steps: int, work: Path, tokenizer) -> dict:
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from brightrun_cli.trainer.data import IGNORE, tokenize

    rows = []
    for c in data:
        e = tokenize(tokenizer, c, 2048, True)
        # Trainer's causal LM loss shifts labels itself: labels are the token ids, masked where no target.
        labels = [IGNORE] + [e.input_ids[t] if e.targets[t - 1] != IGNORE else IGNORE for t in range(1, len(e.input_ids))]
        rows.append({"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": labels})
    collator = _Counter(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE))
    args = TrainingArguments(per_device_train_batch_size=BATCH, **_common_args(steps, work))
    trainer = Trainer(model=_lora_model(), args=args, train_dataset=Dataset.from_list(rows), data_collator=collator)
    return _timed(trainer, collator)


def bench_trl(data, steps: int, work: Path, tokenizer, row_tokens: int) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(per_device_train_batch_size=1, packing=True, max_length=row_tokens, **_common_args(steps, work))
    trainer = SFTTrainer(model=_lora_model(), args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{"messages": c} for c in data]))
    trainer.data_collator = _Counter(trainer.data_collator)
    return _timed(trainer, trainer.data_collator)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _mfu(tokens_per_sec: float) -> str:
    import torch

    if not torch.cuda.is_available():
        return ""
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    if peak is None:
        return f"  MFU: unknown peak for {name}"
    from transformers import AutoModelForCausalLM

    from brightrun_cli.builtin import resolve_base_model

    params = AutoModelForCausalLM.from_pretrained(resolve_base_model(BASE)).num_parameters()
    # 6N FLOPs per token (forward 2N, backward 4N) is the usual MFU convention; attention FLOPs are left out.
    return f"  MFU {6 * params * tokens_per_sec / (peak * 1e12):.2%} of {name} bf16 peak"


def main() -> None:
    global BATCH, BASE, WARMUP
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--conversations", type=int, default=400)
    parser.add_argument("--batch", type=int, default=BATCH, help="conversations per optimizer step")
    parser.add_argument("--base-model", default=BASE, help="built-in name or local model directory")
    parser.add_argument("--warmup-steps", type=int, default=WARMUP,
                        help="steps left out of every method's timing (use 3+ on a GPU: CUDA and Triton start-up)")
    args = parser.parse_args()
    parser_warmup = args.warmup_steps
    if not 0 <= parser_warmup < args.steps:
        parser.error("--warmup-steps must be >= 0 and below --steps")
    BATCH, BASE, WARMUP = args.batch, args.base_model, parser_warmup

    import torch
    from transformers import AutoTokenizer

    from brightrun_cli.builtin import resolve_base_model
    from brightrun_cli.trainer.data import ensure_chat_template, tokenize

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(BASE))
    ensure_chat_template(tokenizer)
    data = conversations(args.conversations, seed=0)
    mean_len = sum(len(tokenize(tokenizer, c, 2048, True).input_ids) for c in data) / len(data)
    row_tokens = int(BATCH * mean_len)
    print(f"{len(data)} conversations, mean {mean_len:.0f} tokens; {args.steps} steps of ~{row_tokens} tokens; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in (
            ("brightrun", lambda w: bench_brightrun(data, args.steps, w)),
            ("transformers Trainer + peft (padding)", lambda w: bench_hf_trainer(data, args.steps, w, tokenizer)),
            ("TRL SFTTrainer (packing, bfd)", lambda w: bench_trl(data, args.steps, w, tokenizer, row_tokens)),
        ):
            work = Path(tmp) / str(len(results))
            work.mkdir()
            r = run(work)
            r["tokens_per_sec"] = r["real_tokens"] / r["seconds"]
            results[name] = r
            print(f"{name:40s} {r['tokens_per_sec']:9.0f} real tokens/s  padding efficiency "
                  f"{r['real_tokens'] / r['processed_tokens']:.1%}  ({r['real_tokens']} tokens, {r['seconds']:.1f} s)"
                  + _mfu(r["tokens_per_sec"]), flush=True)
    ours = results["brightrun"]["tokens_per_sec"]
    hf = results["transformers Trainer + peft (padding)"]["tokens_per_sec"]
    trl = results["TRL SFTTrainer (packing, bfd)"]["tokens_per_sec"]
    print(f"brightrun vs Trainer+peft: {ours / hf:.2f}x (goal >= 2.0x); vs TRL packing: {ours / trl:.2f}x (goal >= 1.4x)")


if __name__ == "__main__":
    main()
