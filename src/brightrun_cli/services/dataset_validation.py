"""Streaming validation of a JSONL dataset: one pass, bounded memory per line.

Two kinds of findings:
- the file cannot be read as JSON Lines of objects (binary or invalid UTF-8, a line
  over the limit, a cut-off last line, a line that is JSON but not an object, a format
  that cannot be recognised): `UsageError` naming the file and line, nothing is kept;
- a readable file whose conversations have problems (invalid JSON on a line, missing
  fields, empty turns, unknown roles, no assistant turn, non-string content, duplicate
  ids, conversations longer than the model's context): every one is counted, the
  first N are kept as `Problem`s, and the dataset ends in status `error`.

Valid conversations are written, normalised to v4, one per line to `out`.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from brightrun_cli.errors import UsageError
from brightrun_cli.services.dataset_formats import FORMATS, Problem, detect_format, to_v4
from brightrun_cli.services.dataset_tokens import TokenCounter

MAX_LINE_BYTES = 16 * 1024 * 1024  # one conversation; anything longer is not a chat transcript
SAMPLE_CONVERSATIONS = 3
TOKEN_BATCH = 1024
_BOM = b"\xef\xbb\xbf"

Progress = Callable[[int], None]  # bytes read so far


@dataclass
class ScanResult:
    format: str
    conversations: int = 0
    turns: int = 0
    problem_count: int = 0
    problems: list[Problem] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    roles: dict[str, int] = field(default_factory=lambda: {"system": 0, "user": 0, "assistant": 0})
    # Per valid conversation, in file order: held-out flag, token count, assistant turns.
    held_out: bytearray = field(default_factory=bytearray)
    tokens: array = field(default_factory=lambda: array("q"))
    assistant_turns: array = field(default_factory=lambda: array("l"))

    def add_problem(self, problem: Problem, keep: int) -> None:
        self.problem_count += 1
        if len(self.problems) < keep:
            self.problems.append(problem)


def split_fraction(conversation_id: str) -> float:
    """A stable number in [0, 1) from the id: the same conversation always lands in the same split."""
    digest = hashlib.blake2b(conversation_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def scan(
    lines: Iterable[bytes],
    out: IO[bytes],
    *,
    file_name: str,
    fmt: str,
    val_split: float,
    counter: TokenCounter,
    keep_problems: int,
    progress: Progress | None = None,
) -> ScanResult:
    """Validate and convert every line; write valid conversations (v4) to `out`."""
    if fmt != "auto" and fmt not in FORMATS:
        raise UsageError(f"unknown format '{fmt}'", f"use --format auto or one of {', '.join(FORMATS)}")
    result = ScanResult(format=fmt)
    counting = _Counting(counter, result, keep_problems)
    fractions: list[float] = []
    try:
        number, read = _scan_lines(lines, out, file_name, val_split, keep_problems, progress, result, fractions, counting)
        counting.finish()
    finally:
        counting.close()
    if progress is not None:
        progress(read)
    if number == 0 or (result.conversations == 0 and result.problem_count == 0):
        raise UsageError(f"{file_name} contains no data lines", "pass a JSONL file with one conversation per line")
    if result.format == "auto":
        result.format = "brightrun_lora_v4"
    result.problems.sort(key=lambda p: p.line)  # token problems arrive a batch or two late
    _ensure_both_splits(result, fractions, val_split)
    return result


def _scan_lines(
    lines: Iterable[bytes], out: IO[bytes], file_name: str, val_split: float, keep: int, progress: Progress | None,
    result: ScanResult, fractions: list[float], counting: "_Counting",
) -> tuple[int, int]:
    """The per-line loop of `scan`. Returns (lines read, bytes read)."""
    seen: dict[str, int] = {}
    read = last_progress = number = 0
    for number, raw in enumerate(lines, start=1):
        read += len(raw)
        if progress is not None and read - last_progress >= 1 << 20:
            progress(read)
            last_progress = read
        obj = _parse_line(raw, number, file_name, result, keep)
        if obj is None:
            continue
        if result.format == "auto":
            result.format = _detect(obj, number, file_name)
        record, problems = to_v4(obj, result.format, number)
        for problem in problems:
            result.add_problem(problem, keep)
        if record is None:
            continue
        cid = record["conversation_id"]
        if cid in seen:
            result.add_problem(Problem(number, f"duplicate conversation_id {cid!r} (first on line {seen[cid]})", "give every conversation its own id"), keep)
            continue
        seen[cid] = number
        _account(result, record, val_split, fractions)
        if len(result.samples) < SAMPLE_CONVERSATIONS:
            result.samples.append(record)
        out.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        counting.add(number, record["turns"])
    return number, read


def _parse_line(raw: bytes, number: int, file_name: str, result: ScanResult, keep: int) -> dict[str, Any] | None:
    if len(raw) > MAX_LINE_BYTES:
        raise UsageError(
            f"{file_name}: line {number} is {len(raw) / 2**20:.1f} MiB, over the {MAX_LINE_BYTES // 2**20} MiB limit for one conversation",
            "split it into several conversations (one JSON object per line)",
        )
    if number == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    if b"\x00" in raw:
        raise UsageError(f"{file_name}: line {number} contains NUL bytes: this looks like a binary file", "pass a UTF-8 JSONL text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{file_name}: line {number} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            "re-save the file as UTF-8 (e.g. iconv -t UTF-8)",
        ) from None
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        if not raw.endswith(b"\n"):
            raise UsageError(
                f"{file_name}: the last line ({number}) is cut off (it is not complete JSON and has no newline)",
                "the file looks truncated: copy it again in full",
            ) from None
        where = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        result.add_problem(Problem(number, f"JSON parse error{where}: {reason}", "make the line one complete JSON object (check quotes, commas and brackets)"), keep)
        return None
    if not isinstance(obj, dict):
        kind = type(obj).__name__.replace("NoneType", "null").replace("dict", "object")
        raise UsageError(f"{file_name}: line {number} is JSON but not an object (got {kind})", "write one JSON object per line, e.g. {\"conversation_id\": ..., \"turns\": [...]}")
    return obj


def _detect(obj: dict[str, Any], number: int, file_name: str) -> str:
    fmt = detect_format(obj)
    if fmt is None:
        keys = ", ".join(sorted(obj)[:6]) or "none"
        raise UsageError(
            f"{file_name}: cannot tell the format from line {number} (keys: {keys})",
            "expected turns (brightrun_lora_v4), messages (openai), conversations (sharegpt) or instruction/output (alpaca); or pass --format",
        )
    return fmt


def _account(result: ScanResult, record: dict[str, Any], val_split: float, fractions: list[float]) -> None:
    fraction = split_fraction(record["conversation_id"])
    fractions.append(fraction)
    result.held_out.append(1 if fraction < val_split else 0)
    assistant = 0
    for turn in record["turns"]:
        result.roles[turn["role"]] += 1
        assistant += turn["role"] == "assistant"
    result.assistant_turns.append(assistant)
    result.turns += len(record["turns"])
    result.conversations += 1


class _Counting:
    """Counts tokens of batches on a worker thread while the caller parses the next lines: the
    Rust tokenizer releases the GIL, so parsing and tokenizing overlap. Results are applied
    in submission order, at most two batches behind."""

    def __init__(self, counter: TokenCounter, result: ScanResult, keep: int):
        self.counter = counter
        self.result = result
        self.keep = keep
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="brightrun-tokens")
        self.pending: deque[tuple[list[tuple[int, list[dict[str, str]]]], Future[list[int]]]] = deque()

        self.batch: list[tuple[int, list[dict[str, str]]]] = []

    def add(self, line: int, turns: list[dict[str, str]]) -> None:
        self.batch.append((line, turns))
        if len(self.batch) >= TOKEN_BATCH:
            self._submit()

    def _submit(self) -> None:
        if self.batch:
            self.pending.append((self.batch, self.pool.submit(self.counter.count, [turns for _, turns in self.batch])))
            self.batch = []
        while len(self.pending) > 2:
            self._apply()

    def finish(self) -> None:
        self._submit()
        while self.pending:
            self._apply()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _apply(self) -> None:
        batch, future = self.pending.popleft()
        counts = future.result()
        self.result.tokens.extend(counts)
        limit = self.counter.context_length
        if limit:
            for (number, _), tokens in zip(batch, counts):
                if tokens > limit:
                    self.result.add_problem(
                        Problem(number, f"conversation is {tokens} tokens, longer than the model's context of {limit}", "split it into shorter conversations or drop early turns"),
                        self.keep,
                    )


def _ensure_both_splits(result: ScanResult, fractions: list[float], val_split: float) -> None:
    """With a held-out split requested and at least two conversations, each split gets one:
    the conversation with the smallest (largest) fraction moves, still deterministically."""
    if val_split <= 0 or result.conversations < 2:
        return
    if not any(result.held_out):
        result.held_out[min(range(len(fractions)), key=fractions.__getitem__)] = 1
    elif all(result.held_out):
        result.held_out[max(range(len(fractions)), key=fractions.__getitem__)] = 0
