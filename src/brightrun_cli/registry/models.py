"""Every statement on `model_artifacts`."""

from __future__ import annotations

import re
import sqlite3
from typing import TYPE_CHECKING, Any

from brightrun_cli.registry import read
from brightrun_cli.registry.engine import DuplicateRow, insert_unique
from brightrun_cli.registry.rows import ModelRow
from brightrun_cli.registry.timeutil import utcnow

if TYPE_CHECKING:
    from brightrun_cli.registry.engine import Tx

_ORDER = "created_at DESC, id DESC"


_NAME_VERSION = re.compile(r"^(?P<name>.+?)(?:@v?|\s+v)(?P<version>\d+\.\d+\.\d+)$")


def resolve(conn: sqlite3.Connection, ref: str) -> ModelRow:
    """A live model by id, unique id prefix, `NAME@VERSION` (or `NAME vVERSION`, as `models
    list` shows it), or NAME alone: its newest version."""
    text = ref.strip()
    exact = read.fetch_one(conn, ModelRow, "id = ? AND deleted_at IS NULL", (text.lower(),))
    if exact is not None:  # the common case, by the primary key
        return exact
    found = _NAME_VERSION.match(text)
    if found:
        row = read.fetch_one(conn, ModelRow, "name = ? AND version = ? AND deleted_at IS NULL", (found["name"], found["version"]))
        if row is not None:
            return row
    newest = read.fetch_all(conn, ModelRow, "name = ? AND deleted_at IS NULL", (text,), order=_ORDER, limit=1)
    if newest:
        return newest[0]
    return read.resolve(conn, ModelRow, ref, "model", tried="id, id prefix, name or NAME@VERSION")


_SORTS = {
    "created": _ORDER,
    "score": "coalesce(json_extract(quality_metrics, '$.overall_score'), 0) DESC, " + _ORDER,
    "cost": "coalesce(json_extract(training_summary, '$.total_cost'), 0) ASC, " + _ORDER,
}


def live(conn: sqlite3.Connection, sort: str = "created", limit: int | None = None) -> list[ModelRow]:
    """Live models: newest first (`created`), best score first (`score`) or cheapest first (`cost`)."""
    return read.fetch_all(conn, ModelRow, "deleted_at IS NULL", order=_SORTS[sort], limit=limit)


def live_json(conn: sqlite3.Connection, sort: str = "created", limit: int | None = None) -> str:
    return read.json_array(conn, ModelRow, "deleted_at IS NULL", order=_SORTS[sort], limit=limit)


def count_live(conn: sqlite3.Connection) -> int:
    return read.count(conn, ModelRow.TABLE, "deleted_at IS NULL")


def of_job(conn: sqlite3.Connection, job_id: str) -> ModelRow | None:
    return read.fetch_one(conn, ModelRow, "job_id = ?", (job_id,))


def removed(conn: sqlite3.Connection) -> list[ModelRow]:
    return read.fetch_all(conn, ModelRow, "deleted_at IS NOT NULL", order="deleted_at")


def all_ids(conn: sqlite3.Connection) -> set[str]:
    """Every model id with a row, removed ones included."""
    return {r[0] for r in conn.execute("SELECT id FROM model_artifacts")}


def versions_of(conn: sqlite3.Connection, name: str) -> int:
    """How many models (soft-deleted included) were ever stored under `name`."""
    return read.count(conn, ModelRow.TABLE, "name = ?", (name,))


def insert(tx: "Tx", **fields: Any) -> ModelRow:
    """Raises DuplicateRow when the job already has its model (one per job)."""
    from brightrun_cli.registry.tables import ModelArtifact

    return ModelRow.from_model(insert_unique(tx, ModelArtifact(**fields), DuplicateRow(f"job {fields.get('job_id')} already has a model", "see 'brightrun models list'")))


def get_in(tx: "Tx", ref: str) -> ModelRow | None:
    from brightrun_cli.registry.tables import ModelArtifact

    row = tx.get(ModelArtifact, ref)
    return None if row is None else ModelRow.from_model(row)


def live_children(tx: "Tx", model_id: str) -> list[str]:
    from sqlmodel import col, select

    from brightrun_cli.registry.tables import ModelArtifact

    return list(tx.exec(select(ModelArtifact.id).where(ModelArtifact.parent_model_id == model_id,
                                                       col(ModelArtifact.deleted_at).is_(None))).all())


def soft_delete(tx: "Tx", model_id: str) -> None:
    from brightrun_cli.registry.tables import ModelArtifact

    row = tx.get(ModelArtifact, model_id)
    if row is not None:
        row.deleted_at = row.updated_at = utcnow()
        row.status = "deleted"
        tx.add(row)


def update(tx: "Tx", model_id: str, **values: Any) -> None:
    from brightrun_cli.registry.tables import ModelArtifact

    row = tx.get(ModelArtifact, model_id)
    if row is not None:
        for key, value in values.items():
            setattr(row, key, value)
        row.updated_at = utcnow()
        tx.add(row)


def count_for_dataset(tx: "Tx", dataset_id: str) -> int:
    from sqlmodel import func, select

    from brightrun_cli.registry.tables import ModelArtifact

    return int(tx.exec(select(func.count()).select_from(ModelArtifact).where(ModelArtifact.dataset_id == dataset_id)).one())
