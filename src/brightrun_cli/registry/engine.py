"""Opening the registry: private file modes, WAL, busy timeout, migrations.

Two ways in, one file:
- reads: `Registry.reading()` / `connect()`, plain sqlite3 connections for the read layer
  (registry/read.py and the per-table modules' reads), which never pay SQLAlchemy's
  ~0.3-0.9 s import;
- writes: `Registry.write()`, one BEGIN IMMEDIATE transaction as a SQLModel session, which
  the per-table modules' write functions take. Concurrent writers queue on the busy
  timeout instead of failing with "database is locked" when a deferred read transaction
  tries to upgrade to a write.
"""

from __future__ import annotations

import contextvars
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brightrun_cli.errors import ConflictError, RegistryError
from brightrun_cli.registry.migrations import LATEST_VERSION, MIGRATIONS
from brightrun_cli.registry.timeutil import utcnow

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlmodel import Session

    Tx = Session  # a write transaction (Registry.write()), as the per-table write functions take it

DB_FILE = "registry.db"
Connection = sqlite3.Connection  # what the read layer's statements take
DatabaseError = sqlite3.Error  # what a registry that is not (or no longer) a database raises on read
BUSY_TIMEOUT_MS = 30_000
READ_CACHE_KIB = 32 * 1024
READ_MMAP_BYTES = 256 * 1024 * 1024

_immediate: contextvars.ContextVar[bool] = contextvars.ContextVar("brightrun_immediate", default=False)
_foreign_keys: contextvars.ContextVar[bool] = contextvars.ContextVar("brightrun_foreign_keys", default=True)


WAL_AUTOCHECKPOINT = 1000  # pages: SQLite's default

# sqlite3 binds int, float and str directly but sends None through its adaptation
# protocol (a registry miss, then __adapt__ and __conform__ lookups): 450 ns a NULL, when
# a metric point binds three or more of them. Found in the registry, None is bound as
# NULL all the same, in a third of the time ({}.get: a C callable that returns None).
sqlite3.register_adapter(type(None), {}.get)


class DuplicateRow(ConflictError):
    """A write broke a uniqueness rule (a live dataset's name, one model per job): someone
    else wrote the same thing meanwhile."""


class Checkpointer:
    """Copies the WAL into the database file from a thread of its own, so that the
    writer's commits never wait for a checkpoint (a copy plus two fsyncs: up to 40% of a
    bulk ingestion's wall time on a slow disk). The write path pokes it after each commit;
    it checkpoints at most every `interval` seconds (PASSIVE: it never blocks a reader or
    the writer, and SQLite releases the GIL meanwhile), and once more when stopped."""

    def __init__(self, path: Path, interval: float = 0.5):
        self.path = path
        self.interval = interval
        self.checkpoints = 0
        self.last: tuple[int, int, int] | None = None  # (busy, WAL frames, frames checkpointed)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-checkpointer", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """One last checkpoint, then the thread ends."""
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        try:
            _configure(conn)
            while True:
                self._wake.wait()
                self._wake.clear()
                try:
                    self.last = tuple(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
                    self.checkpoints += 1
                except sqlite3.Error as exc:  # a full disk, say: the next poke tries again
                    import logging  # here, not at the top: ~4 ms of every command's start, for a rare warning

                    logging.getLogger("brightrun.registry").warning("WAL checkpoint failed: %s", exc)
                if self._stop.is_set() or self._stop.wait(self.interval):  # pokes meanwhile fold into the next
                    if self._wake.is_set():
                        continue  # stop() arrived after this checkpoint: one more for what came since
                    return
        finally:
            conn.close()


def _configure(conn: sqlite3.Connection) -> None:
    # Transaction control is ours (BEGIN / BEGIN IMMEDIATE), not pysqlite's.
    conn.isolation_level = None
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")


class Registry:
    """One user's registry file. Open it once per process with `open_registry`."""

    def __init__(self, home: Path):
        self.home = home
        self.path = home / DB_FILE
        self.checkpointer: Checkpointer | None = None

    def connect(self) -> sqlite3.Connection:
        """A configured sqlite3 connection (autocommit) for the read layer. Caller closes it."""
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        _configure(conn)
        # A --json list of 10,000 jobs reads ~11 MB of row JSON: the default 2 MB page cache
        # made SQLite re-read overflow pages (~30% of the query).
        conn.execute(f"PRAGMA cache_size = -{READ_CACHE_KIB}")
        # Pages read in place from the mapped file instead of copied into that cache: the
        # same 11 MB list read in 58 ms instead of 94 ms. Reads only; writes go through the
        # write path's connections, which do not map.
        conn.execute(f"PRAGMA mmap_size = {READ_MMAP_BYTES}")
        return conn

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for the read layer (registry/read.py), closed afterwards."""
        conn = self.connect()
        try:
            yield conn
        finally:
            conn.close()

    @cached_property
    def engine(self) -> "Engine":
        from sqlalchemy import create_engine, event

        engine = create_engine(f"sqlite:///{self.path}", connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            _configure(dbapi_conn)

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            # Each transaction states its foreign-key mode (it cannot change inside one), so a
            # pooled connection never carries write(foreign_keys=False) into the next.
            conn.exec_driver_sql(f"PRAGMA foreign_keys = {'ON' if _foreign_keys.get() else 'OFF'}")
            # Likewise its checkpointing: none at commit while a Checkpointer does it.
            conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint = {0 if self.checkpointer else WAL_AUTOCHECKPOINT}")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if _immediate.get() else "BEGIN")

        return engine

    @contextmanager
    def write(self, *, foreign_keys: bool = True) -> Iterator["Session"]:
        """One write transaction (BEGIN IMMEDIATE): committed on success, rolled back on error.

        foreign_keys=False skips SQLite's per-row foreign-key lookups, for the one hot path
        whose rows provably have their parent: the supervisor's metric ingestion, which
        checks its job row by compare-and-set in the same transaction."""
        from sqlmodel import Session

        with Session(self.engine, expire_on_commit=False) as session:
            token, fk_token = _immediate.set(True), _foreign_keys.set(foreign_keys)
            try:
                session.connection()  # begin now, while the flags are set
            finally:
                _immediate.reset(token)
                _foreign_keys.reset(fk_token)
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
        if self.checkpointer is not None:
            self.checkpointer.poke()

    @contextmanager
    def checkpoints_in_background(self) -> Iterator[Checkpointer]:
        """While open, this process's write transactions leave checkpointing to a
        Checkpointer thread (the supervisor's ingestion: see Checkpointer)."""
        if self.checkpointer is not None:  # nested: the outer one keeps running
            yield self.checkpointer
            return
        self.checkpointer = Checkpointer(self.path)
        try:
            yield self.checkpointer
        finally:
            checkpointer, self.checkpointer = self.checkpointer, None
            checkpointer.stop()

    def schema_version(self) -> int:
        conn = self.connect()
        try:
            return _current_version(conn)
        finally:
            conn.close()

    def dispose(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()


@contextmanager
def peek(home: Path) -> Iterator[sqlite3.Connection | None]:
    """A plain connection to the registry in `home` if one exists, without creating or
    migrating it (None otherwise, or when it cannot be read): for the checks every command
    makes before it knows whether it needs the registry at all."""
    path = home / DB_FILE
    if not path.exists():
        yield None
        return
    try:
        conn = sqlite3.connect(path, timeout=5)
    except sqlite3.Error:
        yield None
        return
    try:
        yield conn
    finally:
        conn.close()


def defer_until_commit(tx: "Session", name: str, deliver: Callable[[Path, list[Any]], None]) -> list[Any]:
    """A list kept on the write transaction `tx` under `name`: once `tx` commits, its items are
    handed to `deliver(home, items)`; if it rolls back, they are dropped. (Notifications reach
    their hook only for changes that happened.)"""
    pending = tx.info.get(name)
    if pending is None:
        from sqlalchemy import event

        pending = tx.info[name] = []

        def committed(session: "Session") -> None:
            items = list(pending)
            pending.clear()
            if items:  # the registry is always <home>/registry.db
                deliver(Path(session.get_bind().url.database).parent, items)

        event.listen(tx, "after_commit", committed)
        event.listen(tx, "after_rollback", lambda session: pending.clear())
    return pending


def insert_unique(tx: "Session", row: Any, duplicate: DuplicateRow) -> Any:
    """Add a SQLModel row in `tx`; `duplicate` is raised when it breaks a uniqueness rule."""
    from sqlalchemy.exc import IntegrityError

    tx.add(row)
    try:
        tx.flush()
    except IntegrityError as exc:
        raise duplicate from exc
    return row


def read_in(tx: "Session") -> sqlite3.Connection:
    """The sqlite3 connection of a write transaction, for the read layer's statements to see
    what the transaction sees (and nothing that commits after it began)."""
    return tx.connection().connection.driver_connection


def _current_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_migrations'").fetchone()
    if not exists:
        return 0
    return int(conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0)


def _backup(path: Path, version: int) -> Path:
    stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
    target = path.with_name(f"{path.name}.bak-v{version}-{stamp}")
    os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
    src = sqlite3.connect(path)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return target


def _migrate(registry: Registry) -> None:
    conn = registry.connect()
    try:
        version = _current_version(conn)
        if version > LATEST_VERSION:
            raise RegistryError(
                f"the registry at {registry.path} has schema version {version}, newer than this brightrun knows ({LATEST_VERSION})",
                "upgrade brightrun or point --home at another registry",
            )
        if version == LATEST_VERSION:
            return
        if version > 0:
            _backup(registry.path, version)
        for number, name, apply in MIGRATIONS:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
                )
                # Re-read under the write lock: another process may have migrated meanwhile.
                if _current_version(conn) < number:
                    apply(conn)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                        (number, name, utcnow().isoformat()),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
    finally:
        conn.close()


def open_registry(home: Path) -> Registry:
    """Open (creating and migrating as needed) the registry in `home`, which must exist."""
    path = home / DB_FILE
    try:
        if not path.exists():
            # Created here so that it is private from the start. Only a file that does not
            # exist yet is opened outside SQLite: closing any descriptor of the database
            # drops every POSIX lock this process holds on it, the WAL locks of its open
            # connections included, and another process closing its last connection would
            # then delete the WAL under them (their later reads would not see new writes).
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
            except FileExistsError:
                pass  # another process created it meanwhile
        os.chmod(path, 0o600)
    except OSError as exc:
        raise RegistryError(f"cannot open the registry {path} ({exc.strerror})", "check the permissions of the brightrun home") from exc
    registry = Registry(home)
    try:
        _migrate(registry)
    except sqlite3.DatabaseError as exc:
        raise RegistryError(f"cannot use the registry {path}: {exc}", "is it a brightrun registry? move it away to start fresh") from exc
    return registry
