"""Answers from a base model, with or without its LoRA adapter.

One loaded model serves both: base answers come from the same weights with the adapter
switched off (peft's `disable_adapter()`), so comparing base and tuned costs one load.
Prompts are rendered by the chat template the model was trained with (`chat.py`), and an
answer ends where training taught it to: at the template's end-of-turn marker (or the
model's EOS), per sequence.

Many prompts are answered greedily in batches: sorted by length, left-padded with an
attention mask, decoded with a KV cache by `model.generate`. Greedy batched answers are
the answers each prompt gets alone. Sampling (temperature, top_p, seed) and streaming
are for trying a model by hand.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from brightrun_cli.errors import UsageError
from brightrun_cli.generation.gguf import check_local_base

from . import chat
from .quantization import bitsandbytes_installed, bnb_config, keep_bitsandbytes_out, trained_quantization

# KV cache one batch may fill (rows x (longest prompt + max_new_tokens) x bytes per position).
# Bigger batches mean fewer decoding steps, which is what costs on a CPU (each step's time
# is mostly per-call overhead for a small model): 60 support prompts of builtin:tiny take
# 80 MB, one batch; a 7B model with full multi-head attention (512 KB per position in
# bf16) gets ~4,000 positions, 12 rows of 340 tokens.
KV_CACHE_BYTES = 2 << 30
# Attention implementations whose masks transformers builds, so left padding is honoured;
# anything else (e.g. the trainer's packed-sequence kernel) is swapped for SDPA to generate.
MASKED_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass(frozen=True)
class Sampling:
    """How tokens are picked: temperature 0 is greedy (then top_p and seed do not matter)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def check(self) -> None:
        if not 1 <= self.max_new_tokens <= 65536:
            raise UsageError(f"--max-new-tokens must be between 1 and 65536, got {self.max_new_tokens}",
                             "pass how many tokens an answer may have, e.g. --max-new-tokens 256")
        if not 0 <= self.temperature <= 10:
            raise UsageError(f"--temperature must be between 0 (greedy) and 10, got {self.temperature}",
                             "pass 0 for the most likely answer, or e.g. --temperature 0.7 to sample")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}", "pass e.g. --top-p 0.9, or 1 to keep every token")


@dataclass(frozen=True)
class Answer:
    text: str  # the answer, without the end-of-turn marker, surrounding whitespace stripped
    stopped: bool  # it ended at the end of turn (or EOS), not at max_new_tokens
    tokens: int  # tokens generated, the end-of-turn marker included


class ChatModel:
    """A causal LM (optionally a peft model with one adapter) and its tokenizer, ready to answer.

    `model` may be one the caller already holds (the trainer's, after training); it is put
    in eval mode and, when its attention kernel ignores padding masks, switched to SDPA."""

    quantization = "none"  # the base's bitsandbytes quantisation as loaded here (load_chat_model)

    def __init__(self, model, tokenizer):
        chat.ensure_chat_template(tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.has_adapter = callable(getattr(model, "disable_adapter", None)) and hasattr(model, "peft_config")
        model.eval()
        config = model.config
        if getattr(config, "_attn_implementation", "sdpa") not in MASKED_ATTENTION:
            _set_attention(model, "sdpa")
        self.device = next(model.parameters()).device
        self.harmony = chat.uses_harmony(tokenizer)  # gpt-oss: answers are parsed from their channel tokens
        self.stop_sequences = _stop_sequences(tokenizer, model, self.harmony)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.max_positions = getattr(config, "max_position_embeddings", None)
        self.kv_bytes_per_position = _kv_bytes_per_position(config, next(model.parameters()).element_size())

    # ------------------------------------------------------------ prompts

    def prompt_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Token ids of the conversation so far (with the functions it may call) plus the
        assistant's generation prompt, as the trainer tokenizes them (rendered text, no extra
        special tokens)."""
        text = chat.render(self.tokenizer, messages, True, tools)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _fit(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """A prompt longer than the model's context leaves room to answer: its oldest tokens go."""
        if self.max_positions and len(ids) + max_new_tokens > self.max_positions:
            return ids[-max(1, self.max_positions - max_new_tokens):]
        return ids

    @contextlib.contextmanager
    def _generating(self, base: bool):
        """No gradients; the adapter off for base answers; on a CPU, as many threads as there are idle cores."""
        import torch

        adapter = self.model.disable_adapter() if base and self.has_adapter else contextlib.nullcontext()
        with adapter, torch.no_grad(), _idle_core_threads(self.device.type == "cpu"):
            yield

    # ------------------------------------------------------------ batched greedy

    def answers(self, prompts: list[list[dict]], *, base: bool = False, max_new_tokens: int = 256,
                kv_cache_bytes: int = KV_CACHE_BYTES, progress: Callable[[int, int], None] | None = None,
                tools: list[list[dict] | None] | None = None) -> list[Answer]:
        """Greedy answers to many conversation prefixes, in their order. base: with the
        adapter switched off. progress(done, total) is called after each batch. tools: per
        prompt, the functions its conversation may call (None: none)."""
        import torch

        Sampling(max_new_tokens=max_new_tokens).check()
        tools = tools or [None] * len(prompts)
        encoded = [self._fit(self.prompt_ids(p, t), max_new_tokens) for p, t in zip(prompts, tools)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        results: list[Answer | None] = [None] * len(encoded)
        done = 0
        budget = max(1, kv_cache_bytes // self.kv_bytes_per_position)
        with self._generating(base):
            for batch in _batches(order, encoded, max_new_tokens, budget):
                width = max(len(encoded[i]) for i in batch)
                ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
                    mask[row, width - len(encoded[i]):] = 1
                out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                          **self._generate_kwargs(Sampling(max_new_tokens=max_new_tokens)))
                for row, i in enumerate(batch):
                    results[i] = self._answer(out[row, width:].tolist(), max_new_tokens)
                done += len(batch)
                if progress is not None:
                    progress(done, len(encoded))
        return results  # type: ignore[return-value]

    def _generate_kwargs(self, sampling: Sampling) -> dict:
        from transformers import StoppingCriteriaList

        single = sorted({seq[0] for seq in self.stop_sequences if len(seq) == 1})
        longer = [seq for seq in self.stop_sequences if len(seq) > 1]
        kwargs = {
            "max_new_tokens": sampling.max_new_tokens, "eos_token_id": single, "pad_token_id": self.pad_id,
            "use_cache": True, "do_sample": sampling.temperature > 0,
        }
        if self.device.type == "cpu":
            # A preallocated cache: a growing one is copied whole at every step (torch.cat per
            # layer), 20% of the CPU time of a builtin:tiny eval. Not on GPUs, where
            # transformers would torch.compile the forward for a static cache (minutes of compiling).
            kwargs["cache_implementation"] = "static"
        if longer:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_EndsWith(longer)])
        if sampling.temperature > 0:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:  # greedy: no sampling settings inherited from the model's generation_config
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def _answer(self, generated: list[int], max_new_tokens: int) -> Answer:
        """Cut a generated row at its first stop sequence (what follows is padding)."""
        for end in range(1, len(generated) + 1):
            for seq in self.stop_sequences:
                if end >= len(seq) and tuple(generated[end - len(seq):end]) == seq:
                    return Answer(self._decode(generated[:end - len(seq)]), True, end)
        generated = generated[:max_new_tokens]
        return Answer(self._decode(generated), False, len(generated))

    def _decode(self, ids: list[int]) -> str:
        if self.harmony:
            return chat.harmony_answer(self.tokenizer.decode(ids, skip_special_tokens=False))
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ------------------------------------------------------------ one answer, sampled or streamed

    def answer(self, messages: list[dict], *, base: bool = False, sampling: Sampling = Sampling(),
               tools: list[dict] | None = None) -> Answer:
        """One answer (greedy, or sampled as `sampling` says), with `tools` the functions it may call."""
        import torch

        sampling.check()
        ids = torch.tensor([self._fit(self.prompt_ids(messages, tools), sampling.max_new_tokens)], device=self.device)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        with self._generating(base):
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **self._generate_kwargs(sampling))
        return self._answer(out[0, ids.shape[1]:].tolist(), sampling.max_new_tokens)

    def stream(self, messages: list[dict], *, base: bool = False, sampling: Sampling = Sampling(),
               tools: list[dict] | None = None) -> Iterator[str]:
        """The answer as text pieces while it is generated (for `models try`). Special tokens
        (the end-of-turn marker of ChatML, Llama 3 and the fallback template) are left out.
        An error in generation is raised here, in the caller; a caller that stops iterating
        (Ctrl-C) stops the generation at its next token."""
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        sampling.check()
        ids = torch.tensor([self._fit(self.prompt_ids(messages, tools), sampling.max_new_tokens)], device=self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=not self.harmony)
        kwargs = self._generate_kwargs(sampling)
        cancelled = threading.Event()
        kwargs["stopping_criteria"] = StoppingCriteriaList([*kwargs.get("stopping_criteria", []), _Cancelled(cancelled)])
        failure: list[BaseException] = []

        def generate() -> None:
            try:
                with self._generating(base):
                    self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer, **kwargs)
            except BaseException as exc:  # handed to the consumer; the streamer must still end
                failure.append(exc)
                streamer.end()

        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        worker = threading.Thread(target=generate, name="brightrun-generate", daemon=True)
        worker.start()
        try:
            yield from (_harmony_pieces(streamer) if self.harmony else (piece for piece in streamer if piece))
        finally:
            cancelled.set()
            worker.join()
        if failure:
            raise failure[0]


def _harmony_pieces(raw_pieces: Iterator[str]) -> Iterator[str]:
    """A harmony answer streamed as brightrun shows answers (chat.harmony_answer): each new
    piece is what the parse of the text so far adds; a tool call appears once its message
    is complete (its arguments are not JSON before that)."""
    raw, shown = "", ""
    for piece in raw_pieces:
        raw += piece
        text = chat.harmony_answer(raw, streaming=True)
        if text.startswith(shown) and len(text) > len(shown):
            yield text[len(shown):]
            shown = text
    text = chat.harmony_answer(raw)  # whole now; an answer with no harmony message at all shows here
    if text.startswith(shown) and len(text) > len(shown):
        yield text[len(shown):]


@contextlib.contextmanager
def _idle_core_threads(on_cpu: bool):
    """Run torch's CPU ops on as many threads as other processes leave cores idle (at least 1).

    Decoding is thousands of small ops, and a thread pool wider than the idle cores spins
    at every op waiting for a thread that is not running: on this project's shared 2-core
    machine, with other jobs busy, 2 threads took 5-7x the CPU time and wall time of 1
    thread for the same answers (builtin:tiny and SmolLM2-135M; bench/RESULTS.md). Idle
    cores are sampled for 0.1 s while this process sleeps."""
    if not on_cpu:
        yield
        return
    import psutil
    import torch

    before = torch.get_num_threads()
    mine = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    busy = psutil.cpu_percent(interval=0.1, percpu=True)
    if mine is not None and max(mine) < len(busy):
        busy = [busy[i] for i in mine]
    idle = sum(100 - b for b in busy) / 100
    torch.set_num_threads(max(1, min(before, round(idle))))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _EndsWith:
    """Stopping criterion per row: the row's last tokens are one of the multi-token stop sequences."""

    def __init__(self, sequences: list[tuple[int, ...]]):
        self.sequences = sequences

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for seq in self.sequences:
            if input_ids.shape[1] >= len(seq):
                tail = torch.tensor(seq, device=input_ids.device)
                done |= (input_ids[:, -len(seq):] == tail).all(dim=1)
        return done


class _Cancelled:
    """Stopping criterion: every row is done once the event is set (the stream's reader left)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _batches(order: list[int], encoded: list[list[int]], max_new_tokens: int, budget: int) -> Iterator[list[int]]:
    """Consecutive runs of `order` (shortest prompts first) whose padded KV cache fits the
    budget of positions (a prompt alone over it still gets a batch of its own)."""
    batch: list[int] = []
    for i in order:
        rows, width = len(batch) + 1, len(encoded[i]) + max_new_tokens  # i is the longest so far
        if batch and rows * width > budget:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _kv_bytes_per_position(config, element_size: int) -> int:
    """Keys and values of every layer for one token (a generous estimate when the config
    does not say how many key/value heads there are)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None) or 32
    hidden = getattr(text, "hidden_size", None) or 4096
    heads = getattr(text, "num_attention_heads", None) or 32
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    return max(1, 2 * layers * kv_heads * head_dim * element_size)


def _stop_sequences(tokenizer, model, harmony: bool = False) -> list[tuple[int, ...]]:
    """Token sequences that end an answer: the template's end-of-turn marker, the tokenizer's
    EOS and the model's generation EOS ids. In harmony (gpt-oss) a message's <|end|> is not
    the answer's end (the reasoning message ends with it, the final one follows): <|return|>
    and a tool call's <|call|> are."""
    sequences: set[tuple[int, ...]] = set()
    marker = None if harmony else chat.end_of_turn(tokenizer)
    if harmony:
        added = tokenizer.get_added_vocab()
        sequences.update((added[t],) for t in ("<|return|>", "<|call|>") if t in added)
    if marker:
        ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
        if ids:
            sequences.add(tuple(ids))
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for token in ([eos] if isinstance(eos, int) else list(eos or [])) + [tokenizer.eos_token_id]:
        if token is not None:
            sequences.add((int(token),))
    return sorted(sequences, key=lambda seq: (len(seq), seq))


def _set_attention(model, implementation: str) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "set_attn_implementation"):
        base.set_attn_implementation(implementation)
    else:  # transformers releases before set_attn_implementation read the config at each forward
        base.config._attn_implementation = implementation


# ---------------------------------------------------------------- loading

def load_chat_model(base_model: str, adapter: str | Path | None = None, *, device: str | None = None,
                    quantization: str | None = None) -> ChatModel:
    """A base model (a local directory, "builtin:<name>", a Hugging Face id, or a directory
    converted from GGUF by `gguf.convert_gguf`) with an optional peft adapter directory.

    The tokenizer is the adapter's when it has one (the trainer saves it with the chat
    template it trained with), else the base model's. On a CUDA GPU the weights load in
    bf16 (fp16 without bf16 support); on the CPU in fp32. An adapter trained on a quantised
    base (QLoRA: `quantization` in the spec.json beside it, or as given) gets its base
    quantised the same way where that is possible (CUDA and bitsandbytes), since that is
    the base its weights were fitted to; elsewhere the unquantised base, as `models merge`
    uses. `ChatModel.quantization` says which. Raises UsageError for what the user can fix
    (unknown model, no tokenizer, not an adapter)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from brightrun_cli.builtin import resolve_base_model

    try:
        path = resolve_base_model(base_model)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_local_base(path)
    adapter_dir = Path(adapter).expanduser() if adapter is not None else None
    if adapter_dir is not None and not (adapter_dir / "adapter_config.json").is_file():
        raise UsageError(f"{adapter_dir} is not a peft adapter directory (no adapter_config.json)")
    tokenizer_source = adapter_dir if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file() else path
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source))
    except Exception as exc:  # missing/corrupt tokenizer files raise assorted types
        raise UsageError(f"cannot load the tokenizer of {base_model!r}: {_first_line(exc)}",
                         "a base model directory needs its tokenizer files (tokenizer.json, tokenizer_config.json)") from None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float32
    if device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    wanted = quantization if quantization is not None else trained_quantization(adapter_dir)
    loaded_as = wanted if wanted != "none" and device.startswith("cuda") and bitsandbytes_installed() else "none"
    extra = {"quantization_config": bnb_config(loaded_as, dtype), "device_map": {"": device}} if loaded_as != "none" else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load base model {base_model!r}: {_first_line(exc)}",
                         "give a model directory, a built-in name (builtin:tiny) or a Hugging Face id reachable from here") from None
    if adapter_dir is not None:
        from brightrun_cli.errors import quiet_library_logs

        quiet_library_logs()
        if not device.startswith("cuda"):  # no quantised model is ever loaded here
            keep_bitsandbytes_out()
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter_dir))
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise UsageError(f"the adapter in {adapter_dir} does not fit base model {base_model!r}: {_first_line(exc)}") from None
    chat_model = ChatModel(model if loaded_as != "none" else model.to(device), tokenizer)
    chat_model.quantization = loaded_as
    return chat_model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
