"""`brightrun costs`: spend over a period, grouped, with a bar chart."""

from __future__ import annotations

from typing import Annotated

from brightrun_cli.cli import common, term

BAR_WIDTH = 30


def costs_cmd(
    ctx: common.Context,
    period: Annotated[str | None, common.Opt("--period", help="Current calendar week, month or year (UTC).")] = None,
    since: Annotated[str | None, common.Opt("--since", help="First day, YYYY-MM-DD.")] = None,
    until: Annotated[str | None, common.Opt("--until", help="Last day (inclusive), YYYY-MM-DD.")] = None,
    by: Annotated[str, common.Opt("--by", help="Group by type, day, job or gpu.")] = "type",
    json_output: common.JsonOpt = False,
) -> None:
    """Show what training cost: totals and a bar per group.

    Examples:
      brightrun costs --period month
      brightrun costs --since 2026-01-01 --until 2026-03-31 --by job
      brightrun costs --by gpu --json
    """
    from brightrun_cli.services.costs import cost_report

    report = cost_report(common.workspace(ctx), period=period, since=since, until=until, by=by)
    if json_output:
        common.print_json(report.to_json())
        return
    out = common.console()
    span = f"{report.since or 'the beginning'} to {report.until or 'today'}"
    if not report.groups:
        out.print(f"No cost records from {span}.")
        return
    top = max(g.amount for g in report.groups) or 1.0
    # Keys (job ids, names, dates) and amounts are never cut in two; the bar gives way first.
    table = term.Table(term.Column(report.by, no_wrap=True), term.Column("cost", no_wrap=True), "records", "",
                       title=f"Costs from {span}", title_justify="left")
    for group in report.groups:
        bar = "█" * max(1 if group.amount > 0 else 0, round(BAR_WIDTH * group.amount / top))
        table.add_row(group.key, f"${group.amount:,.2f}", str(group.records), bar)
    out.print(table)
    split = ", ".join(f"{k} ${v:,.2f}" for k, v in sorted(report.by_type.items()))
    out.print(f"[bold]total ${report.total:,.2f}[/bold] ({split})")


commands = common.Group()  # what this module adds to the root command
commands.command("costs")(costs_cmd)
