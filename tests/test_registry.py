import os
import sqlite3
import stat

import pytest
from sqlalchemy import inspect
from sqlmodel import SQLModel, select

from brightrun_cli.errors import AmbiguousError, NotFoundError, RegistryError
from brightrun_cli.registry import tables
from brightrun_cli.registry.engine import DB_FILE, open_registry
from brightrun_cli.registry.migrations import LATEST_VERSION
from brightrun_cli.registry.read import resolve
from brightrun_cli.registry.rows import ROW_TYPES, DatasetRow
from brightrun_cli.workspace import Workspace


def test_home_and_registry_are_private(brightrun_home):
    ws = Workspace.open()
    ws.registry
    assert stat.S_IMODE(os.stat(brightrun_home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(brightrun_home / DB_FILE).st_mode) == 0o600


def test_fresh_registry_is_migrated_wal_and_has_local_host(tmp_path):
    reg = open_registry(tmp_path)
    assert reg.schema_version() == LATEST_VERSION
    conn = reg.connect()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    with reg.write() as s:
        assert [h.name for h in s.exec(select(tables.Host))] == ["local"]


def test_migrated_schema_matches_the_table_classes(tmp_path):
    reg = open_registry(tmp_path)
    insp = inspect(reg.engine)
    for table in SQLModel.metadata.sorted_tables:
        db_cols = {c["name"]: c for c in insp.get_columns(table.name)}
        assert set(db_cols) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            assert db_cols[column.name]["nullable"] == column.nullable, f"{table.name}.{column.name}"
        # SQLite's own index lists (SQLAlchemy skips indexes on expressions): key columns by
        # name, None where the key is an expression (cid -2), in order.
        conn = reg.connect()
        db_indexes = {name: [c[2] for c in conn.execute(f"PRAGMA index_xinfo({name})") if c[5]]
                      for _, name, _, origin, _ in conn.execute(f"PRAGMA index_list({table.name})") if origin == "c"}
        conn.close()
        assert db_indexes == {i.name: [getattr(e, "name", None) for e in i.expressions] for i in table.indexes}, table.name
    assert insp.get_unique_constraints("metrics_points")[0]["column_names"] == ["job_id", "step", "split"]


def test_read_rows_match_the_migrated_schema_column_for_column(tmp_path):
    """The read layer's rows (registry/rows.py) are decoded by position: their fields must be
    the migrated tables' columns, in order, or every read would shift values silently."""
    conn = open_registry(tmp_path).connect()
    for row_type in ROW_TYPES:
        columns = tuple(c[1] for c in conn.execute(f"PRAGMA table_info({row_type.TABLE})"))
        assert row_type.columns() == columns, row_type.__name__


def test_a_row_reads_back_typed_and_renders_the_same_json_from_sqlite_and_python(tmp_path):
    """Times come back aware UTC, JSON nested, booleans as bool; `--json` lists built by SQLite
    (Row.json_sql) give exactly what `show --json` (Row.to_json) gives."""
    import json as jsonlib

    from brightrun_cli.registry import read
    from brightrun_cli.registry.rows import NotificationRow
    from brightrun_cli.registry.timeutil import utcnow

    reg = open_registry(tmp_path)
    with reg.write() as s:
        s.add(tables.Notification(id="n1", type="job_queued", title="t", message="m", read=True,
                                  metadata_={"a": [1, 2.5, None], "b": "x"}, created_at=utcnow()))
    with reg.reading() as conn:
        row = read.get(conn, NotificationRow, "n1")
        listed = jsonlib.loads(read.json_array(conn, NotificationRow))
    assert row.read is True and row.metadata == {"a": [1, 2.5, None], "b": "x"}
    assert row.created_at.tzinfo is not None and row.created_at.microsecond == row.created_at.microsecond
    assert listed == [row.to_json()]


def test_newer_registry_is_refused_with_a_clear_message(tmp_path):
    open_registry(tmp_path)
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (?, 'future', 'x')", (LATEST_VERSION + 1,))
    with pytest.raises(RegistryError, match="newer than this brightrun"):
        open_registry(tmp_path)


def test_older_registry_is_backed_up_then_migrated(tmp_path, monkeypatch):
    from brightrun_cli.registry import migrations

    open_registry(tmp_path)
    applied = []
    monkeypatch.setattr(
        migrations, "MIGRATIONS", migrations.MIGRATIONS + [(LATEST_VERSION + 1, "probe", lambda c: applied.append(1))]
    )
    monkeypatch.setattr("brightrun_cli.registry.engine.MIGRATIONS", migrations.MIGRATIONS)
    monkeypatch.setattr("brightrun_cli.registry.engine.LATEST_VERSION", LATEST_VERSION + 1)
    reg = open_registry(tmp_path)
    assert applied == [1] and reg.schema_version() == LATEST_VERSION + 1
    backups = list(tmp_path.glob(f"{DB_FILE}.bak-v{LATEST_VERSION}-*"))
    assert len(backups) == 1 and stat.S_IMODE(os.stat(backups[0]).st_mode) == 0o600
    open_registry(tmp_path)  # nothing pending: no second backup
    assert len(list(tmp_path.glob(f"{DB_FILE}.bak-*"))) == 1


def test_resolve_by_id_prefix_and_name(tmp_path):
    reg = open_registry(tmp_path)
    with reg.write() as s:
        a = tables.Dataset(id="01aaaa0000000000000000000a", name="alpha", storage_path="d/a", file_name="a", file_size=1)
        b = tables.Dataset(id="01aaaa0000000000000000000b", name="beta", storage_path="d/b", file_name="b", file_size=1)
        s.add(a)
        s.add(b)
    with reg.reading() as conn:
        assert resolve(conn, DatasetRow, "beta", "dataset", by_name=True).id == b.id
        assert resolve(conn, DatasetRow, b.id.upper(), "dataset").id == b.id  # ids are case-insensitive
        assert resolve(conn, DatasetRow, "01aaaa0000000000000000000a"[:-1] + "a", "dataset").id == a.id
        with pytest.raises(AmbiguousError, match="ambiguous"):
            resolve(conn, DatasetRow, "01aaaa", "dataset")
        with pytest.raises(NotFoundError, match="no dataset matches 'gamma'"):
            resolve(conn, DatasetRow, "gamma", "dataset", by_name=True)


def test_live_dataset_names_are_unique_but_deleted_ones_free_the_name(tmp_path):
    from sqlalchemy.exc import IntegrityError

    from brightrun_cli.registry.timeutil import utcnow

    reg = open_registry(tmp_path)
    with reg.write() as s:
        s.add(tables.Dataset(name="x", storage_path="d/1", file_name="a", file_size=1, deleted_at=utcnow()))
        s.add(tables.Dataset(name="x", storage_path="d/2", file_name="a", file_size=1))
    with pytest.raises(IntegrityError):
        with reg.write() as s:
            s.add(tables.Dataset(name="x", storage_path="d/3", file_name="a", file_size=1))


def test_foreign_keys_are_enforced_except_in_a_write_that_opts_out_and_only_there(tmp_path):
    """write(foreign_keys=False) is the supervisor's ingestion path; the pooled connection
    it used must enforce foreign keys again in the next transaction."""
    from sqlalchemy.exc import IntegrityError

    registry = open_registry(tmp_path)
    orphan = "INSERT INTO metrics_points (job_id, timestamp, epoch, step, split) VALUES (?, '2026-01-01 00:00:00', 0, ?, 'train')"
    with pytest.raises(IntegrityError):
        with registry.write() as session:
            session.connection().exec_driver_sql(orphan, ("no-such-job", 1))
    with registry.write(foreign_keys=False) as session:
        session.connection().exec_driver_sql(orphan, ("no-such-job", 2))
    for _ in range(3):  # whichever pooled connection the next writes get
        with pytest.raises(IntegrityError):
            with registry.write() as session:
                session.connection().exec_driver_sql(orphan, ("no-such-job", 3))
    with registry.write() as session:
        assert session.connection().exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_opening_the_registry_again_keeps_open_connections_current(tmp_path):
    """A second open_registry in one process (a command's queue check, a test's) must not drop the
    POSIX locks of the first one's connections: with them gone, another process closing
    its last connection deletes the WAL, and the first connection reads stale data forever."""
    import subprocess
    import sys

    first = open_registry(tmp_path)

    def status() -> str:
        with first.write() as session:
            return session.connection().exec_driver_sql("SELECT name FROM hosts WHERE name LIKE 'local%'").scalar()

    assert status() == "local"
    second = open_registry(tmp_path)
    with second.write() as session:
        session.connection().exec_driver_sql("SELECT 1").scalar()
    writer = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
              "c.execute(\"UPDATE hosts SET name = 'local-renamed' WHERE name = 'local'\"); c.close()")
    subprocess.run([sys.executable, "-c", writer, str(tmp_path / DB_FILE)], check=True)
    assert (tmp_path / f"{DB_FILE}-wal").exists()  # nobody thought it was alone
    assert status() == "local-renamed"


def test_background_checkpoints_take_the_wal_copy_off_the_writers_commits(tmp_path):
    """While the supervisor ingests, its commits do no checkpoint (the copy and fsyncs of
    one were up to 40% of a bulk ingestion's wall time): a thread copies the WAL into the
    database file after them, and on leaving it copies whatever the last commits left."""
    import time

    registry = open_registry(tmp_path)
    db = tmp_path / DB_FILE
    insert = "INSERT INTO metrics_points (job_id, timestamp, epoch, step, split) VALUES ('j', '2026-01-01 00:00:00', 0, ?, 'train')"

    def write(steps) -> int:
        with registry.write(foreign_keys=False) as session:
            conn = session.connection()
            conn.exec_driver_sql(insert, [(s,) for s in steps])
            return conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()

    def outstanding() -> bool:  # frames in the WAL that the database file lacks
        before = db.stat().st_size
        conn = sqlite3.connect(db)
        busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        conn.close()
        return busy != 0 or db.stat().st_size != before

    assert write(range(10)) == 1000  # SQLite's default outside
    with registry.checkpoints_in_background() as checkpointer:
        assert write(range(10, 30_000)) == 0  # the commit leaves the WAL to the thread
        deadline = time.monotonic() + 10
        while checkpointer.checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert checkpointer.checkpoints >= 1 and checkpointer.last[0] == 0
        size = db.stat().st_size
        assert size > 500_000  # the 30,000 rows reached the database file
        write(range(30_000, 60_000))  # right before leaving: the last checkpoint takes it
    assert not outstanding() and db.stat().st_size > size
    assert write(range(60_000, 60_010)) == 1000 and registry.checkpointer is None
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM metrics_points").fetchone()[0] == 60_010
    conn.close()


def test_json_lists_keep_the_order_and_limit_of_the_row_lists(tmp_path):
    """`jobs/dataset/models/notifications list --json` are joined by SQLite (read.joined_json):
    the same rows, in the same order, as the typed lists."""
    import json

    import registry_fill

    from brightrun_cli.registry import datasets as dataset_rows
    from brightrun_cli.registry import jobs as job_rows
    from brightrun_cli.registry import models as model_rows
    from brightrun_cli.registry import notifications as notification_rows

    registry_fill.populate(tmp_path, 5)  # rows five minutes apart
    conn = open_registry(tmp_path).connect()
    for limit in (None, 3):
        assert [j["id"] for j in json.loads(job_rows.list_live_json(conn, limit=limit))] == \
            [j.id for j in job_rows.list_live(conn, limit=limit)]
        assert [d["id"] for d in json.loads(dataset_rows.list_json(conn, limit=limit))] == \
            [d.id for d in dataset_rows.list_live(conn, limit=limit)]
    jobs = json.loads(job_rows.list_live_json(conn))
    assert len(jobs) == 5 and [j["queued_at"] for j in jobs] == sorted((j["queued_at"] for j in jobs), reverse=True)
    assert len(json.loads(model_rows.live_json(conn, "created", None))) == 5
    assert len(json.loads(notification_rows.latest_json(conn, unread=False, limit=4))) == 4
    assert job_rows.list_live_json(conn, statuses=("failed",)) == b"[]"
