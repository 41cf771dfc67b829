"""Shared lookups: resolve what a user typed (id, unique id prefix, or name) to a row."""

from __future__ import annotations

from typing import TypeVar

from sqlmodel import Session, SQLModel, col, select

from brightrun_cli.errors import NotFoundError

T = TypeVar("T", bound=SQLModel)

MIN_PREFIX = 4


def resolve(session: Session, model: type[T], ref: str, noun: str, *, by_name: bool = False, include_deleted: bool = False) -> T:
    """Find one `model` row by exact id, exact live name (when `by_name`), or unique id prefix.

    Raises NotFoundError naming the `noun` and the `brightrun ... list` to run.
    """
    ref = ref.strip()
    live = [] if include_deleted or not hasattr(model, "deleted_at") else [col(model.deleted_at).is_(None)]
    row = session.get(model, ref.lower())
    if row is not None and (include_deleted or getattr(row, "deleted_at", None) is None):
        return row
    if by_name:
        row = session.exec(select(model).where(col(model.name) == ref, *live)).first()
        if row is not None:
            return row
    if len(ref) >= MIN_PREFIX:
        prefix = ref.lower()
        rows = session.exec(
            select(model).where(col(model.id).startswith(prefix, autoescape=True), *live).limit(6)
        ).all()
        if len(rows) == 1:
            return rows[0]
        if len(rows) > 1:
            shown = ", ".join(r.id for r in rows[:5])
            raise NotFoundError(f"{noun} prefix '{ref}' is ambiguous ({shown}{', ...' if len(rows) > 5 else ''})", "type more characters of the id")
    what = "id, id prefix or name" if by_name else "id or id prefix"
    raise NotFoundError(f"no {noun} matches '{ref}' (by {what})", f"run 'brightrun {_list_command(noun)}' to see them")


def _list_command(noun: str) -> str:
    return {"dataset": "dataset list", "job": "jobs list", "model": "models list", "host": "hosts list", "notification": "notifications"}.get(noun, f"{noun} list")
