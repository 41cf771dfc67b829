"""`brightrun notifications [--unread] [--limit N] [--json]` and `notifications read ID|--all`."""

from __future__ import annotations

from typing import Annotated, Optional

from brightrun_cli.cli import common

notifications_app = common.Group(name="notifications", invoke_without_command=True)


commands = common.Group()  # what this module adds to the root command
commands.add_group(notifications_app)


FEED_DEFAULT = 20  # notifications on screen unless --limit says otherwise (--json: all, like every list)


@notifications_app.callback()
def list_cmd(
    ctx: common.Context,
    unread: Annotated[bool, common.Opt("--unread", help="Only unread notifications.")] = False,
    limit: Annotated[Optional[int], common.Opt("--limit", min=1, max=common.MAX_LIMIT, help=f"At most this many, newest first (default: {FEED_DEFAULT} on screen, all with --json).", show_default=False)] = None,
    json_output: common.JsonOpt = False,
) -> None:
    """What happened while you were away: job and dataset events, newest first, with the command to run next.

    Examples:
      brightrun notifications --unread
      brightrun notifications --limit 50 --json
    """
    if ctx.invoked_subcommand is not None:
        return
    from brightrun_cli.services.notifications import list_notifications, list_notifications_json

    ws = common.workspace(ctx)
    if json_output:  # an array like every other list (unread ones: --unread --json)
        common.print_raw_json(list_notifications_json(ws, unread=unread, limit=limit))
        return
    rows, unread_count = list_notifications(ws, unread=unread, limit=limit or FEED_DEFAULT)
    con = common.console()
    if not rows:
        con.print("no unread notifications" if unread else "no notifications yet")
        return
    for row in rows:
        mark = " " if row.read else "*"
        con.print(f"{mark} {row.id[:12]}  {row.created_at:%Y-%m-%d %H:%M}  {row.priority:<6}  {row.type:<16} {row.message}",
                  markup=False, soft_wrap=True)
        if row.action_command:
            con.print(f"{'':>16}next: {row.action_command}", markup=False, soft_wrap=True)
    con.print(f"{unread_count} unread; mark them read with 'brightrun notifications read --all'")


@notifications_app.command("read")
def read_cmd(
    ctx: common.Context,
    notification: Annotated[Optional[str], common.Arg(help="Notification id or unique prefix.", show_default=False)] = None,
    all_: Annotated[bool, common.Opt("--all", help="Mark every notification read.")] = False,
    json_output: common.JsonOpt = False,
) -> None:
    """Mark one notification, or all of them, read.

    Examples:
      brightrun notifications read 01jd4
      brightrun notifications read --all
    """
    from brightrun_cli.errors import UsageError
    from brightrun_cli.services.notifications import mark_read

    if (notification is None) == (not all_):
        raise UsageError("give one notification id or --all", "e.g. 'brightrun notifications read --all'")
    changed = mark_read(common.workspace(ctx), notification, all=all_)
    if json_output:
        common.print_json({"marked_read": changed})
    else:
        common.echo(f"marked {changed} notification{'s' if changed != 1 else ''} read")
