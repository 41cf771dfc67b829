"""Build the shipped `builtin:tiny` base model (src/brightrun_cli/builtin/tiny/).

Run (about 25 minutes on an idle 2-core CPU; deterministic there from the fixed seed):

    PYTHONPATH=src .venv/bin/python scripts/build_builtin_model.py

A ~0.9M-parameter Llama-architecture model with a byte-level tokenizer (256 byte
tokens + 3 specials, so every UTF-8 string is representable) and a ChatML chat
template, pretrained from a fixed seed on a synthetic corpus (~19M tokens, 4,000
steps of 16 x 256): prose over all printable ASCII plus generic chat tasks (echo,
recall, arithmetic, spelling, small talk) and 300 fixed request -> reply template
families with one slot (a number, name or word) copied from the request into the
reply. A randomly initialised model barely learns under LoRA, and one pretrained only
briefly learns the vocabulary of a task but not its replies: the template families
teach the skill a fine-tune leans on, holding fixed replies and copying slots.
The corpus deliberately contains nothing from examples/ (the support domain), so the
held-out gain measured on the example data is the adapter's, not the base's.
"""

from __future__ import annotations

import argparse
import math
import random
import string
from pathlib import Path

from brightrun_cli.generation.chat import chatml_template

SEED = 1234
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML closing turns with <|im_end|>, with tools and tool calls (a conversation without
# them renders as plain ChatML, which the corpus is written in).
CHAT_TEMPLATE = chatml_template("'<|im_end|>'")
MODEL_CONFIG = dict(
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "brightrun_cli" / "builtin" / "tiny"

WORDS = (
    "the a of and to in is it you that he was for on are with as his they be at one have this from "
    "or had by word but what some we can out other were all there when up use your how said an each "
    "she which do their time if will way about many then them write would like so these her long make "
    "thing see him two has look more day could go come did number sound no most people my over know "
    "water than call first who may down side been now find any new work part take get place made live "
    "where after back little only round man year came show every good me give our under name very "
    "through just form sentence great think say help low line differ turn cause much mean before move "
    "right boy old too same tell does set three want air well also play small end put home read hand "
    "port large spell add even land here must big high such follow act why ask men change went light "
    "kind off need house picture try us again animal point mother world near build self earth father "
    "river garden music paper window morning evening blue green yellow quiet quick table stone bread"
).split()
NAMES = "Ada Bruno Chen Dara Emil Fatima Gus Hana Ivan Jun Kofi Lena Mateo Nia Omar Pia Quinn Ravi Sara Tomas".split()


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _prose(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(2, 6)):
        s = _words(rng, rng.randint(4, 14))
        s = s[0].upper() + s[1:]
        if rng.random() < 0.3:
            s += f" {rng.randint(0, 99999)}"
        if rng.random() < 0.2:
            s += " (" + _words(rng, 2) + ")"
        if rng.random() < 0.15:
            s += f" {rng.choice(NAMES)}@{rng.choice(WORDS)}.com"
        sentences.append(s + rng.choice(".!?;:"))
    return " ".join(sentences)


def _symbols(rng: random.Random) -> str:
    """Every printable ASCII character, in random order and runs, so none is unseen."""
    chars = list(string.printable[:95])
    rng.shuffle(chars)
    return "".join(chars) + " " + "".join(rng.choice(chars) for _ in range(rng.randint(10, 40)))


def _families(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """Fixed request -> reply templates with one slot, drawn once from the seed.

    The skill a LoRA fine-tune needs most on top of a base: learn a handful of fixed
    replies and copy the variable part (a number, a name, a word) from the request into
    them. These families are made of the generic word list, never of the support domain.
    """
    families = []
    for _ in range(n):
        slot = rng.choice(["number", "name", "word"])
        q = _words(rng, rng.randint(2, 6)).capitalize() + " {x} " + _words(rng, rng.randint(0, 4))
        a = _words(rng, rng.randint(2, 7)).capitalize() + " {x} " + _words(rng, rng.randint(1, 6)) + rng.choice(".!")
        if rng.random() < 0.5:
            a += " " + _words(rng, rng.randint(3, 8)).capitalize() + " {x}."
        families.append((slot, q.strip() + rng.choice("?.!"), a))
    return families


FAMILIES = _families(random.Random(SEED + 1), 400)


def _slot(rng: random.Random, kind: str) -> str:
    if kind == "number":
        return str(rng.randint(0, 10 ** rng.randint(1, 7)))
    if kind == "code":  # order-number-like ids: letters, digits, dashes
        return "".join(rng.choice(string.ascii_uppercase + string.digits + "-") for _ in range(rng.randint(3, 9)))
    return rng.choice(NAMES) if kind == "name" else " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 2)))


def _chat(rng: random.Random) -> list[dict[str, str]]:
    """One chat. Most kinds make the reply copy something from the request (a slot, a
    code, a phrase): copying is what a tiny model learns last and a fine-tune needs most."""
    kind = rng.choices(range(8), weights=[40, 12, 12, 4, 5, 4, 3, 20])[0]
    name = rng.choice(NAMES)
    if kind == 0:
        slot, q_template, a_template = rng.choice(FAMILIES)
        x = _slot(rng, rng.choice([slot, slot, "code"]) if slot == "number" else slot)
        q, a = q_template.replace("{x}", x), a_template.replace("{x}", x)
    elif kind == 1:
        text = _slot(rng, rng.choice(["number", "code", "word", "name"])) if rng.random() < 0.5 else _words(rng, rng.randint(2, 8))
        q, a = f"Repeat after me: {text}", text
    elif kind == 2:
        n = _slot(rng, rng.choice(["number", "number", "code"]))
        q = f"My code is {n}. {_words(rng, rng.randint(1, 6)).capitalize()}. What is my code?"
        a = f"Your code is {n}."
    elif kind == 3:
        x, y = rng.randint(0, 99), rng.randint(0, 99)
        q, a = f"What is {x} plus {y}?", f"{x} plus {y} is {x + y}."
    elif kind == 4:
        q, a = f"Hi, I am {name}.", f"Hello {name}! How can I help you today?"
    elif kind == 5:
        item = rng.choice(WORDS)
        q = f"Please spell the word {item}."
        a = "-".join(item.upper())
    elif kind == 6:
        q = f"Tell me something about {rng.choice(WORDS)}."
        a = _prose(rng)
    else:  # a request whose reply quotes part of it back
        x = _slot(rng, rng.choice(["number", "code", "name", "word"]))
        lead = _words(rng, rng.randint(1, 4)).capitalize()
        q = f"{lead} {x} {_words(rng, rng.randint(0, 3))}".strip() + "?"
        a = f"About {x}: {_words(rng, rng.randint(2, 6))} {x}."
    messages = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": f"You are a helpful assistant named {rng.choice(NAMES)}."})
    messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    if rng.random() < 0.3:
        messages += [{"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You're welcome!"}]
    return messages


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    tokenizer.add_special_tokens({"pad_token": SPECIALS[0]})
    # The end-of-turn token is the model's EOS: generation stops where an assistant turn ends.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = MODEL_CONFIG["max_position_embeddings"]
    return tokenizer


def corpus(rng: random.Random, tokenizer, n_docs: int) -> list[list[int]]:
    docs = []
    for i in range(n_docs):
        if i % 5 == 0:
            text = _symbols(rng) if i % 50 == 0 else _prose(rng)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|endoftext|>")]
        else:
            ids = tokenizer.apply_chat_template(_chat(rng), tokenize=True, return_dict=False)
        docs.append(list(ids))
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_CONFIG,
    )
    model = LlamaForCausalLM(config)
    # One long stream cut into fixed windows: plain LM pretraining, every token predicted.
    stream = [t for doc in corpus(rng, tokenizer, 120000) for t in doc]
    windows = len(stream) // (args.seq_len + 1)
    data = torch.tensor(stream[: windows * (args.seq_len + 1)]).view(windows, args.seq_len + 1)
    print(f"corpus: {len(stream)} tokens, {windows} windows; model: {sum(p.numel() for p in model.parameters())} params")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = args.steps // 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / warmup if s < warmup else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (args.steps - warmup))),
    )
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for step in range(args.steps):
        batch = data[torch.randint(0, windows, (args.batch_size,), generator=gen)]
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f}", flush=True)

    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=128
    )
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Repeat after me: green river"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**prompt, max_new_tokens=40)
    print("sample:", repr(tokenizer.decode(out[0][prompt["input_ids"].shape[1]:])))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
