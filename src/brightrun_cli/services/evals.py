"""Judging a stored model by its answers: the eval its job ran, `models eval`, `models
compare`, `models try`, and the `--require` gates of `models eval`, `train` and `watch`.

Where evals run and what they leave (docs/ARCHITECTURE.md, "Answer evals"):

- the job's own eval runs inside the trainer on the job's host and writes
  `final/eval.jsonl` + `final/eval_summary.json`; `create_artifact` stores both with the
  adapter and, in the transaction that registers the model, records the aggregates as a
  `model_evals` row (source "job", `record_job_eval`);
- `models eval` runs here, on the model's held-out split (or another dataset's), and
  stores `models/<artifact_id>/evals/<eval_id>/eval.jsonl` + `eval_summary.json`, then
  its row (source "command"): files first, so a row always has its samples.

Reading an eval (`stored_eval`, for `models show`) imports nothing heavy; running one
imports torch and transformers inside the functions that load a model.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from brightrun_cli.errors import OperationError, RequirementFailed, UsageError
from brightrun_cli.generation import evaluate as answer_eval
from brightrun_cli.generation import metrics
from brightrun_cli.generation.engine import Sampling
from brightrun_cli.registry import datasets as dataset_rows
from brightrun_cli.registry import evals as eval_rows
from brightrun_cli.registry import models as model_rows
from brightrun_cli.registry.ids import new_id
from brightrun_cli.registry.rows import DatasetRow, ModelEvalRow, ModelRow
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.services.datasets import get_dataset, local_store_root, split_paths
from brightrun_cli.services.models import get_model, local_artifact_dir
from brightrun_cli.workspace import Workspace

BASE_PREFIX = "base:"  # `models compare base:MODEL`: the model's base, adapter off
shown_metrics = metrics.shown  # the answer metrics a table of aggregates shows, in order
matched = metrics.matched  # whether a sample's scores say its answer is right
calls_in = metrics.calls_in  # the tool calls an answer writes, parsed
reasoning_cut_hint = metrics.reasoning_cut_hint  # a line when answers ran out of tokens inside their reasoning
Requirement = answer_eval.Requirement
Check = answer_eval.Check


@dataclass
class StoredEval:
    row: ModelEvalRow
    samples: list[dict]  # eval.jsonl records (generation/evaluate.py); empty when the file is gone

    def summary(self) -> dict:
        """The row as an eval summary, for the gates (answer_eval.check_requirements)."""
        return {"status": "completed", "samples": self.row.sample_count, "base": self.row.base, "tuned": self.row.tuned}

    def to_json(self) -> dict:
        return {**self.row.to_json(), "samples": self.samples}


@dataclass
class EvalOutcome:
    model: ModelRow
    stored: StoredEval
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.holds]


# ---------------------------------------------------------------- gates


def parse_requirements(texts: Sequence[str] | None) -> list[Requirement]:
    """`--require` texts as requirements; a malformed one is a UsageError (exit 2), raised
    before anything runs."""
    return [answer_eval.parse_requirement(text) for text in texts or ()]


def check_measurable(requirements: Sequence[Requirement], samples: Callable[[], Sequence[answer_eval.Sample]],
                     dataset: DatasetRow) -> None:
    """A gate on a tool-call metric where no held-out answer calls a tool would fail as "not
    measured" after the whole eval: refused before anything loads. `samples` is read only
    when there is such a gate."""
    tool_gates = [r.text for r in requirements if r.metric in metrics.TOOL_METRICS]
    if not tool_gates:
        return
    held_out = samples()
    if not any(s.calls for s in held_out):
        raise UsageError(f"requirement {tool_gates[0]!r} needs answers that call tools, and none of the "
                         f"{len(held_out)} held-out samples of dataset '{dataset.name}' does",
                         "gate on a text metric (rougeL, token_f1, exact_match, chrf), or evaluate on data with tool calls")


def check_requirements(stored: StoredEval, requirements: list[Requirement]) -> list[Check]:
    return answer_eval.check_requirements(stored.summary(), requirements) if requirements else []


def failure_message(failed: list[Check]) -> str:
    """One line for the failed requirements: what was wanted, what was measured."""
    def measured(c: Check) -> str:
        actual = "not measured" if c.actual is None else f"{c.actual:.4g}"
        wanted = "" if c.requirement.value is not None else f" vs base {c.wanted:.4g}" if c.wanted is not None else " vs base (not measured)"
        return f"{c.requirement.text} (tuned {actual}{wanted})"

    return f"{len(failed)} requirement(s) failed: " + "; ".join(measured(c) for c in failed)


def job_requirements(ws: Workspace, job_id: str, requirements: list[Requirement]) -> tuple[StoredEval, list[Check]]:
    """The requirements of `train --require` / `watch --require` against a completed job's
    own eval (what its model recorded). RequirementFailed (exit 6) when there is none to judge."""
    with ws.registry.reading() as conn:
        model = model_rows.of_job(conn, job_id)
        row = eval_rows.of_job_eval(conn, model.id) if model is not None else None
    if model is None:
        raise OperationError(f"job {job_id} has no model to check the requirements against", "see 'brightrun jobs show'")
    if row is None:  # a gate that cannot be checked does not hold (CI must not pass it)
        raise RequirementFailed(
            f"model {model.id} has no answer eval from its job to check --require against (the eval failed: see its trainer.log)",
            f"run 'brightrun models eval {model.id} --require ...'",
        )
    stored = StoredEval(row, read_samples(ws, row))
    return stored, check_requirements(stored, requirements)


# ---------------------------------------------------------------- the job's own eval


def record_job_eval(tx, model: ModelRow, summary: dict | None) -> ModelEvalRow | None:
    """In create_artifact's transaction: the aggregates of the eval the job ran (its
    eval_summary.json, stored with the adapter beside eval.jsonl). Nothing for an eval that
    was skipped or failed (the summary says why; `models eval` can run it again)."""
    if not summary or summary.get("status") != "completed" or not summary.get("base"):
        return None
    files = {entry["path"] for entry in model.artifacts.get("files", [])}
    samples = f"{model.storage_path}/{answer_eval.EVAL_FILE}" if answer_eval.EVAL_FILE in files else None
    return eval_rows.insert(tx, id=new_id(), model_id=model.id, dataset_id=model.dataset_id, source="job",
                            sample_count=int(summary.get("samples") or 0), max_new_tokens=summary.get("max_new_tokens"),
                            base=summary.get("base"), tuned=summary.get("tuned"), samples_path=samples,
                            created_at=model.created_at)


# ---------------------------------------------------------------- reading (light)


def stored_eval(ws: Workspace, model: ModelRow, which: str = "latest") -> StoredEval | None:
    """The model's newest eval (`which` "latest") or the one its job made ("job"), with its
    samples, or None. No heavy import (models show)."""
    if which not in ("latest", "job"):
        raise UsageError(f"--eval {which!r}: expected latest or job", "pass --eval latest (the newest) or --eval job (the job's own)")
    with ws.registry.reading() as conn:
        row = eval_rows.latest_of_model(conn, model.id) if which == "latest" else eval_rows.of_job_eval(conn, model.id)
    return None if row is None else StoredEval(row, read_samples(ws, row))


def read_samples(ws: Workspace, row: ModelEvalRow) -> list[dict]:
    """The eval.jsonl records of an eval; empty when the file is not in storage."""
    if not row.samples_path:
        return []
    root = local_store_root(ws)
    try:
        if root is not None:
            text = (root / row.samples_path).read_text(encoding="utf-8")
        else:
            with ws.storage.open(row.samples_path) as handle:
                text = handle.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------- running (heavy, lazily)


def check_held_out(dataset: DatasetRow, purpose: str) -> None:
    """A UsageError, saying how to get one, when `dataset` holds nothing out."""
    if dataset.total_validation_pairs:
        return
    source = shlex.join(dataset.sources)
    raise UsageError(
        f"dataset '{dataset.name}' has no held-out split {purpose} (it was added with --val-split 0 or is too small)",
        f"add it again with one, e.g. 'brightrun dataset add {source} "
        f"--name {shlex.quote(dataset.name + '-eval')} --val-split 0.1', and pass that dataset",
    )


def held_out_file(ws: Workspace, dataset: DatasetRow) -> Path:
    """The dataset's held-out split, or a UsageError saying how to get one."""
    if dataset.status != "ready":  # failed validation (or still being added): its problem, not a missing split
        why = f": {dataset.error_message}" if dataset.error_message else ""
        raise UsageError(f"dataset '{dataset.name}' is {dataset.status}, not ready to evaluate on{why}",
                         f"run 'brightrun dataset show {dataset.id}' and fix or re-add it")
    check_held_out(dataset, "to evaluate on")
    return split_paths(ws, dataset)[1]


def held_out_samples(ws: Workspace, dataset: DatasetRow, limit: int | None = None) -> list[answer_eval.Sample]:
    """The held-out samples an answer eval of `dataset` judges (the first `limit`, by default as many as it takes)."""
    return answer_eval.held_out_samples(held_out_file(ws, dataset), limit or answer_eval.DEFAULT_LIMIT)


def _samples(ws: Workspace, model: ModelRow, dataset_ref: str | None, limit: int | None):
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit}: must be at least 1", "pass the number of held-out samples to evaluate, e.g. --limit 20")
    dataset = get_dataset(ws, dataset_ref) if dataset_ref is not None else _own_dataset(ws, model)
    return dataset, held_out_samples(ws, dataset, limit)


def _own_dataset(ws: Workspace, model: ModelRow) -> DatasetRow:
    """The dataset a model was trained on, also after `dataset rm` (its files are kept while
    a model refers to it, so its held-out split still serves)."""
    with ws.registry.reading() as conn:
        dataset = dataset_rows.get(conn, model.dataset_id) if model.dataset_id else None
    if dataset is None:
        raise UsageError(f"the dataset model {model.id} was trained on is gone from the registry",
                         "pass --dataset NAME to evaluate on another dataset's held-out split")
    return dataset


@contextlib.contextmanager
def loaded(ws: Workspace, model: ModelRow) -> Iterator:
    """The model (base + its adapter) as a generation.engine.ChatModel."""
    from brightrun_cli.errors import quiet_library_warnings
    from brightrun_cli.generation.engine import load_chat_model

    quiet_library_warnings()
    if not sys.stderr.isatty():  # transformers' loading progress bars: for a person at a terminal, not a log
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if not model.base_model:
        raise UsageError(f"model {model.id} does not record its base model", "it cannot be loaded for answers")
    with tempfile.TemporaryDirectory(dir=ws.cache_dir, prefix="adapter-") as scratch:
        adapter = local_artifact_dir(ws, model, Path(scratch))
        yield load_chat_model(model.base_model, adapter)


def evaluate_model(ws: Workspace, ref: str, *, dataset: str | None = None, limit: int | None = None,
                   max_new_tokens: int | None = None, requirements: Sequence[str] = (),
                   log: Callable[[str], None] | None = None) -> EvalOutcome:
    """`models eval`: base vs tuned greedy answers on the held-out split (the model's
    dataset's unless `dataset`), stored (files, then the row), and the requirements checked.
    All input is checked before the model loads: bad input writes nothing."""
    parsed = parse_requirements(requirements)
    model = get_model(ws, ref)
    if max_new_tokens is not None:
        Sampling(max_new_tokens=max_new_tokens).check()
    data, samples = _samples(ws, model, dataset, limit)
    check_measurable(parsed, lambda: samples, data)
    with loaded(ws, model) as chat_model:
        records, summary = answer_eval.evaluate(chat_model, samples, max_new_tokens=max_new_tokens, log=log)
    summary["limit"] = limit or answer_eval.DEFAULT_LIMIT
    eval_id = new_id()
    prefix = f"{model.storage_path}/evals/{eval_id}"
    with tempfile.TemporaryDirectory(dir=ws.cache_dir, prefix="eval-") as scratch:
        answer_eval.write_eval(Path(scratch), records, summary)
        ws.storage.put_dir(scratch, prefix)
    with ws.registry.write() as tx:
        row = eval_rows.insert(tx, id=eval_id, model_id=model.id, dataset_id=data.id, source="command",
                               sample_count=summary["samples"], max_new_tokens=summary["max_new_tokens"],
                               base=summary["base"], tuned=summary["tuned"],
                               samples_path=f"{prefix}/{answer_eval.EVAL_FILE}", created_at=utcnow())
    stored = StoredEval(row, records)
    return EvalOutcome(model, stored, check_requirements(stored, parsed))


# ---------------------------------------------------------------- models try


def sampling(*, temperature: float, top_p: float, max_new_tokens: int, seed: int | None) -> Sampling:
    """`models try`'s sampling settings, checked (UsageError) before a model loads."""
    settings = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    settings.check()
    return settings


# ---------------------------------------------------------------- models compare


@dataclass(frozen=True)
class Entry:
    label: str  # as the user wrote it
    model: ModelRow
    base: bool  # the model's base, adapter off


@dataclass
class Comparison:
    entries: list[Entry]
    dataset: DatasetRow
    samples: list  # answer_eval.Sample
    answers: list[list[dict]]  # per entry, per sample: {"answer", "stopped", "tokens", "scores"}
    aggregates: list[dict]  # per entry: metrics.aggregate + tokens
    winners: dict[str, list[str]]  # metric -> labels of the best entries
    disagreements: list[int]  # sample indexes where the entries' answers differ
    references: list[str]  # per sample, as the first entry's model writes it (Sample.reference_for)

    def to_json(self) -> dict:
        return {
            "dataset_id": self.dataset.id,
            "entries": [{"label": e.label, "model_id": e.model.id, "base": e.base, "aggregates": a}
                        for e, a in zip(self.entries, self.aggregates)],
            "winners": self.winners,
            "samples": [{"conversation_id": s.conversation_id, "turn": s.turn, "prompt": s.prompt, "reference": self.references[i],
                         "answers": {e.label: answers[i] for e, answers in zip(self.entries, self.answers)},
                         "disagree": i in self.disagreements}
                        for i, s in enumerate(self.samples)],
        }


def resolve_entries(ws: Workspace, refs: Sequence[str]) -> list[Entry]:
    if len(refs) < 2:
        raise UsageError("compare needs at least two models", "pass e.g. 'brightrun models compare MODEL base:MODEL'")
    if len(set(refs)) != len(refs):
        raise UsageError("a model is named twice", "list each model (or base:MODEL) once")
    entries, seen = [], {}
    for ref in refs:
        base = ref.startswith(BASE_PREFIX)
        entry = Entry(ref, get_model(ws, ref[len(BASE_PREFIX):] if base else ref), base)
        # What answers: a tuned model is its id, a base model its base (base:A and base:B may share one).
        key = ("base", entry.model.base_model) if base else ("model", entry.model.id)
        if key in seen:
            raise UsageError(f"{seen[key]!r} and {ref!r} are the same {'base model' if base else 'model'}: it would be compared with itself",
                             "list each model (or base:MODEL) once")
        seen[key] = ref
        entries.append(entry)
    return entries


def compare_models(ws: Workspace, refs: Sequence[str], *, dataset: str | None = None, limit: int | None = None,
                   max_new_tokens: int | None = None) -> Comparison:
    """`models compare`: the same held-out prompts (of `dataset`, else the first model's)
    answered greedily by each entry; aggregates, the winner per metric, and the samples
    where the answers differ. One load per model: `base:X` reuses X's weights, adapter off."""
    entries = resolve_entries(ws, refs)
    if max_new_tokens is not None:
        Sampling(max_new_tokens=max_new_tokens).check()
    data, samples = _samples(ws, entries[0].model, dataset, limit)
    prompts = [s.prompt for s in samples]
    answers: list[list[dict]] = [[] for _ in entries]
    first_references: list[str] = []
    by_model: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        by_model.setdefault(entry.model.id, []).append(i)
    for indexes in by_model.values():
        with loaded(ws, entries[indexes[0]].model) as chat_model:
            references = [s.reference_for(chat_model.tokenizer) for s in samples]
            budget = max_new_tokens or answer_eval.default_max_new_tokens(chat_model.tokenizer, references)
            first_references = first_references or references
            for i in indexes:
                generated = chat_model.answers(prompts, base=entries[i].base, max_new_tokens=budget, tools=[s.tools for s in samples])
                for answer, reference, sample in zip(generated, references, samples):
                    answers[i].append({"answer": answer.text, "stopped": answer.stopped, "tokens": answer.tokens,
                                       "scores": metrics.score_sample(answer.text, reference, sample.functions_called())})
    aggregates = [{**metrics.aggregate([a["scores"] for a in rows], [a["stopped"] for a in rows], [a["answer"] for a in rows]),
                   "tokens": sum(a["tokens"] for a in rows)} for rows in answers]
    disagreements = [k for k in range(len(samples))  # by the answers a reader sees (reasoning left out)
                     if len({metrics.normalise(metrics.without_reasoning(rows[k]["answer"])) for rows in answers}) > 1]
    return Comparison(entries, data, samples, answers, aggregates, winners([e.label for e in entries], aggregates), disagreements,
                      first_references)


def winners(labels: list[str], aggregates: list[dict]) -> dict[str, list[str]]:
    """Per metric, the entries with the best aggregate (ties share): highest, except
    length_ratio, where closest to 1 (as long as the reference) is best."""
    best: dict[str, list[str]] = {}
    for metric in metrics.METRICS:
        values = [(label, a.get(metric)) for label, a in zip(labels, aggregates) if a.get(metric) is not None]
        if not values:
            continue
        key = (lambda v: -abs(v - 1.0)) if metric == "length_ratio" else (lambda v: v)
        top = max(key(v) for _, v in values)
        best[metric] = [label for label, v in values if key(v) == top]
    return best
