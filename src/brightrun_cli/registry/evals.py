"""Every statement on `model_evals`: the answer evals of models (migration 6)."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from brightrun_cli.registry import read
from brightrun_cli.registry.rows import ModelEvalRow

if TYPE_CHECKING:
    from brightrun_cli.registry.engine import Tx

_NEWEST = "created_at DESC, id DESC"


def latest_of_model(conn: sqlite3.Connection, model_id: str) -> ModelEvalRow | None:
    """The model's newest eval (a `models eval` run after training wins over the job's own)."""
    rows = read.fetch_all(conn, ModelEvalRow, "model_id = ?", (model_id,), order=_NEWEST, limit=1)
    return rows[0] if rows else None


def of_job_eval(conn: sqlite3.Connection, model_id: str) -> ModelEvalRow | None:
    """The eval the model's job ran at the end of training, if it recorded one."""
    rows = read.fetch_all(conn, ModelEvalRow, "model_id = ? AND source = 'job'", (model_id,), order=_NEWEST, limit=1)
    return rows[0] if rows else None


def insert(tx: "Tx", **fields: Any) -> ModelEvalRow:
    from brightrun_cli.registry.tables import ModelEval

    row = ModelEval(**fields)
    tx.add(row)
    tx.flush()
    return ModelEvalRow.from_model(row)
