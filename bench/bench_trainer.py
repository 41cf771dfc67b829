"""Trainer throughput: brightrun vs transformers Trainer + peft vs TRL SFTTrainer, one run, one table.

    PYTHONPATH=src .venv/bin/python bench/bench_trainer.py                  # builtin:tiny on the CPU, ~5 min
    python bench/bench_trainer.py --shape llama-3.1-8b --rows fit           # a random Llama-3.1-8B on a GPU
    python bench/bench_trainer.py --shape llama-3.2-1b --knobs all          # + each trainer knob on and off
    PYTHONPATH=src .venv/bin/python bench/bench_trainer.py --device cpu --shape tiny-llama-3 --knobs all \\
        --steps 2 --warmup-steps 1 --rows 1 --seq 256                       # CPU smoke of every path (~3 min)

Same model, same LoRA (r=16, alpha 32, every linear layer), same conversations (short
prompts, log-normal answer lengths, truncated at --seq tokens), same number of optimizer
steps, about the same tokens per step. Each configuration runs in a process of its own
(so peak memory is its own and an out-of-memory ends only that row); the first
--warmup-steps steps (CUDA start-up, Triton and torch.compile compiling) are left out of
its timing. The figure is real tokens per second: non-padding tokens fed to the model /
wall time of the measured steps. Methods:
  brightrun  the trainer (packed micro-batch, attention per conversation, logits only at targets);
  hf         transformers Trainer + peft with a padding collator (DataCollatorForSeq2Seq), the
             same conversations per micro-batch padded to the longest;
  trl        TRL SFTTrainer, packing (best-fit-decreasing, padding-free) into rows of --seq
             tokens, Liger kernels when liger-kernel is installed, transformers' SDPA attention
             (packed rows get a dense block-diagonal mask);
  trl-flex   the same with flex_attention (a block-sparse mask): TRL's padding-free packing
             where flash-attn is not installed.
Knobs (--knobs, brightrun only, each one change from the default run): fused_cross_entropy
off, compile_layers on, activation_offload on, and rows=fit: the micro-batch grown to the
largest that services.flops.memory_need fits in 85% of the GPU.

MFU = real tokens/s x model FLOPs per token / the GPU's dense bf16 peak (989 TFLOP/s on
an H100 or H200). FLOPs per token (services.flops.train_flops_per_token, causal):
    4 N                frozen weights: forward 2N, backward through the activations 2N
                       (no weight gradient), N = every matmul weight incl. the output layer
  + 6 N_lora           adapter weights: forward 2, backward 4 per parameter
  + 6 L d_attn s       attention scores and mixing, causal (s/2 keys per token on average),
                       forward 2 L d_attn s and twice that backward, s = the attention length
                       per token, sum(len_i^2) / sum(len_i) over conversations
No recomputation is counted (model FLOPs, not hardware FLOPs), and every real token is
charged the output layer, whether or not it has a target, so the same formula serves all
three methods: MFU is useful work per second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

LORA = dict(r=16, alpha=32, targets="all-linear")
LR = 1e-4
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}
METHODS = ("brightrun", "trl", "trl-flex", "hf")
KNOBS = {  # name -> hyperparameter overrides of the brightrun run (rows=fit is handled apart); the likeliest gain first
    "rows=fit": {},
    "compile_layers=true": {"compile_layers": True},
    "fused_cross_entropy=false": {"fused_cross_entropy": False},
    "activation_offload=true": {"activation_offload": True},
}
FIT_FRACTION = 0.85  # of the GPU's memory the fitted micro-batch may plan for (the model is an estimate)


def conversations(n: int, seed: int, median_chars: int) -> list[list[dict[str, str]]]:
    """Support-style chats: a short question, an answer whose length is log-normal around
    median_chars (long tail, capped at 5x)."""
    rng = random.Random(seed)
    words = "order refund lamp bulb account billing plan shipping delivery reset password device app hub light".split()
    out = []
    for _ in range(n):
        q = " ".join(rng.choice(words) for _ in range(rng.randint(4, 20))) + "?"
        n_chars = min(5 * median_chars, int(rng.lognormvariate(math.log(median_chars), 0.8)))
        a = ""
        while len(a) < n_chars:
            a += rng.choice(words) + " "
        out.append([{"role": "system", "content": "You are a support assistant."},
                    {"role": "user", "content": q}, {"role": "assistant", "content": a.strip()}])
    return out


# ---------------------------------------------------------------- one configuration (child process)

def run_brightrun(job: dict, work: Path) -> dict:
    from brightrun_cli.trainer.main import main as trainer_main

    spec = {
        "version": 1, "base_model": job["model"], "train_file": job["data"], "validation_file": None, "seed": 1,
        "hyperparameters": {"learning_rate": LR, "batch_size": job["batch"], "num_epochs": 1000, "lora_rank": LORA["r"],
                            "lora_alpha": LORA["alpha"], "lora_dropout": 0.0, "warmup_steps": 0,
                            "max_seq_length": job["seq"], "target_modules": LORA["targets"], "packing": True,
                            **job["overrides"]},
        "logging_steps": 1, "max_steps": job["warmup"] + job["steps"], "eval": None,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    if job.get("profile") and job["warmup"] >= 1:  # the last warm-up step: out of the timed ones
        os.environ["BRIGHTRUN_PROFILE_STEP"] = str(job["warmup"])
    code = trainer_main([str(work / "spec.json")])
    if code != 0:
        raise RuntimeError(json.loads((work / "result.json").read_text()).get("error") or f"trainer exit {code}")
    lines = [{"tokens_seen": 0}] + [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()
                                     if '"train"' in line]
    steps = list(zip(lines, lines[1:]))[job["warmup"]:]  # (previous, this) per measured step
    tokens = sum(this["tokens_seen"] - previous["tokens_seen"] for previous, this in steps)
    seconds = sum((this["tokens_seen"] - previous["tokens_seen"]) / this["tokens_per_sec"] for previous, this in steps)
    memory = max((line.get("gpu_memory") or 0.0) for line in lines)
    profile = (work / "profile.txt").read_text() if (work / "profile.txt").is_file() else None
    return {"real_tokens": tokens, "processed_tokens": tokens, "seconds": seconds, "peak_gib": memory or None,
            "profile": profile}


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


def _timed(trainer, counter: _Counter, warmup: int) -> dict:
    """Train; time and count tokens from the end of step `warmup` (or the start, if 0) to the end."""
    import torch
    from transformers import TrainerCallback

    marks = {}

    def mark(key):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        marks[key] = (time.perf_counter(), counter.real, counter.processed)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **k):
            if warmup == 0:
                mark("begin")

        def on_step_end(self, args, state, control, **k):
            if state.global_step == warmup:
                mark("begin")

        def on_train_end(self, *a, **k):
            mark("end")

    trainer.add_callback(Clock())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    (t0, r0, p0), (t1, r1, p1) = marks["begin"], marks["end"]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"real_tokens": r1 - r0, "processed_tokens": p1 - p0, "seconds": t1 - t0, "peak_gib": peak}


def _lora_model(job: dict, attention: str = "sdpa"):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from brightrun_cli.builtin import resolve_base_model

    # On a GPU the frozen base is loaded in bf16, as brightrun's trainer does, so only the loops differ.
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(resolve_base_model(job["model"]), attn_implementation=attention, dtype=dtype)
    return get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                                            target_modules=LORA["targets"], task_type="CAUSAL_LM"))


def _common_args(job: dict, work: Path) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return dict(output_dir=str(work), max_steps=job["warmup"] + job["steps"], learning_rate=LR,
                lr_scheduler_type="constant", warmup_steps=0, logging_steps=10_000, save_strategy="no", report_to=[],
                seed=1, dataloader_num_workers=0, use_cpu=not cuda, bf16=cuda, disable_tqdm=True)


def _messages(job: dict) -> list[list[dict[str, str]]]:
    return [json.loads(line)["turns"] for line in Path(job["data"]).read_text().splitlines()]


def run_hf(job: dict, work: Path) -> dict:
    """Trainer + peft at the job's conversations per optimizer step; where that micro-batch
    runs out of GPU memory (padded logits in fp32 grow with the longest conversation), half
    of it with twice the gradient accumulation, as a user of Trainer would, said in the row."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from brightrun_cli.builtin import resolve_base_model
    from brightrun_cli.trainer.data import IGNORE, ensure_chat_template, tokenize

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(job["model"]))
    ensure_chat_template(tokenizer)
    rows = []
    for c in _messages(job):
        e = tokenize(tokenizer, c, job["seq"], True)
        # Trainer's causal LM loss shifts labels itself: labels are the token ids, masked where no target.
        labels = [IGNORE] + [e.input_ids[t] if e.targets[t - 1] != IGNORE else IGNORE for t in range(1, len(e.input_ids))]
        rows.append({"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": labels})
    accumulation = 1
    while True:
        collator = _Counter(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE))
        args = TrainingArguments(per_device_train_batch_size=max(1, job["batch"] // accumulation),
                                 gradient_accumulation_steps=accumulation, **_common_args(job, work))
        trainer = Trainer(model=_lora_model(job), args=args, train_dataset=Dataset.from_list(rows), data_collator=collator)
        try:
            return {**_timed(trainer, collator, job["warmup"]), "accumulation": accumulation}
        except torch.cuda.OutOfMemoryError:
            if job["batch"] // accumulation <= 1:
                raise
        del trainer
        torch.cuda.empty_cache()
        accumulation *= 2


def run_trl(job: dict, work: Path, attention: str = "sdpa") -> dict:
    """TRL with Liger when it is installed; should Liger fail on this stack (its kernels patch
    transformers' model classes, which move between releases), TRL again without it, said in
    the row. attention: "sdpa" (packed rows get a dense block-diagonal mask), or
    "flex_attention" (a block-sparse mask: TRL's padding-free packing without flash-attn)."""
    import importlib.util

    import torch

    liger = importlib.util.find_spec("liger_kernel") is not None and job["cuda"]
    if not liger:
        return {**_trl_once(job, work, False, attention), "liger": False}
    try:
        return {**_trl_once(job, work, True, attention), "liger": True}
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        torch.cuda.empty_cache()
        (work / "without-liger").mkdir()
        return {**_trl_once(job, work / "without-liger", False, attention), "liger": False,
                "liger_error": f"{type(exc).__name__}: {first[:160]}"}


def _trl_once(job: dict, work: Path, liger: bool, attention: str) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from brightrun_cli.builtin import resolve_base_model
    from brightrun_cli.trainer.data import ensure_chat_template

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(job["model"]))
    ensure_chat_template(tokenizer)
    args = SFTConfig(per_device_train_batch_size=job["trl_rows"], packing=True, max_length=job["trl_length"],
                     use_liger_kernel=liger, **_common_args(job, work))
    trainer = SFTTrainer(model=_lora_model(job, attention), args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{"messages": c} for c in _messages(job)]))
    trainer.data_collator = _Counter(trainer.data_collator)
    return _timed(trainer, trainer.data_collator, job["warmup"])


def child(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = {"brightrun": run_brightrun, "hf": run_hf, "trl": run_trl,
                      "trl-flex": lambda j, w: run_trl(j, w, "flex_attention")}[job["method"]](job, Path(tmp))
        except Exception as exc:  # one configuration failing (e.g. out of memory) is a row of the table
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            result = {"error": f"{type(exc).__name__}: {first[:160]}"}
    Path(job["result"]).write_text(json.dumps(result))


# ---------------------------------------------------------------- the table (parent process)

def _shape_and_model(args, models_dir: Path) -> tuple[str, object]:
    from brightrun_cli.builtin import resolve_base_model
    from brightrun_cli.services.flops import ModelShape

    model = args.base_model
    if args.shape:
        model = str(models_dir / args.shape)
        if not (Path(model) / "config.json").is_file():
            # In a process of its own: made on the GPU, the model would otherwise stay in this
            # process's memory while every configuration runs.
            started = time.perf_counter()
            subprocess.run([sys.executable, str(REPO / "scripts" / "make_random_llama.py"), model, "--shape", args.shape],
                           check=True, stdout=subprocess.DEVNULL)
            print(f"random {args.shape} made in {time.perf_counter() - started:.0f} s", flush=True)
    config = json.loads((Path(resolve_base_model(model)) / "config.json").read_text())
    return model, ModelShape.from_config(config)


def _fitted_rows(shape, seq: int, overrides: dict, capacity: float, cuda: bool) -> int:
    """The most rows of `seq` tokens whose planned memory (services.flops.memory_need) stays
    within FIT_FRACTION of the device."""
    from brightrun_cli.services.flops import GIB

    fits = [rows for rows in range(1, 129) if _planned_gib(shape, seq, rows, overrides, cuda) * GIB <= FIT_FRACTION * capacity]
    return max(fits, default=1)


def _planned_gib(shape, seq: int, rows: int, overrides: dict, cuda: bool) -> float:
    from brightrun_cli.presets.schema import TrainingConfig
    from brightrun_cli.services.flops import GIB, memory_need

    config = TrainingConfig(batch_size=rows, lora_rank=LORA["r"], target_modules=LORA["targets"], max_seq_length=seq,
                            **{k: v for k, v in overrides.items() if k in ("fused_cross_entropy", "gradient_checkpointing")})
    return memory_need(shape, config, seq, weight_bytes=2 if cuda else 4, on_gpu=cuda).total / GIB


def _device_info(cuda: bool) -> tuple[str, float | None, float]:
    """(device name, its bf16 peak in TFLOP/s or None, memory in bytes)."""
    import torch

    if not cuda:
        return "cpu", None, 2**30  # a stand-in capacity, so rows=fit runs its code path in a smoke run
    name = torch.cuda.get_device_name()
    return name, next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None), torch.cuda.mem_get_info()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--base-model", default="builtin:tiny", help="built-in name or local model directory")
    parser.add_argument("--shape", help="a random model shaped like a published one (scripts/make_random_llama.py SHAPES)")
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "brightrun-bench-models")
    parser.add_argument("--steps", type=int, default=20, help="measured optimizer steps per configuration")
    parser.add_argument("--warmup-steps", type=int, default=0,
                        help="steps left out of every timing (use 3+ on a GPU: CUDA, Triton and compile start-up)")
    parser.add_argument("--batch", type=int, default=8, help="conversations per micro-batch (unless --rows)")
    parser.add_argument("--rows", help="micro-batch as rows of --seq tokens (N, or fit: the most the memory model fits)")
    parser.add_argument("--seq", type=int, default=2048, help="longest sequence: truncation and TRL's packed row length")
    parser.add_argument("--median-chars", type=int, help="median answer length (default: 150, 600 with --shape)")
    parser.add_argument("--methods", help=f"comma-separated, default: {','.join(METHODS)} "
                        "(trl-flex only on a GPU: flex attention has no CPU backward)")
    parser.add_argument("--knobs", default="", help=f"comma-separated, or all: {', '.join(KNOBS)}")
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto", help="cpu: hide the GPU (smoke runs)")
    parser.add_argument("--json", type=Path, help="write the table's rows here too (after each configuration)")
    parser.add_argument("--profile", type=Path, help="profile the last warm-up step of each brightrun row "
                        "(BRIGHTRUN_PROFILE_STEP) and write the profiles to this file; needs --warmup-steps >= 1")
    parser.add_argument("--deadline-s", type=float,
                        help="seconds this whole run may take: a configuration that would not finish in what is left "
                             "(judged by the median so far) is skipped, one still running at the deadline is stopped")
    args = parser.parse_args()
    began = time.perf_counter()
    if args.child:
        child(args.child)
        return
    if not 0 <= args.warmup_steps:
        parser.error("--warmup-steps must be >= 0")
    knobs = list(KNOBS) if args.knobs == "all" else [k for k in args.knobs.split(",") if k]
    methods = args.methods.split(",") if args.methods else list(METHODS)
    unknown = [k for k in knobs if k not in KNOBS] + [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method or knob: {', '.join(unknown)}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = env["CUDA_VISIBLE_DEVICES"] = ""

    import torch
    from transformers import AutoTokenizer

    from brightrun_cli.builtin import resolve_base_model
    from brightrun_cli.presets.schema import TrainingConfig
    from brightrun_cli.services.flops import train_flops_per_token
    from brightrun_cli.trainer.data import ensure_chat_template, tokenize

    cuda = torch.cuda.is_available()
    device, peak, capacity = _device_info(cuda)
    model, shape = _shape_and_model(args, args.models_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(model))
    ensure_chat_template(tokenizer)
    median = args.median_chars or (600 if args.shape else 150)
    sample = [len(tokenize(tokenizer, c, args.seq, True).input_ids) for c in conversations(400, 0, median)]
    mean_len = sum(sample) / len(sample)
    attention_len = sum(n * n for n in sample) / sum(sample)  # per token: the length of its conversation
    config = TrainingConfig(lora_rank=LORA["r"], target_modules=LORA["targets"], max_seq_length=args.seq)
    flops_per_token = train_flops_per_token(shape, config, round(attention_len), causal=True)
    print(f"{model} on {device}: {shape.total_params / 1e9:.2f}B parameters; conversations mean {mean_len:.0f} tokens "
          f"(attention length {attention_len:.0f}), at most {args.seq}; {flops_per_token / 1e9:.2f} GFLOP per token; "
          f"{args.warmup_steps} warm-up + {args.steps} measured steps per configuration", flush=True)

    def batch_for(rows: str | None) -> tuple[int, int]:
        """(conversations per micro-batch, rows of --seq tokens)."""
        if rows is None:
            return args.batch, max(1, math.ceil(args.batch * mean_len / args.seq))
        n = _fitted_rows(shape, args.seq, {}, capacity, cuda) if rows == "fit" else int(rows)
        return max(1, round(n * args.seq / mean_len)), n

    if not args.methods and not cuda:
        methods.remove("trl-flex")
    runs = [(m, m, {}, args.rows) for m in methods]
    runs += [("brightrun", f"brightrun {k}", KNOBS[k], "fit" if k == "rows=fit" else args.rows) for k in knobs]
    table = []

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps({"model": model, "shape": args.shape, "device": device,
                                             "flops_per_token": flops_per_token, "mean_tokens": mean_len,
                                             "attention_length": attention_len, "rows": table}, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        for i, (method, label, overrides, rows) in enumerate(runs):
            batch, n_rows = batch_for(rows)
            left = None if args.deadline_s is None else args.deadline_s - (time.perf_counter() - began)
            walls = sorted(r["wall_s"] for r in table if r["wall_s"])
            typical = walls[len(walls) // 2] if walls else 0.0  # the median configuration's wall time so far
            if left is not None and left < max(20.0, 1.2 * typical):
                table.append({"label": label, "batch": batch, "rows": n_rows, "wall_s": 0.0, "skipped": True,
                              "error": f"{left:.0f} s left of --deadline-s, a configuration takes ~{typical:.0f} s"})
                print(_row(table[-1]), flush=True)
                save()
                continue
            data = Path(tmp) / f"data-{i}.jsonl"
            chats = conversations(batch * (args.warmup_steps + args.steps + 1), 1, median)
            data.write_text("".join(json.dumps({"conversation_id": str(j), "turns": c}) + "\n" for j, c in enumerate(chats)))
            job = {"method": method, "model": model, "data": str(data), "batch": batch, "seq": args.seq, "cuda": cuda,
                   "trl_rows": n_rows, "trl_length": min(args.seq, round(batch * mean_len)), "overrides": overrides,
                   "warmup": args.warmup_steps, "steps": args.steps, "result": str(Path(tmp) / f"result-{i}.json"),
                   "profile": bool(args.profile)}
            (Path(tmp) / f"job-{i}.json").write_text(json.dumps(job))
            started = time.perf_counter()
            try:
                proc = subprocess.run([sys.executable, __file__, "--child", str(Path(tmp) / f"job-{i}.json")], env=env,
                                      capture_output=True, text=True, timeout=left)
                result = json.loads(Path(job["result"]).read_text())
            except subprocess.TimeoutExpired:
                result = {"error": f"stopped at --deadline-s after {time.perf_counter() - started:.0f} s"}
            except (OSError, ValueError):
                result = {"error": f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1][:160]}"}
            result.update(label=label, batch=batch, rows=n_rows, wall_s=round(time.perf_counter() - started, 1))
            if method == "brightrun":  # what the estimate's memory model plans for this micro-batch
                result["planned_gib"] = round(_planned_gib(shape, args.seq, n_rows, overrides, cuda), 1)
            if "error" not in result:
                result["tokens_per_sec"] = result["real_tokens"] / result["seconds"]
                result["mfu"] = result["tokens_per_sec"] * flops_per_token / (peak * 1e12) if peak else None
                result["padding_efficiency"] = result["real_tokens"] / result["processed_tokens"]
            profile = result.pop("profile", None)
            table.append(result)
            print(_row(result), flush=True)
            if profile:
                result["profile"] = profile.splitlines()[0]
                print(f"{'':38s} profile: {result['profile']}", flush=True)
                with args.profile.open("a") as out:
                    out.write(f"== {label}\n{profile}\n")
            save()
    _summary(table, args.shape)


def _row(r: dict) -> str:
    head = f"{r['label']:38s} batch {r['batch']:4d} conv ({r['rows']:3d} x seq)"
    if r.get("skipped"):
        return f"{head}  SKIPPED {r['error']}"
    if "error" in r:
        return f"{head}  FAILED {r['error']}  ({r['wall_s']} s)"
    mfu = f"MFU {r['mfu']:6.1%}" if r.get("mfu") is not None else "MFU    -  "
    peak = f"peak {r['peak_gib']:6.1f} GiB" if r.get("peak_gib") else "peak      -   "
    if r.get("planned_gib") is not None:
        peak += f" (plan {r['planned_gib']:.1f})"
    liger = {True: ", Liger", False: ", no Liger"}.get(r.get("liger"), "")
    failed = f"; Liger failed: {r['liger_error']}" if r.get("liger_error") else ""
    if r.get("accumulation", 1) > 1:
        failed += f"; {r['batch'] // r['accumulation']} conv x {r['accumulation']} accumulated (out of memory at {r['batch']})"
    return (f"{head}  {r['tokens_per_sec']:10.0f} real tok/s  {mfu}  {peak}  padding eff {r['padding_efficiency']:6.1%}"
            f"  ({r['real_tokens']} tok, {r['seconds']:.1f} s measured, {r['wall_s']} s wall{liger}{failed})")


def _summary(table: list[dict], shape: str | None) -> None:
    rate = {r["label"]: r["tokens_per_sec"] for r in table if "tokens_per_sec" in r}
    ours = rate.get("brightrun")
    if ours is None:
        return
    parts = [f"brightrun vs {m}: {ours / rate[m]:.2f}x" for m in ("hf", "trl", "trl-flex") if m in rate]
    for label, value in rate.items():
        if label.startswith("brightrun "):
            parts.append(f"{label[10:]}: {value / ours - 1:+.1%}")
    print("; ".join(parts))
    mfu = next((r.get("mfu") for r in table if r["label"] == "brightrun"), None)
    goal = {"llama-3.1-8b": 0.45, "llama-3.2-1b": 0.40}.get(shape or "")
    trl = max((rate[m] for m in ("trl", "trl-flex") if m in rate), default=None)  # TRL's faster attention
    if goal and mfu is not None:
        best = max((r.get("mfu") or 0) for r in table if r["label"].startswith("brightrun"))
        against = f"; >= 1.5x TRL's best ({ours / trl:.2f}x)" if trl else ""
        print(f"goal: MFU >= {goal:.0%} (default run {mfu:.1%}, best brightrun run {best:.1%}){against}")


if __name__ == "__main__":
    main()
