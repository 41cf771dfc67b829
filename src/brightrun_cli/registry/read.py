"""The read layer: typed rows (registry/rows.py) over plain sqlite3, and resolving what a
user typed (an id, a unique id prefix, a name) to one row.

Every read command and the hot polling paths (watch, the queue's checks) come through
here; none of it imports SQLAlchemy. Statements take a connection from
`Registry.connect()` (or `Registry.reading()`), so one command can run several reads
on one connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, TypeVar

from brightrun_cli.errors import AmbiguousError, NotFoundError, UsageError
from brightrun_cli.registry.rows import Row

R = TypeVar("R", bound=Row)

MIN_PREFIX = 4
LIST_COMMANDS = {"dataset": "dataset list", "job": "jobs list", "model": "models list", "host": "hosts list", "notification": "notifications"}


def _tail(where: str, order: str, limit: int | None) -> str:
    sql = f" WHERE {where}" if where else ""
    sql += f" ORDER BY {order}" if order else ""
    return sql + (f" LIMIT {int(limit)}" if limit is not None else "")


def fetch_all(conn: sqlite3.Connection, cls: type[R], where: str = "", params: Sequence[Any] = (),
              order: str = "", limit: int | None = None) -> list[R]:
    decode = cls.decode
    return [decode(values) for values in conn.execute(cls.select_sql() + _tail(where, order, limit), params)]


def fetch_one(conn: sqlite3.Connection, cls: type[R], where: str, params: Sequence[Any] = ()) -> R | None:
    values = conn.execute(cls.select_sql() + _tail(where, "", 1), params).fetchone()
    return None if values is None else cls.decode(values)


def get(conn: sqlite3.Connection, cls: type[R], row_id: str) -> R | None:
    return fetch_one(conn, cls, "id = ?", (row_id,))


def count(conn: sqlite3.Connection, table: str, where: str = "", params: Sequence[Any] = ()) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}" + _tail(where, "", None), params).fetchone()[0])


def json_array(conn: sqlite3.Connection, cls: type[Row], where: str = "", params: Sequence[Any] = (),
               order: str = "", limit: int | None = None, columns: tuple[str, ...] | None = None) -> bytes:
    """The rows as a JSON array, each rendered by SQLite (Row.json_sql): a `--json` list of
    10,000 rows without a Python object per row."""
    return joined_json(conn, f"SELECT {cls.json_sql(columns=columns)} FROM {cls.TABLE}" + _tail(where, order, limit), params)


def joined_json(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> bytes:
    """`[row,row,...]` of a query whose one column is each row's JSON text, as UTF-8 bytes.

    SQLite joins the rows (group_concat) and the result comes back as bytes: no Python
    object per row, nothing decoded into str and encoded again on the way to stdout (a
    `jobs list --json` of 10,000 jobs is 11 MB: 83 -> 58 ms). The rows keep the query's
    ORDER BY: an aggregate over a subquery that orders is never flattened into it (SQLite's
    flattening rule 16), so group_concat sees them in that order."""
    factory = conn.text_factory
    conn.text_factory = bytes
    try:
        joined = conn.execute(f"WITH listed(row) AS ({sql}) SELECT group_concat(row, ',') FROM listed", params).fetchone()[0]
    finally:
        conn.text_factory = factory
    return b"[" + (joined or b"") + b"]"


def resolve(conn: sqlite3.Connection, cls: type[R], ref: str, noun: str, *, by_name: bool = False,
            include_deleted: bool = False, tried: str | None = None) -> R:
    """One row of `cls` by exact id, exact live name (when `by_name`), or unique id prefix.

    Raises NotFoundError (exit 2) naming the `noun`, what was `tried` (when the caller
    looked further than this), the candidates of an ambiguous prefix,
    and the `brightrun ... list` to run."""
    ref = ref.strip()
    soft = "deleted_at" in cls.columns() and not include_deleted
    live = " AND deleted_at IS NULL" if soft else ""
    if not ref:
        raise UsageError(f"an empty {noun} reference was given (an unset shell variable?)", f"pass a {noun} id{', prefix or name' if by_name else ' or prefix'}")
    row = fetch_one(conn, cls, "id = ?" + live, (ref.lower(),))
    if row is None and by_name:
        row = fetch_one(conn, cls, "name = ?" + live, (ref,))
    if row is not None:
        return row
    if len(ref) >= MIN_PREFIX:
        # The ids starting with the prefix, as a range of the primary key (LIKE, being
        # case-insensitive, cannot use the index: 10,000 rows read for one `jobs show 01jd4`).
        low = ref.lower()
        high = low[:-1] + chr(ord(low[-1]) + 1)
        rows = fetch_all(conn, cls, "id >= ? AND id < ?" + live, (low, high), order="id", limit=6)
        if len(rows) == 1:
            return rows[0]
        if rows:
            shown = ", ".join(r.id for r in rows[:5])
            raise AmbiguousError(f"{noun} prefix '{ref}' is ambiguous ({shown}{', ...' if len(rows) > 5 else ''})",
                                 "type more characters of the id")
    elif fetch_one(conn, cls, "id >= ? AND id < ?" + live, (ref.lower(), ref.lower()[:-1] + chr(ord(ref.lower()[-1]) + 1))) is not None:
        raise AmbiguousError(f"'{ref}' is too short to name one {noun}: give at least {MIN_PREFIX} characters of its id",
                             f"run 'brightrun {LIST_COMMANDS.get(noun, f'{noun} list')}' to see them")
    what = tried or ("id, id prefix or name" if by_name else "id or id prefix")
    listing = LIST_COMMANDS.get(noun, f"{noun} list")
    raise NotFoundError(f"no {noun} matches '{ref}' (by {what})", f"run 'brightrun {listing}' to see them")
