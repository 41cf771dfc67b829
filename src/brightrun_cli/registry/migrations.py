"""Numbered, append-only schema migrations, recorded in `schema_migrations`.

Opening a registry applies the pending ones in order, after a backup copy of the
file; a registry whose schema is newer than this program knows is refused. Never edit
a migration that has shipped: add the next number.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite3

from brightrun_cli.registry.ids import new_id
from brightrun_cli.registry.timeutil import utcnow

MIGRATIONS: list[tuple[int, str, Callable[[sqlite3.Connection], None]]] = []


def migration(version: int, name: str):
    def register(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
        assert not MIGRATIONS or MIGRATIONS[-1][0] == version - 1, "migrations must be numbered in order"
        MIGRATIONS.append((version, name, fn))
        return fn

    return register




_INITIAL_SCHEMA = """
CREATE TABLE datasets (
	id VARCHAR NOT NULL, 
	name VARCHAR NOT NULL, 
	description VARCHAR, 
	format VARCHAR NOT NULL, 
	status VARCHAR NOT NULL, 
	storage_path VARCHAR NOT NULL, 
	file_name VARCHAR NOT NULL, 
	file_size INTEGER NOT NULL, 
	source_uri VARCHAR, 
	content_sha256 VARCHAR, 
	total_conversations INTEGER, 
	total_training_pairs INTEGER, 
	total_validation_pairs INTEGER, 
	total_tokens INTEGER, 
	avg_turns_per_conversation FLOAT, 
	avg_tokens_per_turn FLOAT, 
	token_count_method VARCHAR, 
	base_model VARCHAR, 
	val_split FLOAT NOT NULL, 
	stats JSON, 
	training_ready BOOLEAN NOT NULL, 
	validated_at DATETIME, 
	validation_errors JSON, 
	validation_error_count INTEGER NOT NULL, 
	sample_data JSON, 
	error_message VARCHAR, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	deleted_at DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (storage_path)
);
CREATE INDEX ix_datasets_status ON datasets (status);
CREATE UNIQUE INDEX ux_datasets_live_name ON datasets (name) WHERE deleted_at IS NULL;
CREATE INDEX ix_datasets_created_at ON datasets (created_at);
CREATE TABLE hosts (
	id VARCHAR NOT NULL, 
	name VARCHAR NOT NULL, 
	kind VARCHAR NOT NULL, 
	ssh_user VARCHAR, 
	ssh_host VARCHAR, 
	ssh_port INTEGER, 
	identity_file VARCHAR, 
	gpus INTEGER NOT NULL, 
	gpu_type VARCHAR NOT NULL, 
	python VARCHAR, 
	workdir VARCHAR, 
	options JSON, 
	last_check JSON, 
	last_checked_at DATETIME, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name)
);
CREATE TABLE notifications (
	id VARCHAR NOT NULL, 
	type VARCHAR NOT NULL, 
	title VARCHAR NOT NULL, 
	message VARCHAR NOT NULL, 
	priority VARCHAR NOT NULL, 
	read BOOLEAN NOT NULL, 
	action_command VARCHAR, 
	job_id VARCHAR, 
	dataset_id VARCHAR, 
	artifact_id VARCHAR, 
	metadata JSON, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_notifications_read_created ON notifications (read, created_at);
CREATE TABLE training_jobs (
	id VARCHAR NOT NULL, 
	dataset_id VARCHAR NOT NULL, 
	preset_id VARCHAR NOT NULL, 
	base_model VARCHAR NOT NULL, 
	hyperparameters JSON NOT NULL, 
	gpu_config JSON NOT NULL, 
	host_id VARCHAR, 
	hosts JSON, 
	status VARCHAR NOT NULL, 
	current_stage VARCHAR NOT NULL, 
	progress FLOAT NOT NULL, 
	current_epoch INTEGER NOT NULL, 
	total_epochs INTEGER NOT NULL, 
	current_step INTEGER NOT NULL, 
	total_steps INTEGER, 
	tokens_processed INTEGER NOT NULL, 
	current_metrics JSON, 
	queued_at DATETIME NOT NULL, 
	started_at DATETIME, 
	completed_at DATETIME, 
	estimated_completion_at DATETIME, 
	estimated_duration_hours FLOAT, 
	current_cost FLOAT NOT NULL, 
	estimated_total_cost FLOAT NOT NULL, 
	max_cost FLOAT, 
	final_cost FLOAT, 
	error_message VARCHAR, 
	error_stack VARCHAR, 
	retry_count INTEGER NOT NULL, 
	resume_count INTEGER NOT NULL, 
	external_job_id VARCHAR, 
	artifact_id VARCHAR, 
	spec JSON, 
	run_dir VARCHAR, 
	supervisor_pid INTEGER, 
	supervisor_marker VARCHAR, 
	heartbeat_at DATETIME, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	deleted_at DATETIME, 
	PRIMARY KEY (id), 
	FOREIGN KEY(dataset_id) REFERENCES datasets (id), 
	FOREIGN KEY(host_id) REFERENCES hosts (id), 
	UNIQUE (external_job_id)
);
CREATE INDEX ix_training_jobs_dataset_id ON training_jobs (dataset_id);
CREATE INDEX ix_training_jobs_host_queue ON training_jobs (host_id, status, queued_at);
CREATE INDEX ix_training_jobs_status ON training_jobs (status);
CREATE TABLE cost_records (
	id VARCHAR NOT NULL, 
	job_id VARCHAR, 
	cost_type VARCHAR NOT NULL, 
	amount FLOAT NOT NULL, 
	gpu_type VARCHAR, 
	details JSON, 
	billing_period VARCHAR NOT NULL, 
	recorded_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(job_id) REFERENCES training_jobs (id)
);
CREATE INDEX ix_cost_records_billing_period ON cost_records (billing_period);
CREATE TABLE metrics_points (
	id INTEGER NOT NULL, 
	job_id VARCHAR NOT NULL, 
	timestamp DATETIME NOT NULL, 
	epoch FLOAT NOT NULL, 
	step INTEGER NOT NULL, 
	split VARCHAR NOT NULL, 
	training_loss FLOAT, 
	validation_loss FLOAT, 
	learning_rate FLOAT, 
	gradient_norm FLOAT, 
	throughput FLOAT, 
	gpu_utilization FLOAT, 
	gpu_memory FLOAT, 
	PRIMARY KEY (id), 
	CONSTRAINT ux_metrics_points_job_step_split UNIQUE (job_id, step, split), 
	FOREIGN KEY(job_id) REFERENCES training_jobs (id)
);
CREATE TABLE model_artifacts (
	id VARCHAR NOT NULL, 
	job_id VARCHAR NOT NULL, 
	dataset_id VARCHAR NOT NULL, 
	name VARCHAR NOT NULL, 
	version VARCHAR NOT NULL, 
	description VARCHAR, 
	status VARCHAR NOT NULL, 
	base_model VARCHAR, 
	storage_path VARCHAR, 
	deployed_at DATETIME, 
	quality_metrics JSON NOT NULL, 
	training_summary JSON NOT NULL, 
	configuration JSON NOT NULL, 
	artifacts JSON NOT NULL, 
	parent_model_id VARCHAR, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	deleted_at DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (job_id), 
	FOREIGN KEY(job_id) REFERENCES training_jobs (id), 
	FOREIGN KEY(dataset_id) REFERENCES datasets (id), 
	FOREIGN KEY(parent_model_id) REFERENCES model_artifacts (id)
);
"""


@migration(1, "initial schema")
def _m0001_initial(conn: sqlite3.Connection) -> None:
    for statement in _INITIAL_SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    now = utcnow().replace(tzinfo=None).isoformat(sep=" ")
    conn.execute(
        "INSERT INTO hosts (id, name, kind, gpus, gpu_type, created_at, updated_at) VALUES (?, 'local', 'local', 1, 'cpu', ?, ?)",
        (new_id(), now, now),
    )


@migration(2, "datasets listed newest first from an index")
def _m0002_datasets_created_id(conn: sqlite3.Connection) -> None:
    # `dataset list` orders by (created_at DESC, id DESC): with both columns in one index
    # SQLite walks it backwards instead of sorting every row's JSON (10,000 datasets:
    # ~30% of the query).
    conn.execute("CREATE INDEX ix_datasets_created_id ON datasets (created_at, id)")
    conn.execute("DROP INDEX ix_datasets_created_at")


# The row of `dataset list --json`, as of migration 3. A later change to the listed fields
# is a new migration that recreates the triggers (services.datasets.LIST_COLUMNS must
# match: tests/test_datasets.py checks the two against each other).
_DATASET_LIST_COLUMNS_V3 = (
    "id", "name", "description", "format", "status", "storage_path", "file_name", "file_size", "source_uri",
    "content_sha256", "total_conversations", "total_training_pairs", "total_validation_pairs", "total_tokens",
    "avg_turns_per_conversation", "avg_tokens_per_turn", "token_count_method", "base_model", "val_split",
    "training_ready", "validated_at", "validation_error_count", "error_message", "created_at", "updated_at",
)


def dataset_list_json_sql(row: str = "") -> str:
    """json_object(...) of a datasets row (`row` = "NEW." inside a trigger): booleans as
    true/false, naive-UTC timestamps as ISO 8601 with Z, like `dataset show --json`."""
    parts = []
    for column in _DATASET_LIST_COLUMNS_V3:
        ref = f"{row}{column}"
        if column == "training_ready":
            expr = f"json(CASE WHEN {ref} THEN 'true' ELSE 'false' END)"
        elif column in ("validated_at", "created_at", "updated_at"):
            expr = f"replace({ref}, ' ', 'T') || 'Z'"  # NULL stays NULL
        else:
            expr = ref
        parts.append(f"'{column}', {expr}")
    return f"json_object({', '.join(parts)})"


@migration(3, "dataset list rows kept as JSON by triggers")
def _m0003_dataset_list_json(conn: sqlite3.Connection) -> None:
    # `dataset list --json` over 10,000 datasets spent most of its time in SQLite building
    # each row's JSON. Triggers keep that text beside the row, so listing concatenates it.
    conn.execute("CREATE TABLE dataset_list_json (id VARCHAR NOT NULL PRIMARY KEY, json TEXT NOT NULL) WITHOUT ROWID")
    conn.execute(f"INSERT INTO dataset_list_json (id, json) SELECT id, {dataset_list_json_sql()} FROM datasets")
    for event in ("INSERT", "UPDATE"):
        conn.execute(
            f"CREATE TRIGGER datasets_list_json_{event.lower()} AFTER {event} ON datasets BEGIN "
            f"INSERT OR REPLACE INTO dataset_list_json (id, json) VALUES (NEW.id, {dataset_list_json_sql('NEW.')}); END"
        )
    conn.execute("CREATE TRIGGER datasets_list_json_delete AFTER DELETE ON datasets BEGIN "
                 "DELETE FROM dataset_list_json WHERE id = OLD.id; END")


@migration(4, "dataset warnings and lines skipped by add --skip-invalid")
def _m0004_dataset_warnings_and_skipped(conn: sqlite3.Connection) -> None:
    # Warnings (e.g. a conversation without a user turn) are kept apart from problems: they
    # do not block training. `skipped_lines`: lines `dataset add --skip-invalid` left out.
    conn.execute("ALTER TABLE datasets ADD COLUMN validation_warnings JSON")
    conn.execute("ALTER TABLE datasets ADD COLUMN validation_warning_count INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE datasets ADD COLUMN skipped_lines INTEGER NOT NULL DEFAULT 0")


# The row of `jobs list --json`, as of migration 5: every column, with how it renders
# (t: time, j: JSON, plain otherwise). A later schema change to training_jobs is a new
# migration that recreates the triggers (tests/test_jobs.py checks a listed row against
# `jobs show --json`).
_JOB_COLUMNS_V5 = (
    ("id", ""), ("dataset_id", ""), ("preset_id", ""), ("base_model", ""), ("hyperparameters", "j"), ("gpu_config", "j"),
    ("host_id", ""), ("hosts", "j"), ("status", ""), ("current_stage", ""), ("progress", ""), ("current_epoch", ""),
    ("total_epochs", ""), ("current_step", ""), ("total_steps", ""), ("tokens_processed", ""), ("current_metrics", "j"),
    ("queued_at", "t"), ("started_at", "t"), ("completed_at", "t"), ("estimated_completion_at", "t"),
    ("estimated_duration_hours", ""), ("current_cost", ""), ("estimated_total_cost", ""), ("max_cost", ""),
    ("final_cost", ""), ("error_message", ""), ("error_stack", ""), ("retry_count", ""), ("resume_count", ""),
    ("external_job_id", ""), ("artifact_id", ""), ("spec", "j"), ("run_dir", ""), ("supervisor_pid", ""),
    ("supervisor_marker", ""), ("heartbeat_at", "t"), ("created_at", "t"), ("updated_at", "t"), ("deleted_at", "t"),
)


def _job_json_sql(row: str) -> str:
    parts = []
    for column, kind in _JOB_COLUMNS_V5:
        ref = f"{row}{column}"
        expr = {"t": f"replace({ref}, ' ', 'T') || 'Z'", "j": f"json({ref})"}.get(kind, ref)
        parts.append(f"'{column}', {expr}")
    return f"json_object({', '.join(parts)})"


@migration(5, "job and model lists from indexes; job rows kept as JSON by triggers")
def _m0005_job_list_json(conn: sqlite3.Connection) -> None:
    # `jobs list` and `models list` show the newest 50 of the live rows, and count them: with
    # (deleted_at, order) indexes SQLite walks 50 index entries instead of sorting the table.
    conn.execute("CREATE INDEX ix_training_jobs_live_queued ON training_jobs (deleted_at, queued_at, id)")
    conn.execute("CREATE INDEX ix_model_artifacts_live_created ON model_artifacts (deleted_at, created_at, id)")
    # `jobs list --json` over 10,000 jobs spent most of its time in SQLite building each
    # row's JSON (its JSON columns parsed and written again): triggers keep the text, as
    # migration 3 does for datasets. A job row changes a few times a second while it runs
    # (the supervisor's progress); the trigger's tens of microseconds are nothing beside that.
    # A rowid table: at ~1 KB a row, WITHOUT ROWID's in-tree rows read 1.8x slower here.
    conn.execute("CREATE TABLE job_list_json (id VARCHAR NOT NULL PRIMARY KEY, json TEXT NOT NULL)")
    conn.execute(f"INSERT INTO job_list_json (id, json) SELECT id, {_job_json_sql('')} FROM training_jobs")
    for event in ("INSERT", "UPDATE"):
        conn.execute(
            f"CREATE TRIGGER training_jobs_list_json_{event.lower()} AFTER {event} ON training_jobs BEGIN "
            f"INSERT OR REPLACE INTO job_list_json (id, json) VALUES (NEW.id, {_job_json_sql('NEW.')}); END"
        )
    conn.execute("CREATE TRIGGER training_jobs_list_json_delete AFTER DELETE ON training_jobs BEGIN "
                 "DELETE FROM job_list_json WHERE id = OLD.id; END")


@migration(6, "answer-eval aggregates of models")
def _m0006_model_evals(conn: sqlite3.Connection) -> None:
    # One row per answer eval of a model (generation/evaluate.py): the one its job ran at the
    # end of training (source "job"), and each `models eval` (source "command"). The
    # aggregates are kept here so `models show`, `models list` and gates read them without
    # the samples; the samples stay an eval.jsonl in the model's storage (`samples_path`).
    conn.execute(
        "CREATE TABLE model_evals ("
        " id VARCHAR NOT NULL, model_id VARCHAR NOT NULL, dataset_id VARCHAR, source VARCHAR NOT NULL,"
        " sample_count INTEGER NOT NULL, max_new_tokens INTEGER, base JSON, tuned JSON, samples_path VARCHAR,"
        " created_at DATETIME NOT NULL,"
        " PRIMARY KEY (id), FOREIGN KEY(model_id) REFERENCES model_artifacts (id),"
        " FOREIGN KEY(dataset_id) REFERENCES datasets (id))"
    )
    conn.execute("CREATE INDEX ix_model_evals_model_created ON model_evals (model_id, created_at)")


# Completed jobs whose run was measured: what estimates calibrate on (registry/jobs.py).
MEASURED_JOBS = "status = 'completed' AND started_at IS NOT NULL AND completed_at IS NOT NULL AND tokens_processed > 0"


@migration(7, "indexes under `brightrun status`'s windows and the estimates' calibration")
def _m0007_status_indexes(conn: sqlite3.Connection) -> None:
    # `status` counts the jobs that ended in the last 7 and 30 days, and sums this and last
    # month's costs. Without these it read every job's and cost's whole row (~1 KB) to find
    # the recent ones; the indexes hold just the columns those sums read.
    conn.execute("CREATE INDEX ix_training_jobs_ended ON training_jobs (status, completed_at, started_at)")
    conn.execute("CREATE INDEX ix_cost_records_recorded ON cost_records (recorded_at, amount)")
    # An estimate calibrates on completed, measured jobs of the same GPU type and base model:
    # these entries are all it reads to find them (registry/jobs.py: measured_gpu_models, measured_on).
    # `models show NAME` (its newest version) and NAME@VERSION look models up by name.
    conn.execute("CREATE INDEX ix_model_artifacts_name ON model_artifacts (name, created_at)")
    conn.execute(f"CREATE INDEX ix_training_jobs_measured ON training_jobs (json_extract(gpu_config, '$.type'), base_model, completed_at) "
                 f"WHERE {MEASURED_JOBS}")


LATEST_VERSION = MIGRATIONS[-1][0]
