"""SHELL: the state file's schema: its tables, the migrations of older files, and the SQL the
store writes with (:mod:`.store`).

:data:`SCHEMA_VERSION` is kept in ``PRAGMA user_version``. A file of an older schema is migrated
in place: tables added since are made by ``CREATE TABLE IF NOT EXISTS`` (schema 3: ``node_costs``;
schema 5: ``job_outputs``) and columns added since by :data:`MIGRATIONS`.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from .errors import SidecarError

__all__ = [
    "JOB_COLUMNS",
    "MIGRATIONS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "UPDATE_PROGRESS",
    "UPSERT_COST",
    "UPSERT_INSTANCE",
    "UPSERT_JOB",
    "UPSERT_OUTPUT",
    "StoreError",
    "create_schema",
]

logger = logging.getLogger("sidecar.store")


class StoreError(SidecarError):
    """The state database cannot be opened or used; the message names the path."""


SCHEMA_VERSION = 5

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS comfyui_instances (
    name            TEXT PRIMARY KEY,
    url             TEXT NOT NULL,
    status          TEXT NOT NULL,
    last_connected  INTEGER,            -- Unix ns
    last_error      TEXT,
    version         TEXT,
    client_id       TEXT NOT NULL
)""",
    """
CREATE TABLE IF NOT EXISTS jobs (
    job_id       TEXT PRIMARY KEY,
    instance     TEXT NOT NULL,
    prompt_id    TEXT,
    state        TEXT NOT NULL,
    workflow     TEXT NOT NULL,         -- JSON
    client_data  TEXT NOT NULL,         -- JSON
    outputs      TEXT NOT NULL,         -- JSON
    error        TEXT,                  -- JSON
    attempts     INTEGER NOT NULL,
    number       INTEGER,
    created_ns   INTEGER NOT NULL,
    updated_ns   INTEGER NOT NULL,
    percent      REAL NOT NULL DEFAULT 0,   -- the last job.progress published (as of the last write)
    cancel_requested_ns INTEGER,            -- Unix ns of the first cancel, NULL if none
    progress     TEXT,                  -- JSON {will_run, done, cached, current}: node ids; NULL if not kept
    pause_requested_ns INTEGER              -- Unix ns of a pause not yet in effect, NULL if none
)""",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)",
    """
CREATE TABLE IF NOT EXISTS node_costs (
    instance     TEXT NOT NULL,
    class_type   TEXT NOT NULL,
    seconds      REAL NOT NULL,         -- a node's whole run, averaged over its runs
    step_s       REAL,                  -- seconds per step, averaged; NULL if it reports no steps
    steps        INTEGER NOT NULL,      -- the steps of its last run that reported them (0: none)
    runs         INTEGER NOT NULL,
    updated_ns   INTEGER NOT NULL,
    PRIMARY KEY (instance, class_type)
)""",
    """
CREATE TABLE IF NOT EXISTS job_outputs (
    job_id       TEXT NOT NULL,
    n            INTEGER NOT NULL,      -- its position in the job's `stored` list, from 0
    entry        TEXT NOT NULL,         -- JSON: the StoredOutput as last saved (pending, stored or failed)
    PRIMARY KEY (job_id, n)
)""",
)
# Columns added since schema 1 (table, column definition): a file that lacks one gets it.
# Tables added since (schema 3: node_costs; schema 5: job_outputs) are created by SCHEMA's CREATE TABLE IF NOT EXISTS.
MIGRATIONS: tuple[tuple[str, str], ...] = (
    ("jobs", "progress TEXT"),  # schema 2
    ("jobs", "pause_requested_ns INTEGER"),  # schema 4
)

UPSERT_INSTANCE = (
    "INSERT OR REPLACE INTO comfyui_instances"
    " (name, url, status, last_connected, last_error, version, client_id) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
UPSERT_JOB = (
    "INSERT OR REPLACE INTO jobs (job_id, instance, prompt_id, state, workflow, client_data, outputs,"
    " error, attempts, number, created_ns, updated_ns, percent, cancel_requested_ns, progress, pause_requested_ns)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
UPDATE_PROGRESS = "UPDATE jobs SET percent = ?, progress = ? WHERE job_id = ?"
UPSERT_OUTPUT = "INSERT OR REPLACE INTO job_outputs (job_id, n, entry) VALUES (?, ?, ?)"
UPSERT_COST = (
    "INSERT OR REPLACE INTO node_costs (instance, class_type, seconds, step_s, steps, runs, updated_ns)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
JOB_COLUMNS = (
    "job_id, instance, prompt_id, state, workflow, client_data, outputs, error,"
    " attempts, number, created_ns, updated_ns, percent, cancel_requested_ns, progress, pause_requested_ns"
)


def create_schema(path: Path, conn: sqlite3.Connection) -> None:
    """Create the tables on ``conn``, or migrate an older file in place (one transaction); refuse a
    file of a newer schema (:class:`StoreError`, naming ``path``)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]  # "file is not a database" raises here
    if version > SCHEMA_VERSION:
        raise StoreError(f"state database {path} has schema version {version}; this sidecar knows {SCHEMA_VERSION}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        logger.warning("state database %s: journal_mode is %s, not wal", path, mode)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statement in SCHEMA:
            conn.execute(statement)
        for table, column in MIGRATIONS:
            have = {info[1] for info in conn.execute(f"PRAGMA table_info({table})")}
            if column.split()[0] not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
                logger.info("state database %s: added column %s.%s", path, table, column)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
