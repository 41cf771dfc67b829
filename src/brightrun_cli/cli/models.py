"""`brightrun models list|show|eval|try|compare|export|merge|rm`: the adapters that completed jobs
left behind, and what they answer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

from brightrun_cli.cli import common, term
from brightrun_cli.services.base_model import display_name

models_app = common.Group(
    help="Trained adapters: measured quality and answers, try, compare, model card, export and merge.",
    no_args_is_help=True,
)

ModelArg = Annotated[str, common.Arg(help="Model id, unique id prefix, NAME@VERSION, or NAME (its newest version).", show_default=False)]
ForceOpt = Annotated[bool, common.Opt("--force", help="Write into a non-empty target, overwriting files of the same names.")]


def _fmt(value, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


@models_app.command("list")
def list_command(
    ctx: common.Context,
    sort: Annotated[str, common.Opt("--sort", help="created (newest first), score (best first) or cost (cheapest first).")] = "created",
    limit: common.LimitOpt = None,
    json_output: common.JsonOpt = False,
) -> None:
    """List stored models.

    Examples:
      brightrun models list --sort score
      brightrun models list --json
    """
    from brightrun_cli.services.models import count_models, list_models, list_models_json

    ws = common.workspace(ctx)
    if json_output:
        common.print_raw_json(list_models_json(ws, sort=sort, limit=limit))
        return
    rows = list_models(ws, sort=sort, limit=limit or common.LIST_DEFAULT)
    table = common.list_table("ID", "NAME", "VERSION", "SCORE", "CONVERGENCE", "VAL LOSS", "COST", "CREATED", wrap=("NAME",), right=("COST",))
    for m in rows:
        q = m.quality_metrics
        table.add_row(
            common.short_id(m.id),
            m.name,
            m.version,
            f"{q.get('overall_score')}/5",
            q.get("convergence_quality") or "-",
            f"{_fmt(q.get('base_validation_loss'), '.3g')}→{_fmt(q.get('final_validation_loss'), '.3g')}",
            f"${_fmt(m.training_summary.get('total_cost'), '.2f')}",
            f"{m.created_at:%m-%d %H:%M}",
        )
    if not rows:
        common.console().print("No models yet: a completed 'brightrun train' job stores one.")
        return
    common.console().print(table)
    if limit is None and len(rows) == common.LIST_DEFAULT:
        common.more_rows_note(len(rows), count_models(ws))


@models_app.command("show")
def show_command(
    ctx: common.Context,
    model: ModelArg,
    which: Annotated[str, common.Opt("--eval", metavar="latest|job", help=(
        "Whose answers to show: the newest eval (a 'models eval' run's, once there is one) or the job's own, "
        "which the score was judged on."))] = "latest",
    json_output: common.JsonOpt = False,
) -> None:
    """Quality, answers on held-out prompts (base vs tuned), training, configuration and files of a model.

    Examples:
      brightrun models show 01jd4
      brightrun models show support-v1-2026-01-31 --eval job
      brightrun models show support-v1-2026-01-31@1.1.0 --json
    """
    from brightrun_cli.services.evals import stored_eval
    from brightrun_cli.services.models import get_model
    from brightrun_cli.services.quality import loss_change

    ws = common.workspace(ctx)
    row = get_model(ws, model)
    evaluated = stored_eval(ws, row, which)
    if json_output:
        common.print_json({**row.to_json(), "eval": evaluated.to_json() if evaluated else None})
        return
    out = common.console()
    q, s, c = row.quality_metrics, row.training_summary, row.configuration
    out.print(f"[bold]{row.name}[/bold] v{row.version}  ({row.id})")
    out.print(f"base model {term.escape(display_name(row.base_model))}   job {row.job_id}   dataset {row.dataset_id}   status {row.status}")
    improvement = q.get("validation_loss_improvement")
    quality = term.Table("quality", "", box=None)
    quality.add_row("score", f"{q.get('overall_score')}/5 ({q.get('score_reason')})")
    quality.add_row("convergence", str(q.get("convergence_quality")))
    quality.add_row("validation loss", f"base {_fmt(q.get('base_validation_loss'))} -> tuned {_fmt(q.get('final_validation_loss'))}"
                    + ("" if improvement is None else f" ({loss_change(improvement)}, {-improvement:+.0%})"))
    quality.add_row("perplexity", f"base {_fmt(q.get('base_perplexity'))} -> tuned {_fmt(q.get('perplexity'))}")
    quality.add_row("final training loss", _fmt(q.get("final_training_loss")))
    out.print(quality)
    out.print(f"[dim]rule: {q.get('score_rule')}[/dim]")
    _print_answers(out, evaluated, common.short_id(row.id))
    training = term.Table("training", "", box=None)
    tokens = s.get("total_tokens")
    training.add_row("epochs / steps / tokens",
                     f"{s.get('epochs_completed')} / {s.get('total_steps')} / {tokens:,}" if isinstance(tokens, int) else f"{s.get('epochs_completed')} / {s.get('total_steps')} / -")
    training.add_row("duration", common.human_duration(s.get("duration_s")))
    training.add_row("cost", f"${_fmt(s.get('total_cost'), '.2f')}")
    gpu = c.get("gpu_config") or {}
    rate = f" at ${gpu['hourly_rate']:.2f}/h" if isinstance(gpu.get("hourly_rate"), (int, float)) else ""
    training.add_row("preset / GPUs", f"{c.get('preset_id')} / {gpu.get('count', 1)} x {gpu.get('type', '?')}{rate}")
    for key, value in sorted((c.get("hyperparameters") or {}).items()):
        training.add_row(f"  {key}", str(value))
    out.print(training)
    files = term.Table("file", "size", "sha256", box=None)
    for entry in row.artifacts.get("files", []):
        files.add_row(entry["path"], f"{entry['size']:,}", entry["sha256"][:16])
    out.print(files)
    out.print(f"storage: {term.escape(row.storage_path)}")


SHOWN_SAMPLES = 10  # samples `models show` lists side by side (--json has them all)


def _last_user(prompt: list[dict]) -> str:
    return next((t["content"] for t in reversed(prompt or []) if t.get("role") == "user"), "")


def _print_aggregates(out, columns: list[str], aggregates: list[dict | None], winners: dict | None = None) -> None:
    """The answer metrics of each model side by side (with the best per metric when
    comparing), then a hint when answers ran out of tokens inside their reasoning."""
    from brightrun_cli.services.evals import reasoning_cut_hint, shown_metrics

    table = term.Table("answers", *columns, *(["best"] if winners is not None else []), box=None)
    for metric in (*shown_metrics(aggregates), "tokens"):
        cells = [_fmt((a or {}).get(metric)) for a in aggregates]
        table.add_row(metric, *cells, *([", ".join(winners.get(metric, []))] if winners is not None else []))
    out.print(table)
    hint = reasoning_cut_hint(dict(zip(columns, aggregates)))
    if hint:
        out.print(f"[yellow]{term.escape(hint)}[/yellow]")


def _print_answers(out, evaluated, ref: str = "MODEL") -> None:
    """The answer eval: aggregates base vs tuned, then samples side by side."""
    from brightrun_cli.services.evals import matched

    if evaluated is None:
        out.print(f"answers: no answer eval yet (run 'brightrun models eval {term.escape(ref)}')")
        return
    r = evaluated.row
    out.print(f"answers: {r.sample_count} held-out samples ({r.source} eval, {r.created_at:%Y-%m-%d %H:%M}, dataset {r.dataset_id})"
              + ("" if r.source == "job" else "; the job's own eval, which the score used: --eval job"))
    _print_aggregates(out, ["base", "tuned"], [r.base, r.tuned])
    if not evaluated.samples:
        return
    samples = term.Table("prompt", "reference", "base", "tuned", "match", box=None)
    for record in evaluated.samples[:SHOWN_SAMPLES]:
        tuned = record.get("tuned") or {}
        base = record.get("base") or {}
        match = "yes" if matched(tuned.get("scores")) else "no"
        samples.add_row(*map(term.escape, (_last_user(record.get("prompt")), record.get("reference", ""), base.get("answer", ""),
                                           tuned.get("answer", ""))), match)
    out.print(samples)
    if len(evaluated.samples) > SHOWN_SAMPLES:
        out.print(f"[dim]{len(evaluated.samples) - SHOWN_SAMPLES} more samples in --json[/dim]")


@models_app.command("eval")
def eval_command(
    ctx: common.Context,
    model: ModelArg,
    dataset: Annotated[Optional[str], common.Opt("--dataset", "-d", help="Dataset whose held-out split to answer (default: the model's own).", show_default=False)] = None,
    limit: common.EvalLimitOpt = None,
    max_new_tokens: Annotated[Optional[int], common.Opt("--max-new-tokens", help="Longest answer in tokens (default: 1.5 x the longest reference + 16).", show_default=False)] = None,
    require: common.RequireOpt = None,
    json_output: common.JsonOpt = False,
) -> None:
    """Score the base and the tuned model's answers to held-out prompts; store them; check gates.

    Greedy answers to each held-out assistant turn (the model's dataset unless --dataset),
    scored against the reference: exact match, token F1, ROUGE-L, chrF, length ratio, stop
    rate; where tools are offered, the calls written against the turn's (tool_name_match,
    tool_call_match). The samples and aggregates are stored with the model ('brightrun models show').

    Exit codes: 0 every --require holds, 6 one fails, 2 bad input (nothing runs).

    Examples:
      brightrun models eval 01jd4
      brightrun models eval 01jd4 --limit 20 --json
      brightrun models eval 01jd4 --require "exact_match>=0.5" --require "rougeL>base"
    """
    import sys

    from brightrun_cli.errors import RequirementFailed
    from brightrun_cli.services.evals import evaluate_model, failure_message

    def progress(line: str) -> None:
        sys.stderr.write(line + "\n")

    outcome = evaluate_model(common.workspace(ctx), model, dataset=dataset, limit=limit, max_new_tokens=max_new_tokens,
                             requirements=require or (), log=progress)
    row = outcome.stored.row
    if json_output:
        common.print_json({**outcome.stored.to_json(), "requirements": [
            {"requirement": c.requirement.text, "holds": c.holds, "actual": c.actual, "wanted": c.wanted} for c in outcome.checks]})
    else:
        out = common.console()
        out.print(f"model {outcome.model.id}: {row.sample_count} held-out samples of dataset {row.dataset_id} (eval {row.id})")
        _print_aggregates(out, ["base", "tuned"], [row.base, row.tuned])
        _print_checks(out, outcome.checks)
    if outcome.failed:
        raise RequirementFailed(failure_message(outcome.failed), "see the samples with 'brightrun models show " + outcome.model.id + "'")


def _print_checks(out, checks) -> None:
    for c in checks:
        wanted = "base" if c.requirement.value is None else "required"
        out.print(f"{'ok  ' if c.holds else 'FAIL'} {c.requirement.text}: tuned {_fmt(c.actual)}, {wanted} {_fmt(c.wanted)}")


@models_app.command("try")
def try_command(
    ctx: common.Context,
    model: ModelArg,
    prompt: Annotated[Optional[str], common.Arg(help="One prompt to answer. Without it, on a terminal: an interactive chat.", show_default=False)] = None,
    base: Annotated[bool, common.Opt("--base", help="Answer with the base model (adapter off) too, beside the tuned one.")] = False,
    system: Annotated[Optional[str], common.Opt("--system", help="A system message before the prompt.", show_default=False)] = None,
    tools: Annotated[Optional[Path], common.Opt("--tools", help="A JSON file listing the functions the model may call (OpenAI's tools list), rendered into the prompt as in training.", show_default=False)] = None,
    temperature: Annotated[float, common.Opt("--temperature", help="0 answers greedily; higher samples more freely.")] = 0.0,
    top_p: Annotated[float, common.Opt("--top-p", help="Sample from the smallest set of tokens this likely (with --temperature).")] = 1.0,
    max_new_tokens: Annotated[int, common.Opt("--max-new-tokens", help="Longest answer in tokens.")] = 256,
    seed: Annotated[Optional[int], common.Opt("--seed", min=0, max=2**32 - 1, help="Seed for sampled answers (repeatable answers).", show_default=False)] = None,
    json_output: common.JsonOpt = False,
) -> None:
    """Ask a model something: one answer, or a chat on a terminal when no prompt is given.

    The chat streams answers and keeps the conversation (through the model's chat template):
    /reset forgets it, /system TEXT sets the system message, /quit ends.

    Examples:
      brightrun models try 01jd4 "How do I reset my password?"
      brightrun models try 01jd4 "How do I reset my password?" --base --json
      brightrun models try 01jd4 --temperature 0.7 --seed 1
      brightrun models try 01jd4 "Where is order 37618?" --tools tools.json
    """
    from brightrun_cli.errors import UsageError
    from brightrun_cli.services.evals import loaded, sampling as make_sampling
    from brightrun_cli.services.models import get_model

    settings = make_sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    if prompt is None and (json_output or not common.stdin_is_tty()):
        raise UsageError("no prompt given and " + ("--json needs one" if json_output else "stdin is not a terminal for a chat"),
                         'pass the prompt as an argument: brightrun models try MODEL "your question"')
    functions = _read_tools(tools) if tools is not None else None
    ws = common.workspace(ctx)
    row = get_model(ws, model)
    history = [{"role": "system", "content": system}] if system else []
    with loaded(ws, row) as chat_model:
        if prompt is None:
            _chat(chat_model, history, settings, base, functions)
            return
        messages = history + [{"role": "user", "content": prompt}]
        tuned = chat_model.answer(messages, sampling=settings, tools=functions)
        base_answer = chat_model.answer(messages, base=True, sampling=settings, tools=functions) if base else None
    if json_output:
        from brightrun_cli.services.evals import calls_in

        def as_json(answer):
            if answer is None:
                return None
            calls = {"calls": calls_in(answer.text)} if functions else {}  # the tool calls it wrote, parsed
            return {"answer": answer.text, "stopped": answer.stopped, "tokens": answer.tokens, **calls}

        common.print_json({"model_id": row.id, "messages": messages, **({"tools": functions} if functions else {}),
                           "tuned": as_json(tuned), "base": as_json(base_answer),
                           "sampling": {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed}})
        return
    if base_answer is None:
        common.echo(tuned.text)
        return
    common.echo(f"tuned: {tuned.text}")
    common.echo(f"base:  {base_answer.text}")


def _read_tools(path: Path) -> list[dict]:
    """`--tools FILE`: a JSON list of function schemas, checked as a dataset's `tools` are."""
    import json

    from brightrun_cli.errors import UsageError
    from brightrun_cli.services.dataset_formats import parse_tools

    try:
        value = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--tools {path}: cannot read it ({exc.strerror or exc})", "pass a JSON file listing the functions") from None
    except ValueError as exc:
        raise UsageError(f"--tools {path}: not valid JSON ({exc})", "write the functions as a JSON list") from None
    functions, problems = parse_tools(value)
    if problems:
        raise UsageError(f"--tools {path}: {problems[0].error}", problems[0].suggestion)
    if not functions:
        raise UsageError(f"--tools {path}: lists no function", "write at least one function schema, or leave --tools out")
    return functions


def _chat(chat_model, history: list[dict], settings, with_base: bool, tools: list[dict] | None = None) -> None:
    """The interactive chat: streamed answers, multi-turn through the chat template."""
    import sys

    system = history[0]["content"] if history else None
    turns: list[dict] = []
    common.echo("chat: /reset forgets the conversation, /system TEXT sets the system message, /quit ends", err=True)
    while True:
        try:
            text = input("you> ")
        except (EOFError, KeyboardInterrupt):
            common.echo("", err=True)
            return
        command = text.strip()
        if not command:
            continue
        if command in ("/quit", "/exit"):
            return
        if command == "/reset":
            turns = []
            common.echo("(conversation forgotten)", err=True)
            continue
        if command.startswith("/system"):
            system = command[len("/system"):].strip() or None
            turns = []
            common.echo(f"(system message {'set' if system else 'cleared'}; conversation forgotten)", err=True)
            continue
        messages = ([{"role": "system", "content": system}] if system else []) + turns + [{"role": "user", "content": text}]
        answers = {}
        for label, base in (("tuned", False), ("base", True)) if with_base else (("model", False),):
            sys.stdout.write(f"{label}> ")
            pieces = []
            try:
                for piece in chat_model.stream(messages, base=base, sampling=settings, tools=tools):
                    pieces.append(piece)
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            except KeyboardInterrupt:
                sys.stdout.write(" [stopped]")
            sys.stdout.write("\n")
            answers[label] = "".join(pieces).strip()
        # The conversation goes on with the tuned model's answer (the model being tried).
        turns += [{"role": "user", "content": text}, {"role": "assistant", "content": answers.get("tuned", answers.get("model", ""))}]


@models_app.command("compare")
def compare_command(
    ctx: common.Context,
    models: Annotated[list[str], common.Arg(help="Two or more models (id, prefix, NAME@VERSION, NAME); base:MODEL is that model's base.", show_default=False)],
    dataset: Annotated[Optional[str], common.Opt("--dataset", "-d", help="Dataset whose held-out split to answer (default: the first model's).", show_default=False)] = None,
    limit: common.EvalLimitOpt = None,
    max_new_tokens: Annotated[Optional[int], common.Opt("--max-new-tokens", help="Longest answer in tokens (default: 1.5 x the longest reference + 16).", show_default=False)] = None,
    json_output: common.JsonOpt = False,
) -> None:
    """Answer the same held-out prompts with each model: aggregates, winners, disagreements.

    Greedy answers of each model (base:MODEL is MODEL's base, adapter off) to the held-out
    split of --dataset, else of the first model's dataset.

    Examples:
      brightrun models compare 01jd4 base:01jd4
      brightrun models compare support-v1@1.0.0 support-v1@1.1.0 --limit 20 --json
    """
    from brightrun_cli.services.evals import compare_models

    result = compare_models(common.workspace(ctx), models, dataset=dataset, limit=limit, max_new_tokens=max_new_tokens)
    if json_output:
        common.print_json(result.to_json())
        return
    out = common.console()
    labels = [e.label for e in result.entries]
    out.print(f"{len(result.samples)} held-out samples of dataset {result.dataset.name} ({result.dataset.id})")
    _print_aggregates(out, labels, result.aggregates, result.winners)
    if not result.disagreements:
        out.print("the models answer every sample alike")
        return
    out.print(f"they answer {len(result.disagreements)} of {len(result.samples)} samples differently:")
    table = term.Table("prompt", "reference", *labels, box=None)
    for k in result.disagreements[:SHOWN_SAMPLES]:
        sample = result.samples[k]
        table.add_row(*map(term.escape, (_last_user(sample.prompt), result.references[k], *(rows[k]["answer"] for rows in result.answers))))
    out.print(table)
    if len(result.disagreements) > SHOWN_SAMPLES:
        out.print(f"[dim]{len(result.disagreements) - SHOWN_SAMPLES} more in --json[/dim]")


@models_app.command("export")
def export_command(
    ctx: common.Context,
    model: ModelArg,
    target: Annotated[str, common.Arg(help="Local directory or fsspec URL (e.g. s3://bucket/path).", show_default=False)],
    force: ForceOpt = False,
    json_output: common.JsonOpt = False,
) -> None:
    """Copy a model's PEFT adapter directory (with tokenizer, config, metrics and card) somewhere.

    Loads with PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), TARGET).
    Credentials come from the target filesystem's usual sources; for an S3-compatible
    server set AWS_ENDPOINT_URL.

    Examples:
      brightrun models export 01jd4 ./my-adapter
      brightrun models export 01jd4 s3://bucket/adapters/run-1
    """
    from brightrun_cli.services.models import export_model

    exported = export_model(common.workspace(ctx), model, target, force=force)
    if json_output:
        common.print_json({"target": exported.target, "files": exported.files, "bytes": exported.bytes})
        return
    common.console().print(f"exported {len(exported.files)} files ({exported.bytes:,} bytes) to {term.escape(str(exported.target))}")


@models_app.command("merge")
def merge_command(
    ctx: common.Context,
    model: ModelArg,
    out_dir: Annotated[str, common.Arg(help="Directory for the merged model.", show_default=False)],
    force: ForceOpt = False,
    json_output: common.JsonOpt = False,
) -> None:
    """Merge base model + adapter into a standard Hugging Face model directory (safetensors).

    Loads with AutoModelForCausalLM.from_pretrained(OUT_DIR); needs the base model locally.

    Examples:
      brightrun models merge 01jd4 ./merged
      brightrun models merge support-v1 ./merged --force --json
    """
    from brightrun_cli.services.models import merge_model

    path = merge_model(common.workspace(ctx), model, out_dir, force=force)
    if json_output:  # as `models export --json` says what it wrote
        files = sorted(p for p in path.rglob("*") if p.is_file())
        common.print_json({"target": str(path), "files": [str(p.relative_to(path)) for p in files],
                           "bytes": sum(p.stat().st_size for p in files)})
        return
    common.console().print(f"merged model written to {term.escape(str(path))}")


@models_app.command("rm")
def rm_command(ctx: common.Context, model: ModelArg, yes: common.YesOpt = False, json_output: common.JsonOpt = False) -> None:
    """Delete a model's stored files and remove it from the list (refused while another model derives from it).

    Examples:
      brightrun models rm 01jd4 --yes
      brightrun models rm support-v1@1.0.0 --yes --json
    """
    from brightrun_cli.services.models import get_model, remove_model

    ws = common.workspace(ctx)
    if not yes:
        if not common.stdin_is_tty():
            from brightrun_cli.errors import UsageError

            raise UsageError("refusing to delete without confirmation (stdin is not a terminal)", "pass --yes")
        row = get_model(ws, model)
        common.confirm(f"delete model {row.name} v{row.version} ({row.id}) and its files?", abort=True)
    removed = remove_model(ws, model)
    if json_output:
        common.print_json({"id": removed.id, "name": removed.name, "version": removed.version, "removed": True})
        return
    common.console().print(f"removed model {removed.id} ({removed.name}@{removed.version})", markup=False)


commands = common.Group()  # what this module adds to the root command
commands.add_group(models_app, name="models")
