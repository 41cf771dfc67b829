"""`brightrun status` (the fleet at a glance) and `brightrun prune` (free what nothing needs)."""

from __future__ import annotations

from typing import Annotated

from brightrun_cli.cli import common

PRUNE_ITEMS_SHOWN = 40  # item lines a human prune listing shows; --json has them all


def status_cmd(
    ctx: common.Context,
    storage: Annotated[bool, common.Opt("--storage", help="Also list a remote blob store (S3, ...) to measure it; a local store is always measured.")] = False,
    json_output: common.JsonOpt = False,
) -> None:
    """Show the fleet: per host queue and running jobs, success rate and durations, spend, storage used.

    Examples:
      brightrun status
      brightrun status --json
      brightrun status --storage
    """
    from brightrun_cli.services.status import fleet_status

    status = fleet_status(common.workspace(ctx), measure_remote=storage)
    if json_output:
        common.print_json(status.to_json())
        return
    out = common.console()
    table = common.list_table("HOST", "KIND", "GPUS IN USE", "QUEUED", "RUNNING", "RUNNING JOBS", wrap=("RUNNING JOBS",),
                              right=("QUEUED", "RUNNING"))
    for h in status.hosts:
        table.add_row(h.name, h.kind, f"{h.gpus_in_use}/{h.gpus} {h.gpu_type}", str(len(h.queued)), str(len(h.running)),
                      ", ".join(common.short_id(j) for j in h.running) or "-")
    out.print(table)
    out.print("")
    windows = status.windows
    jobs = common.list_table("JOBS ENDED", *(f"LAST {w.days} DAYS" for w in windows), right=tuple(f"LAST {w.days} DAYS" for w in windows))
    for label, cell in (("completed", lambda w: str(w.completed)), ("failed", lambda w: str(w.failed)),
                        ("cancelled", lambda w: str(w.cancelled)),
                        ("success rate", lambda w: "-" if w.success_rate is None else f"{w.success_rate:.0%}"),
                        ("avg duration", lambda w: common.human_duration(w.avg_duration_s))):
        jobs.add_row(label, *(cell(w) for w in windows))
    out.print(jobs)
    out.print("")
    (this, spent), (last, spent_before) = status.this_month, status.last_month
    out.print(f"spend: ${spent:,.2f} this month ({this}), ${spent_before:,.2f} last month ({last})", markup=False)
    store = status.storage
    if not store.measured:
        usage = f"checkpoints {common.human_bytes(store.kinds['checkpoints'].bytes)}; datasets and models not measured (pass --storage to list {store.url})"
    else:
        usage = ", ".join(f"{kind} {common.human_bytes(u.bytes)}" for kind, u in store.kinds.items() if u is not None)
        usage += f" (total {common.human_bytes(sum(u.bytes for u in store.kinds.values() if u is not None))})"
    out.print(f"storage: {usage}", markup=False)


def prune_cmd(
    ctx: common.Context,
    older_than: Annotated[str, common.Opt("--older-than", help="Read notifications older than this go (30d, 12h, 2w).")] = "30d",
    yes: Annotated[bool, common.Opt("--yes", "-y", help="Remove what the dry run lists (without it nothing changes).")] = False,
    json_output: common.JsonOpt = False,
) -> None:
    """Free what nothing needs: old read notifications, completed jobs' checkpoints, removed data, unused remote code.

    A dry run unless --yes: both list the same items and bytes. Never touches what a queued,
    running, failed or cancelled job may still use (its run dir, dataset, or the code on its host).

    Examples:
      brightrun prune
      brightrun prune --older-than 7d --json
      brightrun prune --yes
    """
    from brightrun_cli.services import prune

    ws = common.workspace(ctx)
    plan = prune.plan_prune(ws, older_than)
    if yes:
        prune.prune(ws, plan)
    if json_output:
        common.print_json(plan.to_json(dry_run=not yes))
        return
    out = common.console()
    totals = plan.totals()
    if not plan.items:
        out.print("nothing to prune")
    else:
        out.print("removed:" if yes else "dry run, nothing removed; 'brightrun prune --yes' would remove:")
        table = common.list_table("KIND", "COUNT", "SIZE", right=("COUNT", "SIZE"))
        for kind, total in totals.items():
            if total["count"]:
                table.add_row(kind, str(total["count"]), "rows" if kind == "notifications" else common.human_bytes(total["bytes"]))
        table.add_row(("total", "bold"), (str(len(plan.items)), "bold"), (common.human_bytes(sum(i.bytes for i in plan.items)), "bold"))
        out.print(table)
        files = [i for i in plan.items if i.location != "registry"]
        if files:
            out.print("")
            listing = common.list_table("KIND", "WHERE", "PATH", "SIZE", "WHY", wrap=("PATH", "WHY"), right=("SIZE",))
            for item in files[:PRUNE_ITEMS_SHOWN]:
                listing.add_row(item.kind, item.host if item.location == "workdir" else item.location, item.target,
                                common.human_bytes(item.bytes), item.reason)
            out.print(listing)
            if len(files) > PRUNE_ITEMS_SHOWN:
                out.print(f"[dim]{PRUNE_ITEMS_SHOWN} of {len(files)} shown; --json for all[/dim]")
    for skipped in plan.skipped:
        out.print(f"skipped host {skipped['host']}: {skipped['reason']}", markup=False)


commands = common.Group()  # what this module adds to the root command
commands.command("status")(status_cmd)
commands.command("prune")(prune_cmd)
