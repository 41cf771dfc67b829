"""`brightrun dataset add` throughput with exact token counts, against the script a user would write.

Run:  PYTHONPATH=src .venv/bin/python bench/bench_dataset_add.py            # 100 MB, as recorded
      PYTHONPATH=src .venv/bin/python bench/bench_dataset_add.py --mb 10    # a quick look

1. Generates a brightrun_lora_v4 file (`--mb` MB; Zipf-distributed pseudo-words, 2-8 turns,
   some system prompts) and trains a byte-level BPE tokenizer with `tokenizers` to a 32k
   vocabulary, saved as a local Hugging Face tokenizer directory with a ChatML template.
2. Times, end to end as separate processes (imports included, cold caches):
   - brightrun: `brightrun dataset add FILE --name bench --base-model TOKENIZER_DIR --json`
     (validates every line, converts, splits, stores three files, counts tokens);
   - baseline: `datasets.load_dataset("json")` + `map` with
     `apply_chat_template(tokenize=True)` per conversation, summing the lengths (which only
     counts tokens: no validation, no split, no storage).
3. Prints MB/s of each, the ratio, and checks both counted the same number of tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOCAB_SIZE = 32_000
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
BASELINE = r"""
import sys, time
start = time.perf_counter()
import datasets
from transformers import AutoTokenizer
data_file, tokenizer_dir = sys.argv[1:3]
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
ds = datasets.load_dataset("json", data_files=data_file, split="train")
counted = ds.map(lambda ex: {"n_tokens": len(tokenizer.apply_chat_template(ex["turns"], tokenize=True, return_dict=False))}, remove_columns=ds.column_names)
print(sum(counted["n_tokens"]), time.perf_counter() - start)
"""


def make_words(rng: random.Random, count: int) -> list[str]:
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou", "ee")]
    return ["".join(rng.choice(syllables) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))) for _ in range(count)]


def generate(path: Path, megabytes: int, seed: int = 0) -> int:
    """A v4 file of about `megabytes` MB. Returns the number of conversations."""
    rng = random.Random(seed)
    words = make_words(rng, 8000)
    weights = [1 / (rank + 1) for rank in range(len(words))]  # Zipf: a few words are very common

    def text(n: int) -> str:
        chosen = rng.choices(words, weights, k=n)
        return " ".join(chosen).capitalize() + rng.choice((".", "?", "!", "."))

    target = megabytes * 1_000_000
    count = 0
    with path.open("w", encoding="utf-8") as out:
        while out.tell() < target:
            turns = [{"role": "system", "content": text(rng.randint(5, 30))}] if rng.random() < 0.3 else []
            for _ in range(rng.randint(1, 4)):
                turns.append({"role": "user", "content": text(rng.randint(5, 80))})
                turns.append({"role": "assistant", "content": text(rng.randint(10, 300))})
            out.write(json.dumps({"conversation_id": f"bench-{count:07d}", "turns": turns}) + "\n")
            count += 1
    return count


def train_tokenizer(data: Path, out_dir: Path, sample_bytes: int = 20_000_000) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def corpus():
        read = 0
        with data.open(encoding="utf-8") as lines:
            for line in lines:
                read += len(line)
                if read > sample_bytes:
                    return
                for turn in json.loads(line)["turns"]:
                    yield turn["content"]

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=32768)
    fast.chat_template = CHATML
    fast.save_pretrained(out_dir)
    return out_dir


def run(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(argv)}\n{result.stderr[-2000:]}")
    return wall, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the generated file in MB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "bench.jsonl"
        t = time.perf_counter()
        conversations = generate(data, args.mb)
        size = data.stat().st_size
        print(f"generated {size / 1e6:.1f} MB, {conversations} conversations in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        tokenizer_dir = train_tokenizer(data, tmp_path / "tokenizer")
        print(f"trained a {VOCAB_SIZE}-token byte-level BPE tokenizer in {time.perf_counter() - t:.1f} s")

        env = {
            **os.environ, "PYTHONPATH": str(REPO / "src"), "BRIGHTRUN_HOME": str(tmp_path / "home"),
            "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        }
        ours_wall, out = run([sys.executable, "-m", "brightrun_cli", "dataset", "add", str(data), "--name", "bench", "--base-model", str(tokenizer_dir), "--json"], env)
        dataset = json.loads(out)
        assert dataset["status"] == "ready", dataset["error_message"]
        base_wall, out = run([sys.executable, "-c", BASELINE, str(data), str(tokenizer_dir)], env)
        base_tokens = int(out.split()[0])

        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"brightrun dataset add: {ours_wall:.1f} s, {size / 1e6 / ours_wall:.1f} MB/s, {dataset['total_tokens']} tokens ({dataset['token_count_method']})")
        print(f"baseline load_dataset + map(apply_chat_template): {base_wall:.1f} s, {size / 1e6 / base_wall:.1f} MB/s, {base_tokens} tokens")
        print(f"speed-up: {base_wall / ours_wall:.2f}x (goal >= 2x); token counts {'identical' if base_tokens == dataset['total_tokens'] else 'DIFFER'}")


if __name__ == "__main__":
    main()
