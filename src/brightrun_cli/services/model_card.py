"""The model card (`README.md`) stored with every artifact: what it was trained from,
how, how well it did against its base model, and how to load it."""

from __future__ import annotations

from brightrun_cli.generation import gguf, metrics
from brightrun_cli.registry.rows import DatasetRow as Dataset, ModelRow as ModelArtifact
from brightrun_cli.services.quality import Curve, loss_change

CARD_SAMPLES = 5  # held-out samples shown side by side in the card


def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _table(rows: list[tuple[str, object]], header: tuple[str, str]) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {key} | {_fmt(value)} |" for key, value in rows]
    return lines


def _curve_summary(train: Curve, validation: Curve) -> list[str]:
    if not train:
        return ["No training loss was recorded."]
    losses = [loss for _, loss in train]
    best = min(range(len(losses)), key=losses.__getitem__)
    lines = [
        f"Training loss over {len(train)} logged steps: {losses[0]:.4g} at step {train[0][0]}, "
        f"lowest {losses[best]:.4g} at step {train[best][0]}, final {losses[-1]:.4g} at step {train[-1][0]}.",
        "",
        "| step | validation loss |",
        "|---|---|",
    ]
    lines += [f"| {step}{' (base model)' if step == 0 else ''} | {loss:.4g} |" for step, loss in validation]
    return lines


def render_model_card(
    artifact: ModelArtifact,
    dataset: Dataset | None,
    train: Curve,
    validation: Curve,
    versions: dict[str, str],
    *,
    answers: dict | None = None,
    samples: list[dict] | None = None,
) -> str:
    q = artifact.quality_metrics
    s = artifact.training_summary
    c = artifact.configuration
    improvement = q.get("validation_loss_improvement")
    lines = [
        f"# {artifact.name} (v{artifact.version})",
        "",
        f"LoRA adapter for `{gguf.describe(artifact.base_model)}`, trained by brightrun job `{artifact.job_id}`.",
        "",
        "## Quality",
        "",
        *_table(
            [
                ("overall score (1-5)", q.get("overall_score")),
                ("convergence", q.get("convergence_quality")),
                ("base model validation loss", q.get("base_validation_loss")),
                ("fine-tuned validation loss", q.get("final_validation_loss")),
                ("validation loss change", None if improvement is None else f"{loss_change(improvement)} ({-improvement:+.0%})"),
                ("perplexity (base -> tuned)", f"{_fmt(q.get('base_perplexity'))} -> {_fmt(q.get('perplexity'))}"),
                ("final training loss", q.get("final_training_loss")),
            ],
            ("metric", "value"),
        ),
        "",
        f"Score: {q.get('score_reason')}. Rule: {q.get('score_rule')}.",
        "",
        *_answers_section(answers, samples or []),
        "## Loss curves",
        "",
        *_curve_summary(train, validation),
        "",
        "## Dataset",
        "",
        *_table(_dataset_rows(artifact, dataset), ("field", "value")),
        "",
        "## Training",
        "",
        *_table(
            [
                ("preset", c.get("preset_id")),
                ("GPUs", c.get("gpu_config")),
                ("epochs", s.get("epochs_completed")),
                ("steps", s.get("total_steps")),
                ("tokens", s.get("total_tokens")),
                ("duration (s)", s.get("duration_s")),
                ("cost (USD)", s.get("total_cost")),
            ]
            + sorted((f"`{k}`", v) for k, v in (c.get("hyperparameters") or {}).items()),
            ("setting", "value"),
        ),
        "",
        "## Loading",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{artifact.base_model}")  # or its local directory',
        'model = PeftModel.from_pretrained(base, "path/to/this/directory")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")',
        "```",
        "",
        f"Or merge it into a standalone model: `brightrun models merge {artifact.id} OUT_DIR`.",
        "",
        "## Library versions",
        "",
        *_table(sorted(versions.items()), ("library", "version")),
        "",
    ]
    return "\n".join(lines)


def _dataset_rows(artifact: ModelArtifact, dataset: Dataset | None) -> list[tuple[str, object]]:
    if dataset is None:
        return [("id", artifact.dataset_id)]
    return [
        ("name", dataset.name),
        ("id", dataset.id),
        ("conversations", dataset.total_conversations),
        ("training pairs", dataset.total_training_pairs),
        ("validation pairs", dataset.total_validation_pairs),
        ("tokens", dataset.total_tokens),
        ("token count method", dataset.token_count_method),
        ("sha256", dataset.content_sha256),
    ]


def _cell(text: str, width: int = 80) -> str:
    """Text for one Markdown table cell: one line, pipes escaped, cut at `width`."""
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= width else flat[:width - 1] + "…"


def _answers_section(answers: dict | None, samples: list[dict]) -> list[str]:
    """The answer eval the job ran on held-out prompts: aggregates base vs tuned, and a few samples."""
    lines = ["## Answers on held-out prompts", ""]
    if not answers or answers.get("status") != "completed":
        why = (answers or {}).get("error") or "the job ran no answer eval"
        return lines + [f"No answer eval: {why}. Run `brightrun models eval MODEL` to measure one.", ""]
    base, tuned = answers.get("base") or {}, answers.get("tuned") or {}
    lines += [f"Greedy answers to {answers.get('samples')} held-out prompts (max {answers.get('max_new_tokens')} new tokens).", "",
              "| metric | base | tuned |", "|---|---|---|"]
    lines += [f"| {m} | {_fmt(base.get(m))} | {_fmt(tuned.get(m))} |" for m in metrics.shown([base, tuned])]
    if samples:
        lines += ["", "| prompt | reference | base | tuned | match |", "|---|---|---|---|---|"]
        for record in samples[:CARD_SAMPLES]:
            prompt = next((t["content"] for t in reversed(record.get("prompt") or []) if t.get("role") == "user"), "")
            tuned_answer = record.get("tuned") or {}
            match = "yes" if metrics.matched(tuned_answer.get("scores")) else "no"
            lines.append(f"| {_cell(prompt)} | {_cell(record.get('reference', ''))} | {_cell((record.get('base') or {}).get('answer', ''))} "
                         f"| {_cell(tuned_answer.get('answer', ''))} | {match} |")
    return lines + [""]
