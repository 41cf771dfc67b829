"""Streaming validation of a JSONL dataset: one pass, bounded memory per line.

Two kinds of findings:
- the file cannot be read as JSON Lines (binary or UTF-16, CSV, JSON pretty-printed over
  several lines, a line over the limit, a cut-off last line, a format that cannot be
  recognised): `UsageError` naming the file and line and what it is, nothing is kept;
- problems of single lines (invalid JSON, JSON that is not an object, numbers or text
  that JSON cannot carry on (NaN, Infinity, out-of-range numbers, integers over
  Python's 4,300 digits, unpaired UTF-16 surrogate escapes), bytes that are not UTF-8,
  several JSON objects on one line, missing fields, empty
  turns or content, unknown roles, no assistant turn, non-string content, duplicate
  ids, conversations longer than the model's context): every one is counted, the first
  N are kept as `Problem`s. Warnings (a conversation without a user turn) likewise,
  apart: they do not block training.

A byte-order mark at the start of any line is dropped (`cat a.jsonl b.jsonl` of files
saved with one puts it mid-file, where it is as invisible). Exact duplicates (the same
turns and tools under any id) are counted (`ScanResult.duplicates`, a line in `dataset
show`) and share their split fraction, so a split never puts one copy in training and
another in validation (`choose_held_out` keeps groups together).

Valid conversations are written, normalised to v4 and as standard JSON, one per line
to `out`. A conversation found too long once its tokens are counted has been written
already: it is marked in `ScanResult.kept`, and whoever stores `out` skips it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import compress
from typing import IO, Any

from brightrun_cli.errors import UsageError
from brightrun_cli.generation.chat import reasoning_in_history
from brightrun_cli.services.dataset_formats import FORMATS, Problem, conversation_warnings, detect_format, to_v4, turn_text
from brightrun_cli.services.dataset_tokens import TokenCounter

MAX_LINE_BYTES = 16 * 1024 * 1024  # one conversation; anything longer is not a chat transcript
SAMPLE_CONVERSATIONS = 3
# A sample shows a conversation's start: stored samples stay small whatever the data
# (one line may hold 200,000 turns), and `dataset show` renders them at once.
SAMPLE_TURNS = 8
SAMPLE_CHARS = 1000
TOKEN_BATCH = 1024
_BOM = b"\xef\xbb\xbf"
# Where an unpaired \uD800-\uDFFF escape is (only such an escape makes json.loads return a
# string UTF-8 cannot encode; lines without "\ud" are never searched).
_LONE_SURROGATE_ESCAPE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)

Progress = Callable[[int], None]  # bytes read so far


@dataclass
class ScanResult:
    format: str
    data_lines: int = 0  # lines that are not blank
    problem_count: int = 0
    problems: list[Problem] = field(default_factory=list)
    warning_count: int = 0
    warnings: list[Problem] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    # Per conversation written to `out`, in file order.
    kept: bytearray = field(default_factory=bytearray)  # 0: dropped after it was written (too long)
    held_out: bytearray = field(default_factory=bytearray)  # set by `choose_held_out` once all are read
    fractions: array = field(default_factory=lambda: array("d"))
    tokens: array = field(default_factory=lambda: array("q"))  # a run's tokens of each: its copies too (count_views)
    examples: array = field(default_factory=lambda: array("l"))  # examples a run learns each from (usually 1)
    turn_counts: array = field(default_factory=lambda: array("l"))
    assistant_turns: array = field(default_factory=lambda: array("l"))
    learned_turns: array = field(default_factory=lambda: array("l"))  # assistant turns trained on (not weight 0)
    user_turns: array = field(default_factory=lambda: array("l"))
    _sample_index: list[int] = field(default_factory=list)
    file: str = ""  # the file being read, named in findings when there are several
    _seen: dict[str, tuple[str, int]] = field(default_factory=dict)  # conversation id -> (file, line)
    tool_turns: array = field(default_factory=lambda: array("l"))  # tool/function results
    call_turns: array = field(default_factory=lambda: array("l"))  # assistant turns with tool_calls
    _probed: set[str] = field(default_factory=set)  # turn keys (_TEMPLATE_DROPS) the counter's template was probed for
    dropped: set[str] = field(default_factory=set)  # ... and those of them it does not write
    chat_template: str = "model"  # the counter's: the base model's own, or "chatml"
    default_system: str | None = None  # what the template writes as the system message of a conversation without one
    _contents: dict[int, int] = field(default_factory=dict)  # content digest -> index of its first conversation
    duplicate_flags: bytearray = field(default_factory=bytearray)  # 1: an exact duplicate of an earlier conversation

    def add_problem(self, problem: Problem, keep: int) -> None:
        self.problem_count += 1
        if len(self.problems) < keep:
            self.problems.append(problem if problem.file or not self.file else replace(problem, file=self.file))

    def add_warning(self, warning: Problem, keep: int) -> None:
        self.warning_count += 1
        if len(self.warnings) < keep:
            self.warnings.append(warning if warning.file or not self.file else replace(warning, file=self.file))

    @property
    def conversations(self) -> int:
        """Conversations kept (written and not dropped)."""
        return sum(self.kept)

    @property
    def turns(self) -> int:
        return sum(compress(self.turn_counts, self.kept))

    @property
    def roles(self) -> dict[str, int]:
        users, assistants, tools = (sum(compress(counts, self.kept)) for counts in (self.user_turns, self.assistant_turns, self.tool_turns))
        return {"system": self.turns - users - assistants - tools, "user": users, "assistant": assistants, "tool": tools}

    @property
    def duplicates(self) -> int:
        """Kept conversations that repeat an earlier one exactly (same turns and tools)."""
        return sum(compress(self.duplicate_flags, self.kept))

    @property
    def context_turns(self) -> int:
        """Assistant turns of kept conversations with weight 0: context, not trained on."""
        return sum(compress(self.assistant_turns, self.kept)) - sum(compress(self.learned_turns, self.kept))

    @property
    def template_drops_calls(self) -> bool:
        """The data holds tool calls that the counter's chat template does not write."""
        return "tool_calls" in self.dropped

    @property
    def tool_call_turns(self) -> int:
        """Assistant turns (of kept conversations) that call tools."""
        return sum(compress(self.call_turns, self.kept))

    def kept_values(self, values: array, *, held_out: bool | None = None) -> Iterable[int]:
        """`values` of the kept conversations (only the held-out or only the training ones when told)."""
        if held_out is None:
            return compress(values, self.kept)
        return (v for v, k, h in zip(values, self.kept, self.held_out) if k and h == held_out)


def split_fraction(conversation_id: str) -> float:
    """A stable number in [0, 1) from the id: the same conversation always lands in the same split."""
    digest = hashlib.blake2b(conversation_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def held_out_count(conversations: int, val_split: float) -> int:
    """How many conversations the validation split holds: `val_split` of them rounded to the
    nearest whole (a tie goes to training, so the split never holds more than asked by a
    half), and at least one on each side when there are two or more."""
    if val_split <= 0 or conversations < 2:
        return 0
    share = round(conversations * val_split, 9)  # 45 x 0.1 is a tie, whatever the float says
    return min(max(math.ceil(share - 0.5), 1), conversations - 1)


def choose_held_out(result: ScanResult, val_split: float) -> None:
    """Hold out the kept conversations with the smallest `split_fraction`s: deterministic by
    conversation id, and `held_out_count` of them. Conversations sharing a fraction (exact
    duplicates, `_account`) go to the same side: a group that would overshoot the count is
    passed over for the next ones; when every group does, the smallest one that leaves
    something to train on is held out (none, when all are copies of one)."""
    result.held_out = bytearray(len(result.kept))
    conversations = result.conversations
    count = held_out_count(conversations, val_split)
    if count == 0:
        return
    groups: dict[float, int] = {}
    for fraction in compress(result.fractions, result.kept):
        groups[fraction] = groups.get(fraction, 0) + 1
    held = 0
    chosen: set[float] = set()
    ordered = sorted(groups)
    for fraction in ordered:
        if held + groups[fraction] <= count:
            chosen.add(fraction)
            held += groups[fraction]
            if held == count:
                break
    if not chosen:
        smallest = min(ordered, key=lambda f: groups[f])
        if groups[smallest] < conversations:
            chosen.add(smallest)
    for index, (fraction, kept) in enumerate(zip(result.fractions, result.kept)):
        if kept and fraction in chosen:
            result.held_out[index] = 1


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
    return scan_files([(file_name, lines)], out, fmt=fmt, val_split=val_split, counter=counter,
                      keep_problems=keep_problems, progress=progress)


def scan_files(
    files: Iterable[tuple[str, Iterable[bytes]]],
    out: IO[bytes],
    *,
    fmt: str,
    val_split: float,
    counter: TokenCounter,
    keep_problems: int,
    progress: Progress | None = None,
    several: bool = False,
) -> ScanResult:
    """`scan` over files read one after another as one dataset (shards): one format, ids
    unique across them, lines counted in each file. `several`: findings name their file."""
    if fmt != "auto" and fmt not in FORMATS:
        raise UsageError(f"unknown format '{fmt}'", f"use --format auto or one of {', '.join(FORMATS)}")
    result = ScanResult(format=fmt, chat_template=counter.chat_template, default_system=getattr(counter, "default_system", None))
    counting = _Counting(counter, result, keep_problems)
    names: list[str] = []
    lines_read = read = 0
    try:
        for file_name, lines in files:
            names.append(file_name)
            result.file = file_name if several else ""
            base = read
            tick = (lambda done, base=base: progress(base + done)) if progress is not None else None
            number, part = _scan_lines(json_lines(lines, file_name), out, file_name, keep_problems, tick, result, counting)
            lines_read += number
            read += part
        counting.finish()
    finally:
        counting.close()
    if progress is not None:
        progress(read)
    if lines_read == 0 or (not result.kept and result.problem_count == 0):
        what = names[0] if len(names) == 1 else f"none of the {len(names)} files"
        raise UsageError(f"{what} contains no data lines", "pass a JSONL file with one conversation per line")
    if result.format == "auto":
        result.format = "brightrun_lora_v4"
    order = {name: index for index, name in enumerate(names)}
    # Token problems arrive a batch or two late.
    result.problems.sort(key=lambda p: (order.get(p.file, 0), p.line))
    result.samples = [s for s, i in zip(result.samples, result._sample_index) if result.kept[i]]
    choose_held_out(result, val_split)
    return result


def json_lines(lines: Iterable[bytes], file_name: str) -> Iterator[bytes]:
    """`lines` as they are (JSONL), or, for a file holding one JSON array of records (how
    Alpaca's and many ShareGPT dumps ship, as `.json`), one compact line per record.

    A record's problems are reported at the line it starts on: each sits at that line of
    the stream, blank lines in between (which the scan skips). When records share lines
    (a minified array), a record's "line" is its position in the array instead. The array
    is read whole (JSONL streams): within the dataset size limit, as every file is. A file
    whose first line is a complete array with more lines after it is JSONL (that line is
    then a problem, as any line that is not an object)."""
    lines = iter(lines)
    head: list[bytes] = []
    for raw in lines:
        head.append(raw)
        stripped = (raw[len(_BOM):] if len(head) == 1 and raw.startswith(_BOM) else raw).strip()
        if stripped:
            break
    if not head or not stripped.startswith(b"["):
        yield from head
        yield from lines
        return
    try:
        json.loads(stripped)
    except ValueError:
        pass  # an array over several lines (or a broken one): read as one
    else:  # a whole array on the first line: the file is that array only if nothing follows
        for raw in lines:
            head.append(raw)
            if raw.strip():  # JSONL whose first line is an array (a problem on line 1)
                yield from head
                yield from lines
                return
    data = b"".join([*head, *lines])
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UsageError(f"{file_name}: line {line} is not valid UTF-8 (byte 0x{data[exc.start]:02x})",
                         "re-save the file as UTF-8 (e.g. iconv -t UTF-8)") from None
    records = _array_records(text, file_name)
    starts = [line for line, _ in records]
    if any(b <= a for a, b in zip(starts, starts[1:])):
        starts = list(range(1, len(records) + 1))
    last = 0
    for line, (_, record) in zip(starts, records):
        for _ in range(line - last - 1):
            yield b"\n"
        yield json.dumps(record, ensure_ascii=False).encode() + b"\n"
        last = line


def _array_records(text: str, file_name: str) -> list[tuple[int, Any]]:
    """(line the record starts on, record) for each element of the JSON array `text`."""
    from json.decoder import WHITESPACE

    decoder = json.JSONDecoder()
    records: list[tuple[int, Any]] = []
    line, counted = 1, 0

    def skip(at: int) -> int:
        return WHITESPACE.match(text, at).end()

    def fail(at: int, what: str) -> UsageError:
        row = text.count("\n", 0, at) + 1
        column = at - (text.rfind("\n", 0, at) + 1) + 1
        return UsageError(f"{file_name}: the JSON array does not parse: {what} at line {row}, column {column}",
                          "fix the file, or write it as JSONL (one conversation per line)")

    at = skip(text.index("[") + 1)
    if text.startswith("]", at):
        at = skip(at + 1)
    else:
        while True:
            try:
                record, end = decoder.raw_decode(text, at)
            except json.JSONDecodeError as exc:
                raise fail(exc.pos, exc.msg) from None
            line += text.count("\n", counted, at)
            counted = at
            records.append((line, record))
            at = skip(end)
            if text.startswith(",", at):
                at = skip(at + 1)
            elif text.startswith("]", at):
                at = skip(at + 1)
                break
            else:
                raise fail(at, "expected ',' or ']' after a record" if at < len(text) else "the array is not closed with ']'")
    if at < len(text):
        raise fail(at, "text after the array's closing ']'")
    return records


def _scan_lines(
    lines: Iterable[bytes], out: IO[bytes], file_name: str, keep: int, progress: Progress | None,
    result: ScanResult, counting: "_Counting",
) -> tuple[int, int]:
    """The per-line loop of `scan`. Returns (lines read, bytes read)."""
    seen = result._seen
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
        record, problems = to_v4(obj, result.format, number, result.file)
        for problem in problems:
            result.add_problem(problem, keep)
        if record is None:
            continue
        cid = record["conversation_id"]
        if cid in seen:
            first_file, first_line = seen[cid]
            where = f"line {first_line}" if first_file == result.file else f"{first_file} line {first_line}"
            result.add_problem(Problem(number, f"duplicate conversation_id {cid!r} (first on {where})", "give every conversation its own id"), keep)
            continue
        seen[cid] = (result.file, number)
        for warning in conversation_warnings(record, number):
            result.add_warning(warning, keep)
        for key, (writes, warning, suggestion) in _TEMPLATE_DROPS.items():
            if key not in result._probed and any(key in t for t in record["turns"]):
                result._probed.add(key)
                if not getattr(counting.counter, writes):
                    result.dropped.add(key)
                    result.add_warning(Problem(number, warning, suggestion), keep)
        if _EARLIER not in result._probed and "reasoning_content" not in result.dropped and reasoning_in_history(record["turns"]):
            result._probed.add(_EARLIER)
            if getattr(counting.counter, "drops_earlier_reasoning", False):
                result.dropped.add(_EARLIER)
                result.add_warning(Problem(number, _EARLIER_WARNING, _EARLIER_SUGGESTION), keep)
        index = len(result.kept)
        _account(result, record)
        if len(result.samples) < SAMPLE_CONVERSATIONS:
            result.samples.append(_sample(record))
            result._sample_index.append(index)
        out.write(_ENCODER.encode(record).encode("utf-8") + b"\n")
        counting.add(index, number, record)
    return number, read


# What a turn may hold that a base model's chat template may not write: the turn key ->
# (the TokenCounter attribute that says whether it is written, the warning, what to do).
_RECOUNT = "and add the dataset with --chat-template chatml to count its tokens as that run writes them"
_TEMPLATE_DROPS = {
    "tool_calls": ("writes_tool_calls",
                   "conversations call tools, and the base model's chat template does not write tool calls: "
                   "the token counts leave them out, and training with that template is refused",
                   f"train with --set chat_template=chatml ({_RECOUNT}), or use a base model whose template writes tool calls"),
    "reasoning_content": ("writes_reasoning",
                          "conversations carry reasoning (reasoning_content), and the base model's chat template does not "
                          "write it: the model learns the answers without it, and the token counts leave it out",
                          f"train with --set chat_template=chatml to learn the reasoning too ({_RECOUNT}), or use a base "
                          "model whose template writes it (Qwen3, SmolLM3, DeepSeek-R1)"),
}


# Reasoning on a turn before the conversation's last, with a template that writes it only into the last.
_EARLIER = "reasoning_in_history"
_EARLIER_WARNING = ("conversations carry reasoning on turns before their last, and the base model's chat template writes "
                    "reasoning only into the last turn: a run learns each such turn from a copy of the conversation that "
                    "ends with it (counted in the tokens and examples)")
_EARLIER_SUGGESTION = ("nothing to do; to learn each conversation once instead, train with --set chat_template=chatml, "
                       "which writes every turn's reasoning")


class _NotStandardJSON(ValueError):
    """A number json.loads takes but standard JSON (and so the stored file) cannot hold."""


def _refuse_constant(name: str) -> float:
    raise _NotStandardJSON(f"{name} is not standard JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotStandardJSON(f"the number {text[:40]} is out of range")
    return value


# One decoder and one encoder for every line (json.loads/dumps with options build one per
# call). Only standard JSON goes out: allow_nan=False would stop a NaN the decoder let by.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def _parse_line(raw: bytes, number: int, file_name: str, result: ScanResult, keep: int) -> dict[str, Any] | None:
    if len(raw) > MAX_LINE_BYTES:
        raise UsageError(
            f"{file_name}: line {number} is {len(raw) / 2**20:.1f} MiB, over the {MAX_LINE_BYTES // 2**20} MiB limit for one conversation",
            "split it into several conversations (one JSON object per line)",
        )
    if raw.startswith(_BOM):  # any line's: `cat` of files saved with one puts it mid-file
        raw = raw[len(_BOM):]
    if b"\x00" in raw:
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or _looks_utf16(raw):
            raise UsageError(f"{file_name}: the file is UTF-16 text (line {number}), not UTF-8",
                             "re-save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8 FILE > FILE.utf8.jsonl)")
        raise UsageError(f"{file_name}: line {number} contains NUL bytes: this looks like a binary file", "pass a UTF-8 JSONL text file")
    first = result.data_lines == 0 and not result.kept and result.problem_count == 0  # the file's first data line (of its first file)

    def problem(error: str, suggestion: str) -> None:
        result.add_problem(Problem(number, error, suggestion), keep)

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not raw.strip():
            return None
        result.data_lines += 1
        problem(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
                "re-save the file as UTF-8 (e.g. iconv -f latin1 -t UTF-8), or leave the line out with --skip-invalid")
        return None
    # Without its line ending: an error at the end of the line would read "line 2, column 1".
    text = text.rstrip("\r\n")
    if not text.strip():
        return None
    result.data_lines += 1

    try:
        obj = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        if first:
            _refuse_other_format(text, exc, number, file_name, more_lines=raw.endswith(b"\n"))
        if exc.msg == "Extra data":
            if text.startswith(("{", "["), exc.pos):
                problem(f"several JSON objects on one line (the second starts at column {exc.pos + 1})",
                        "put each conversation on its own line (e.g. jq -c . FILE > FILE.jsonl)")
            else:
                problem(f"text after the JSON object, at column {exc.pos + 1}", "remove it: one JSON object per line, nothing else")
            return None
        if not raw.endswith(b"\n"):
            raise UsageError(
                f"{file_name}: the last line ({number}) is cut off (it is not complete JSON and has no newline)",
                "the file looks truncated: copy it again in full",
            ) from None
        where = " (the end of the line)" if exc.pos >= len(text) else ""
        problem(f"JSON parse error: {exc.msg.removesuffix(' at')} at column {exc.pos + 1}{where}",
                "make the line one complete JSON object (check quotes, commas and brackets)")
        return None
    except _NotStandardJSON as exc:
        problem(str(exc), "write null, or the value as a string (e.g. \"NaN\")")
        return None
    except ValueError:  # the only other one decoding raises: an integer over Python's 4,300 digits
        problem("a number has more than 4,300 digits", "write it as a string")
        return None
    except RecursionError:
        problem("JSON nested too deeply", "make the line one complete JSON object (check quotes, commas and brackets)")
        return None
    if not isinstance(obj, dict):
        kind = type(obj).__name__.replace("NoneType", "null").replace("dict", "object")
        problem(f"the line is JSON but not an object (got {kind})", 'write one JSON object per line, e.g. {"conversation_id": ..., "turns": [...]}')
        return None
    if ("\\ud" in text or "\\uD" in text) and _has_lone_surrogate(obj):
        found = _LONE_SURROGATE_ESCAPE.search(text)
        escape = f" {found.group()} at column {found.start() + 1}" if found else ""
        problem(f"unpaired UTF-16 surrogate escape{escape}: it encodes no character",
                "remove it, or pair it: a high \\ud800-\\udbff escape followed by a low \\udc00-\\udfff one")
        return None
    return obj


def _looks_utf16(raw: bytes) -> bool:
    """Text in UTF-16: every other byte NUL (ASCII characters), as a UTF-8 reader splits it into lines."""
    body = raw.strip(b"\x00\r\n")
    half = len(body) // 2
    return half >= 1 and max(body[0::2].count(0), body[1::2].count(0)) >= 0.8 * half


_CSV_SUFFIX = re.compile(r"\.(csv|tsv)(\.(gz|bz2|xz|zst))?$", re.IGNORECASE)
_CSV_HEADER = re.compile(r'^\s*"?[A-Za-z_][\w .-]*"?(\s*[,;\t]\s*"?[A-Za-z_][\w .-]*"?)+\s*$')


def _refuse_other_format(text: str, exc: json.JSONDecodeError, number: int, file_name: str, *, more_lines: bool) -> None:
    """The first data line does not parse: say so once when the file is another format (CSV,
    JSON pretty-printed over several lines), rather than a parse error on every line."""
    if _CSV_SUFFIX.search(file_name) or _CSV_HEADER.match(text):
        raise UsageError(f"{file_name}: CSV is not a supported format (line {number} reads as a CSV header or row)",
                         'convert it to JSONL with messages, one object per line: {"messages": [{"role": "user", "content": ...}, '
                         '{"role": "assistant", "content": ...}]}')
    stripped = text.strip()
    if more_lines and (stripped in ("{", "[") or (stripped.startswith("{") and exc.pos >= len(text.rstrip()) - 1
                                                  and exc.msg != "Extra data")):
        raise UsageError(f"{file_name}: line {number} starts a JSON object that goes on over the next lines (pretty-printed JSON)",
                         "JSONL holds one JSON object per line (e.g. jq -c . FILE > FILE.jsonl), or pass a .json file holding an array")


def _has_lone_surrogate(value: Any) -> bool:
    """Whether any key or string in a parsed line holds a surrogate UTF-8 cannot encode (iterative:
    json.loads accepts nesting deeper than Python's recursion limit leaves room for)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
            stack.extend(item.keys())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def _sample(record: dict[str, Any]) -> dict[str, Any]:
    """The start of a conversation, bounded: SAMPLE_TURNS turns of at most SAMPLE_CHARS characters."""
    turns = record["turns"]
    texts = [turn_text(t) for t in turns[:SAMPLE_TURNS]]
    shown = [{"role": t["role"], "content": text[:SAMPLE_CHARS]} for t, text in zip(turns, texts)]
    truncated = len(turns) > SAMPLE_TURNS or any(len(text) > SAMPLE_CHARS for text in texts)
    return {"conversation_id": record["conversation_id"], "turns": shown, "turn_count": len(turns), "truncated": truncated}


def _detect(obj: dict[str, Any], number: int, file_name: str) -> str:
    fmt = detect_format(obj)
    if fmt is None:
        keys = ", ".join(sorted(obj)[:6]) or "none"
        raw_text = (" ('text' holds raw text, not a conversation: split it into user and assistant turns)"
                    if "text" in obj else
                    " (chosen/rejected pairs are preference data, for DPO: brightrun fine-tunes on conversations; "
                    "to learn the chosen answers, name them 'completion' beside the 'prompt')"
                    if "chosen" in obj and "rejected" in obj else "")
        raise UsageError(
            f"{file_name}: cannot tell the format from line {number} (keys: {keys}){raw_text}",
            "expected turns (brightrun_lora_v4), messages (openai), conversations (sharegpt), instruction/output (alpaca) "
            "or prompt/completion (prompt_completion); or pass --format",
        )
    return fmt


def _account(result: ScanResult, record: dict[str, Any]) -> None:
    turns = record["turns"]
    result.kept.append(1)
    content = {key: value for key, value in record.items() if key != "conversation_id"}
    text = json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8")
    digest = int.from_bytes(hashlib.blake2b(text, digest_size=12).digest(), "big")
    first = result._contents.setdefault(digest, len(result.kept) - 1)
    if first == len(result.kept) - 1:
        fraction = split_fraction(record["conversation_id"])
        result.duplicate_flags.append(0)
    else:  # an exact duplicate: the same fraction, so the same side of the split
        fraction = result.fractions[first]
        result.duplicate_flags.append(1)
    result.fractions.append(fraction)
    result.turn_counts.append(len(turns))
    assistant = user = tool = calls = learned = 0
    for turn in turns:
        role = turn["role"]
        assistant += role == "assistant"
        learned += role == "assistant" and turn.get("weight") != 0
        user += role == "user"
        tool += role == "tool"
        calls += "tool_calls" in turn
    result.assistant_turns.append(assistant)
    result.learned_turns.append(learned)
    result.user_turns.append(user)
    result.tool_turns.append(tool)
    result.call_turns.append(calls)


class _Counting:
    """Counts tokens of batches on a worker thread while the caller parses the next lines: the
    Rust tokenizer releases the GIL, so parsing and tokenizing overlap. Results are applied
    in submission order, at most two batches behind."""

    def __init__(self, counter: TokenCounter, result: ScanResult, keep: int):
        self.counter = counter
        self.result = result
        self.keep = keep
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="brightrun-tokens")
        # (conversation index, (file, line), conversation) per conversation of a batch.
        self.pending: deque[tuple[list[tuple[int, tuple[str, int], dict[str, Any]]], Future[list[int]]]] = deque()
        self.batch: list[tuple[int, tuple[str, int], dict[str, Any]]] = []

    def add(self, index: int, line: int, conversation: dict[str, Any]) -> None:
        self.batch.append((index, (self.result.file, line), conversation))
        if len(self.batch) >= TOKEN_BATCH:
            self._submit()

    def _submit(self) -> None:
        if self.batch:
            self.pending.append((self.batch, self.pool.submit(self.counter.count_views,
                                                              [conversation for _, _, conversation in self.batch])))
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
        counts = future.result()  # (tokens, longest example, examples) per conversation
        self.result.tokens.extend(total for total, _, _ in counts)
        self.result.examples.extend(examples for _, _, examples in counts)
        limit = self.counter.context_length
        if limit:
            for (index, (file, number), _), (_, tokens, _) in zip(batch, counts):
                if tokens > limit:
                    self.result.kept[index] = 0
                    self.result.add_problem(
                        Problem(number, f"conversation is {tokens} tokens, longer than the model's context of {limit}",
                                "split it into shorter conversations or drop early turns", file),
                        self.keep,
                    )
