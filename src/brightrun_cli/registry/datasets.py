"""Every statement on `datasets` (and the `dataset_list_json` rows its triggers keep)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from brightrun_cli.registry import read
from brightrun_cli.registry.engine import DuplicateRow, insert_unique
from brightrun_cli.registry.ids import check_name
from brightrun_cli.registry.rows import DatasetRow
from brightrun_cli.registry.timeutil import utcnow

if TYPE_CHECKING:
    from brightrun_cli.registry.engine import Tx

_ORDER = "d.created_at DESC, d.id DESC"


def resolve(conn: sqlite3.Connection, ref: str) -> DatasetRow:
    """A live dataset by id, unique id prefix or name."""
    return read.resolve(conn, DatasetRow, ref, "dataset", by_name=True)


def get(conn: sqlite3.Connection, dataset_id: str) -> DatasetRow | None:
    return read.get(conn, DatasetRow, dataset_id)


def live_by_name(conn: sqlite3.Connection, name: str) -> DatasetRow | None:
    return read.fetch_one(conn, DatasetRow, "name = ? AND deleted_at IS NULL", (name,))


def ids_in(conn: sqlite3.Connection, statuses: Sequence[str]) -> list[str]:
    return [r[0] for r in conn.execute(f"SELECT id FROM datasets WHERE status IN ({','.join('?' * len(statuses))})", tuple(statuses))]


def _filters(status: str | None, search: str | None) -> tuple[str, list[Any]]:
    where, params = "d.deleted_at IS NULL", []
    if status:
        where += " AND d.status = ?"
        params.append(status)
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where += " AND (d.name LIKE ? ESCAPE '\\' OR d.description LIKE ? ESCAPE '\\' OR d.file_name LIKE ? ESCAPE '\\')"
        params += [pattern, pattern, pattern]
    return where, params


def list_json(conn: sqlite3.Connection, status: str | None = None, search: str | None = None, limit: int | None = None) -> bytes:
    """Live datasets, newest first, as a JSON array text of the rows the triggers keep
    (registry migration 3): `dataset list --json` over 10,000 datasets needs neither a
    Python object per row nor SQLite building every row's JSON again."""
    where, params = _filters(status, search)
    sql = f"SELECT j.json FROM datasets d JOIN dataset_list_json j ON j.id = d.id WHERE {where} ORDER BY {_ORDER}"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return read.joined_json(conn, sql, params)


def list_live(conn: sqlite3.Connection, status: str | None = None, search: str | None = None, limit: int | None = None) -> list[DatasetRow]:
    where, params = _filters(status, search)
    select = DatasetRow.select_sql("d")
    sql = f"{select} WHERE {where} ORDER BY {_ORDER}" + (f" LIMIT {int(limit)}" if limit is not None else "")
    return [DatasetRow.decode(values) for values in conn.execute(sql, params)]


def count_live(conn: sqlite3.Connection, status: str | None = None, search: str | None = None) -> int:
    where, params = _filters(status, search)
    return int(conn.execute(f"SELECT count(*) FROM datasets d WHERE {where}", params).fetchone()[0])


def removed(conn: sqlite3.Connection) -> list[DatasetRow]:
    """Soft-deleted datasets (their blobs are kept while jobs or models refer to them)."""
    return read.fetch_all(conn, DatasetRow, "deleted_at IS NOT NULL", order="deleted_at")


def all_ids(conn: sqlite3.Connection) -> set[str]:
    """Every dataset id with a row, removed ones included."""
    return {r[0] for r in conn.execute("SELECT id FROM datasets")}


def insert(tx: "Tx", **fields: Any) -> DatasetRow:
    """Raises DuplicateRow when a live dataset already has the name."""
    check_name(str(fields.get("name", "")), "dataset")
    from brightrun_cli.registry.tables import Dataset

    return DatasetRow.from_model(insert_unique(tx, Dataset(**fields), DuplicateRow(f"a dataset named '{fields.get('name')}' was added meanwhile", "pick another --name")))


def get_in(tx: "Tx", dataset_id: str) -> DatasetRow | None:
    from brightrun_cli.registry.tables import Dataset

    row = tx.get(Dataset, dataset_id)
    return None if row is None else DatasetRow.from_model(row)


def live_by_name_in(tx: "Tx", name: str) -> DatasetRow | None:
    """The live dataset named `name`, read inside a write transaction."""
    from sqlmodel import select

    from brightrun_cli.registry.tables import Dataset

    row = tx.exec(select(Dataset).where(Dataset.name == name, Dataset.deleted_at.is_(None))).first()
    return None if row is None else DatasetRow.from_model(row)


def update(tx: "Tx", dataset_id: str, **values: Any) -> DatasetRow | None:
    """Set fields (and updated_at) on the row; the row after, or None when it is gone."""
    from brightrun_cli.registry.tables import Dataset

    row = tx.get(Dataset, dataset_id)
    if row is None:
        return None
    for key, value in values.items():
        setattr(row, key, value)
    row.updated_at = values.get("updated_at", utcnow())
    tx.add(row)
    tx.flush()
    return DatasetRow.from_model(row)


def delete(tx: "Tx", dataset_id: str) -> None:
    from brightrun_cli.registry.tables import Dataset

    row = tx.get(Dataset, dataset_id)
    if row is not None:
        tx.delete(row)
        tx.flush()  # now: an insert of its name in the same transaction is flushed before deletes
