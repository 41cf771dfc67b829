"""`brightrun dataset add|list|show|render|validate|rm`: conversation data in, validated, described.

Text that comes from the data (sample turns, ids, findings) is printed with its control
characters shown as escapes (`_visible`: ESC as \\x1b), so a dataset cannot drive the
terminal, and with markup escaped.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Annotated, Any, Optional

from brightrun_cli.cli import common, term
from brightrun_cli.services.base_model import display_name

if TYPE_CHECKING:
    from brightrun_cli.registry.rows import DatasetRow
    from brightrun_cli.services.datasets import DatasetDetails

dataset_app = common.Group(help="Conversation datasets: add (copy + validate + stats), list, show, render (as a run trains on it), validate, rm.", no_args_is_help=True)

DatasetArg = Annotated[str, common.Arg(help="Dataset id, unique id prefix, or name.", show_default=False)]
# Files below this size finish before a progress bar would be worth drawing.
PROGRESS_MIN_BYTES = 8 * 1024 * 1024
SAMPLE_TEXT_CHARS = 160
SAMPLE_SHOWN_TURNS = 6


@dataset_app.command("add")
def add_command(
    ctx: common.Context,
    source: Annotated[list[str], common.Arg(help="Data file path or fsspec URL (s3://..., gs://..., https://...): JSONL, a JSON array, either one compressed (gzip, bzip2, xz, zstd), Parquet or Arrow; - reads standard input. Several (shards) are read in the order given, as one dataset.", show_default=False)],
    name: Annotated[str, common.Opt("--name", "-n", help="Name to refer to the dataset by (unique among live datasets).", show_default=False)],
    format: Annotated[str, common.Opt("--format", "-f", help="auto, brightrun_lora_v4, openai, sharegpt, alpaca or prompt_completion.")] = "auto",
    val_split: Annotated[float, common.Opt("--val-split", help="Fraction of conversations held out for validation (by conversation id, deterministic).")] = 0.1,
    base_model: common.BaseModelOpt = None,
    chat_template: Annotated[str, common.Opt("--chat-template", help="Count tokens as the base model's own chat template (model) or brightrun's ChatML (chatml: for runs with --set chat_template=chatml) writes the conversations.")] = "model",
    skip_invalid: Annotated[bool, common.Opt("--skip-invalid", help="Keep the valid conversations of a file whose other lines have problems (those are listed, and counted as skipped_lines).")] = False,
    json_output: common.JsonOpt = False,
) -> None:
    """Copy a dataset into storage, validate every line, convert it to brightrun_lora_v4 and record its stats.

    When lines have problems, nothing is stored and the command exits 2: the dataset is
    recorded in status error with every problem (line, what, how to fix; in the --json
    output and in 'dataset show'), but it does not hold its name: fix the file and run
    the same command again, or pass --skip-invalid to keep the valid lines.

    Examples:
      brightrun dataset add support.jsonl --name support-v1
      brightrun dataset add chats.jsonl --name chats --format openai --val-split 0.05 --base-model builtin:tiny
      brightrun dataset add scraped.jsonl --name scraped --skip-invalid
      brightrun dataset add s3://bucket/data/support.jsonl --name support-s3 --json
      brightrun dataset add train-00000-of-00001.parquet --name hub-chats
      brightrun dataset add data/train-*.parquet --name hub-chats-all
      jq -c . chats.json | brightrun dataset add - --name piped
    """
    from brightrun_cli.services.dataset_add import add_dataset

    ws = common.workspace(ctx)
    with _progress(json_output) as progress:
        row = add_dataset(ws, source, name=name, format=format, val_split=val_split, base_model=base_model,
                          chat_template=chat_template, skip_invalid=skip_invalid, progress=progress)
    _render_outcome(row, json_output)


@dataset_app.command("list")
def list_command(
    ctx: common.Context,
    status: Annotated[str | None, common.Opt("--status", help="Only datasets in this status: uploading, validating, ready or error.", show_default=False)] = None,
    search: Annotated[str | None, common.Opt("--search", help="Only datasets whose name, description or file name contains this text.", show_default=False)] = None,
    limit: common.LimitOpt = None,
    json_output: common.JsonOpt = False,
) -> None:
    """List datasets, newest first.

    Examples:
      brightrun dataset list
      brightrun dataset list --status error --json
    """
    from brightrun_cli.services.datasets import count_datasets, list_datasets, list_datasets_json

    ws = common.workspace(ctx)
    if json_output:  # the hot path for scripts: JSON text straight from SQLite
        common.print_raw_json(list_datasets_json(ws, status=status, search=search, limit=limit))
        return
    rows = list_datasets(ws, status=status, search=search, limit=limit or common.LIST_DEFAULT)
    if not rows:
        if search is not None or status is not None:
            what = " and ".join(filter(None, [f"match the search {search!r}" if search is not None else "",
                                              f"are in status {status}" if status is not None else ""]))
            common.console().print(f"No datasets {what} (brightrun dataset list shows them all).", markup=False)
        else:
            common.console().print("No datasets. Add one: brightrun dataset add FILE.jsonl --name NAME")
        return
    table = common.list_table("ID", "NAME", "STATUS", "CONVS", "PAIRS T/V", "TOKENS", "SIZE", "CREATED",
                              wrap=("NAME",), right=("CONVS", "PAIRS T/V", "TOKENS", "SIZE"))
    for r in rows:
        pairs = "-" if r.total_training_pairs is None else f"{r.total_training_pairs}/{r.total_validation_pairs}"
        table.add_row(
            common.short_id(r.id), r.name, (r.status, _colour(r.status)), _num(r.total_conversations), pairs,
            _tokens(r.total_tokens, r.token_count_method), common.human_bytes(r.file_size), f"{r.created_at:%m-%d %H:%M}",
        )
    common.console().print(table)
    if limit is None and len(rows) == common.LIST_DEFAULT:
        common.more_rows_note(len(rows), count_datasets(ws, status=status, search=search))


@dataset_app.command("show")
def show_command(ctx: common.Context, dataset: DatasetArg, json_output: common.JsonOpt = False) -> None:
    """Status, stats, length distribution, sample conversations, every stored validation problem
    and warning, and any of its files missing from storage (JSON: missing_files).

    Examples:
      brightrun dataset show support-v1
      brightrun dataset show 01jd4 --json
    """
    from brightrun_cli.services.datasets import show_dataset

    details = show_dataset(common.workspace(ctx), dataset)
    if json_output:
        common.print_json(details)
        return
    _render_dataset(details)


@dataset_app.command("render")
def render_command(
    ctx: common.Context,
    dataset: DatasetArg,
    conversation: Annotated[Optional[list[str]], common.Opt("--conversation", "-c", help="A conversation id to render (repeatable); default: the first --limit of the split.", show_default=False)] = None,
    limit: Annotated[int, common.Opt("--limit", min=1, max=100, help="How many conversations, from the start of the split.")] = 1,
    split: Annotated[str, common.Opt("--split", help="train or validation.")] = "train",
    preset: common.PresetOpt = None,
    set_: common.SetOpt = None,
    config: common.ConfigOpt = None,
    base_model: common.BaseModelOpt = None,
    json_output: common.JsonOpt = False,
) -> None:
    """Show conversations as a run trains on them: the base model's chat template applied, and
    the text with a loss marked (answers and their end of turn); where max_seq_length cuts.

    Takes the run's settings as 'train' does (--preset, --set, --config, --base-model; the
    dataset's base model by default): chat_template, max_seq_length, assistant_only_loss.
    Marked text is green between ⟦ and ⟧; --json gives character spans.

    Examples:
      brightrun dataset render support-v1
      brightrun dataset render support-v1 --limit 3 --set max_seq_length=512
      brightrun dataset render support-v1 -c ticket-42 --set chat_template=chatml --json
    """
    from brightrun_cli.services.dataset_render import render_dataset

    rendering = render_dataset(common.workspace(ctx), dataset, split=split, limit=limit, conversation_ids=conversation,
                               preset=preset, overrides=set_ or (), config_file=config, base_model=base_model)
    if json_output:
        common.print_json(rendering)
        return
    out = common.console()
    template = "brightrun's ChatML" if rendering.chat_template == "chatml" else "its own chat template"
    out.print(f"[dim]{term.escape(rendering.base_model_name)} ({template}), max_seq_length {rendering.max_seq_length}; "
              f"text between ⟦ and ⟧ is trained (a loss on it); the rest is context[/dim]")
    for shown in rendering.conversations:
        out.print()
        out.print(_render_header(shown, rendering), soft_wrap=True)
        out.print(_marked_text(shown), soft_wrap=True)


def _render_header(shown, rendering) -> "term.Text":
    share = f" ({shown.trained_tokens / shown.tokens:.0%})" if shown.tokens else ""
    header = term.Text(f"conversation {_visible(shown.conversation_id)}", "bold")
    if shown.copy:
        header.append(f" (copy {shown.copy}: ends with an earlier turn, as the template keeps reasoning only in the last)")
    header.append(f": {shown.tokens:,} tokens, {shown.trained_tokens:,} trained{share}", "dim")
    if shown.cut_at is not None:
        header.append(f"; cut at max_seq_length {rendering.max_seq_length}: the trainer never sees the rest", "bold yellow")
    return header


def _marked_text(shown) -> "term.Text":
    """The rendered text: trained spans green between ⟦ ⟧, context dim, what the cut drops struck."""
    text, end = term.Text(), len(shown.text)
    cut = shown.cut_at if shown.cut_at is not None else end
    edges = sorted({0, end, cut, *(p for span in shown.trained for p in span)})
    for start, stop in zip(edges, edges[1:]):
        piece = _visible(shown.text[start:stop] if stop < end else shown.text[start:stop].rstrip("\n"))  # print adds the last newline
        trained = any(s <= start and stop <= e for s, e in shown.trained)
        if start == cut:
            text.append("\n✂ max_seq_length\n", "bold yellow")
        if start >= cut:
            text.append(piece, "dim strike")
        elif trained:
            opens = any(s == start for s, _ in shown.trained)
            closes = any(e == stop for _, e in shown.trained) or stop == cut
            text.append(("⟦" if opens else "") + piece + ("⟧" if closes else ""), "bold green")
        else:
            text.append(piece, "dim")
    return text


@dataset_app.command("validate")
def validate_command(
    ctx: common.Context,
    dataset: DatasetArg,
    base_model: common.BaseModelOpt = None,
    chat_template: Annotated[Optional[str], common.Opt("--chat-template", help="Count tokens with the base model's own chat template (model) or brightrun's ChatML (chatml) (default: as counted before).", show_default=False)] = None,
    json_output: common.JsonOpt = False,
) -> None:
    """Re-run validation and stats on the stored data (e.g. with another base model's tokenizer and context).

    Checks that the stored files exist: a missing split is rewritten from the data file; a
    data file storage does not have (a wrong storage_url, an outage, or a lost file) exits 1
    and leaves the dataset as it was: once storage is right, validate again.

    Examples:
      brightrun dataset validate support-v1
      brightrun dataset validate support-v1 --base-model ./models/llama-3-8b
      brightrun dataset validate tools-v1 --chat-template chatml
    """
    from brightrun_cli.services.dataset_add import validate_dataset

    row = validate_dataset(common.workspace(ctx), dataset, base_model=base_model, chat_template=chat_template)
    _render_outcome(row, json_output)


@dataset_app.command("rm")
def rm_command(ctx: common.Context, dataset: DatasetArg, yes: common.YesOpt = False, json_output: common.JsonOpt = False) -> None:
    """Remove a dataset and its files (kept, marked deleted, when a job or model refers to it).

    Examples:
      brightrun dataset rm support-v1 --yes
      brightrun dataset rm support-v1 --yes --json
    """
    from brightrun_cli.errors import UsageError
    from brightrun_cli.services.datasets import get_dataset, remove_dataset

    ws = common.workspace(ctx)
    if not yes:
        if not common.stdin_is_tty():
            raise UsageError("dataset rm needs confirmation and stdin is not a terminal", "pass --yes")
        row = get_dataset(ws, dataset)
        if not common.confirm(f"Remove dataset '{row.name}' ({row.id})?", default=False):
            raise SystemExit(1)
    removal = remove_dataset(ws, dataset)
    row = removal.dataset
    if json_output:
        common.print_json({"id": row.id, "name": row.name, "removed": True, "files_kept": removal.soft,
                           "references": removal.references})
        return
    if removal.soft:
        common.console().print(f"Removed dataset '{row.name}' ({row.id}); its files are kept because {removal.references} job(s)/model(s) refer to it.")
    else:
        common.console().print(f"Removed dataset '{row.name}' ({row.id}) and its files.")


commands = common.Group()  # what this module adds to the root command
commands.add_group(dataset_app, name="dataset")


# ------------------------------------------------------------------------ rendering


class _progress:
    """A Rich progress bar on stderr while a big file streams in, only on a terminal."""

    def __init__(self, json_output: bool):
        self.enabled = sys.stderr.isatty() and not json_output
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self):
        return self.update if self.enabled else None

    def update(self, done: int, total: int | None) -> None:
        if self.bar is None:
            if total is not None and total < PROGRESS_MIN_BYTES:
                self.enabled = False
                return
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

            self.bar = Progress("validating", BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(), console=common.err_console(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("add", total=total)
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _render_outcome(row: "DatasetRow", json_output: bool) -> None:
    """Show the dataset; a dataset that failed validation also exits 2 with one stderr line."""
    from brightrun_cli.errors import UsageError
    from brightrun_cli.services.datasets import DatasetDetails

    details = DatasetDetails(row, [])  # its files were just written
    if json_output:
        common.print_json(details)
    else:
        _render_dataset(details)
    if row.status == "error":
        if row.content_sha256 is None:  # a failed add: nothing stored, the name stays free
            todo = (f"fix the file (every problem: 'brightrun dataset show {row.id}') and run the same command again, "
                    "or add --skip-invalid to keep the valid lines")
        else:
            todo = f"every problem: 'brightrun dataset show {row.id}'; validate again with another --base-model, or fix the source and add it anew"
        raise UsageError(f"dataset '{row.name}' ({row.id}) failed validation: {row.error_message}", todo)


def _render_dataset(details: "DatasetDetails") -> None:
    row = details.dataset
    out = common.console()
    out.print(f"[bold]{row.name}[/bold]  ({row.id})  {_status(row.status)}")
    stored = row.storage_path if row.content_sha256 else "nothing stored (a failed add: its name is free for the next add)"
    facts = [
        ("source", f"{term.escape(', '.join(row.sources))} ({common.human_bytes(row.file_size)}, format {row.format})"),
        ("stored as", stored),
        ("validated", f"{row.validated_at:%Y-%m-%d %H:%M:%S} UTC" if row.validated_at else "-"),
    ]
    if details.missing_files:
        facts.append(("[red]missing[/red]", f"{', '.join(details.missing_files)} (gone from storage: run 'brightrun dataset validate {row.id}')"))
    if row.status == "ready":
        stats = row.stats or {}
        facts += [
            ("conversations", f"{_num(row.total_conversations)} ({_num(stats.get('train_conversations'))} train / "
                              f"{_num(stats.get('validation_conversations'))} validation, val split {row.val_split:g})"),
            *([("duplicates", f"[yellow]{stats['duplicate_conversations']:,} exact duplicate conversation(s)[/yellow] "
                              "(kept, each on the same side of the split as its original: remove them unless they are meant to weigh more)")]
              if stats.get("duplicate_conversations") else []),
            *([("train examples", f"{stats['train_examples']:,} (earlier turns with reasoning each learned from a copy of "
                                  "their conversation: the template writes reasoning only into the last turn)")]
              if stats.get("train_examples") else []),
            ("training pairs", f"{_num(row.total_training_pairs)} assistant turns (+{_num(row.total_validation_pairs)} held out)"
                               + (f"; {stats['context_only_turns']:,} more are context only (weight 0), not learned"
                                  if stats.get("context_only_turns") else "")),
            ("tokens", _tokens(row.total_tokens, row.token_count_method) + f"  ({term.escape(_counted_with(row.token_count_method))})"),
            ("avg turns/conv", "-" if row.avg_turns_per_conversation is None else f"{row.avg_turns_per_conversation:g}"),
            ("avg tokens/turn", "-" if row.avg_tokens_per_turn is None else f"{row.avg_tokens_per_turn:g}"),
        ]
        dist = stats.get("tokens_per_conversation")
        if dist:
            facts.append(("tokens/conv", "  ".join(f"{k} {v:g}" for k, v in dist.items())))
        if stats.get("tool_call_turns"):
            results = (stats.get("turns_by_role") or {}).get("tool", 0)
            dropped = "; [yellow]the base model's template drops them[/yellow] (train with --set chat_template=chatml)" \
                if stats.get("template_drops_tool_calls") else ""
            facts.append(("tool calls", f"{stats['tool_call_turns']:,} assistant turns call tools, {results:,} tool results{dropped}"))
        if stats.get("template_default_system"):
            facts.append(("system prompt", "conversations without a system message get the base model's default, trained on as "
                          f"context and used in evals: \"{term.escape(_visible(stats['template_default_system']))}\" "
                          "(give your own system message to replace it)"))
    if row.skipped_lines:
        facts.append(("left out", f"{row.skipped_lines} line(s) with problems (--skip-invalid), listed below"))
    if row.validation_warning_count:
        facts.append(("warnings", f"{row.validation_warning_count} (they do not block training), listed below"))
    if row.error_message:
        facts.append(("error", term.escape(_visible(row.error_message))))
    grid = term.Table.grid(padding=(0, 2))
    for key, value in facts:
        grid.add_row(f"[dim]{key}[/dim]", str(value))
    out.print(grid)
    if row.status == "ready" and row.stats and row.stats.get("length_histogram"):
        _render_histogram(row.stats["length_histogram"])
    if row.sample_data:
        out.print("\n[bold]Sample conversations[/bold]")
        for sample in row.sample_data:
            _render_sample(sample)
    if row.validation_errors:
        title = "Lines left out (--skip-invalid)" if row.status == "ready" else "Validation problems"
        _render_findings(title, row.validation_errors, row.validation_error_count, "error", "PROBLEM")
    if row.validation_warnings:
        _render_findings("Warnings", row.validation_warnings, row.validation_warning_count, "warning", "WARNING")


def _render_sample(sample: dict[str, Any]) -> None:
    """A sample's first turns, each on one line: cut before any work on the text, since rows
    stored before samples were bounded may hold a whole conversation of any length."""
    out = common.console()
    out.print(f"[dim]{term.escape(_visible(str(sample.get('conversation_id'))))}[/dim]")
    turns = sample.get("turns", [])
    for turn in turns[:SAMPLE_SHOWN_TURNS]:
        raw = str(turn.get("content", ""))[: SAMPLE_TEXT_CHARS * 4]
        text = " ".join(raw.split())
        text = text if len(text) <= SAMPLE_TEXT_CHARS else text[: SAMPLE_TEXT_CHARS - 3] + "..."
        out.print(_visible(f"  {turn.get('role')}: {text}"), markup=False)
    total = sample.get("turn_count", len(turns))
    if total > SAMPLE_SHOWN_TURNS:
        out.print(f"  ... {total - SAMPLE_SHOWN_TURNS:,} more turn(s)", markup=False)


def _render_findings(title: str, findings: list[dict[str, Any]], count: int, key: str, column: str) -> None:
    more = f" (first {len(findings)} of {count})" if count > len(findings) else ""
    common.console().print(f"\n[bold]{title}{more}[/bold]")
    table = term.Table("LINE", column, "HOW TO FIX", box=None)
    for finding in findings:
        where = f"{finding['file']}:{finding['line']}" if finding.get("file") else str(finding["line"])
        table.add_row(*(term.escape(_visible(str(text))) for text in (where, finding.get(key, ""), finding.get("suggestion") or "")))
    common.console().print(table)


def _render_histogram(buckets: list[dict[str, int]]) -> None:
    out = common.console()
    out.print("\n[bold]Conversation length (tokens)[/bold]")
    peak = max(b["conversations"] for b in buckets)
    for bucket in buckets:
        bar = "#" * max(1, round(30 * bucket["conversations"] / peak))
        out.print(f"  <= {bucket['max_tokens']:>7}  {bar} {bucket['conversations']}", markup=False)


# Control characters (C0 but newline and tab, DEL, C1) and the bidi overrides that reorder a line.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _visible(text: str) -> str:
    """`text` with control characters written as escapes (ESC -> \\x1b): data cannot move the
    cursor, recolour or retitle the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


def _colour(status: str) -> str:
    return {"ready": "green", "error": "red"}.get(status, "yellow")


def _status(status: str) -> str:
    return f"[{_colour(status)}]{status}[/{_colour(status)}]"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def _counted_with(method: str | None) -> str:
    """How the tokens were counted, for people: the tokenizer's model (a converted .gguf by its
    file name), or the approximation."""
    if not method:
        return "not counted"
    if method == "approx:chars+template":
        return "approximated (characters by script, plus a chat template's tokens per message): added without a base model"
    if method.startswith("approx"):
        return f"approximated as {method.partition(':')[2].replace('/', ' / ') or method}: added without a base model"
    if method.startswith("tokenizer:"):
        name, _, suffix = method.removeprefix("tokenizer:").partition(" (")
        return f"{display_name(name, short=True)}'s tokenizer" + (f", {suffix.removesuffix(')')}" if suffix else "")
    return method


def _tokens(total: int | None, method: str | None) -> str:
    if total is None:
        return "-"
    return f"~{total:,}" if method and method.startswith("approx") else f"{total:,}"
