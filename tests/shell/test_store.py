"""The SQLite store: round trips, upserts, the writer thread, crash safety, bad files.

Real files under ``tmp_path``. Nothing sleeps: writes are awaited with ``flush()``,
which blocks on an Event the writer thread sets after its commit.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sidecar.errors import SidecarError
from sidecar.store import SCHEMA_VERSION, UNFINISHED_STATES, InstanceRow, JobRow, NodeCostRow, Store, StoreError

FLUSH_S = 10.0


def job(job_id: str, state: str = "queued", **fields: Any) -> JobRow:
    values: dict[str, Any] = {
        "job_id": job_id,
        "instance": "gpu0",
        "prompt_id": f"p-{job_id}",
        "state": state,
        "workflow": {"3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}},
        "client_data": {"user": 42, "tags": ["a", "b"], "ratio": 0.5, "nested": {"ok": True}},
        "outputs": {},
        "error": None,
        "attempts": 1,
        "number": 7,
        "created_ns": 1_700_000_000_000_000_000,
        "updated_ns": 1_700_000_000_000_000_001,
    }
    values.update(fields)
    return JobRow(**values)


def instance(name: str = "gpu0", **fields: Any) -> InstanceRow:
    values: dict[str, Any] = {
        "name": name,
        "url": "http://127.0.0.1:8188",
        "status": "connected",
        "last_connected_ns": 1_700_000_000_123_456_789,
        "last_error": None,
        "version": "0.12.1",
        "client_id": "c0ffee",
    }
    values.update(fields)
    return InstanceRow(**values)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "bridge.sqlite3"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    s = Store(path)
    s.open()
    yield s
    s.close()


def reopen(path: Path) -> Store:
    s = Store(path)
    s.open()
    return s


def test_instances_round_trip_including_nulls(store: Store, path: Path) -> None:
    """Instances come back equal, nullable columns included, after a reopen."""
    rows = [
        instance("gpu0"),
        instance("gpu1", status="down", last_connected_ns=None, version=None, last_error="refused"),
    ]
    for row in rows:
        store.save_instance(row)
    assert store.flush(FLUSH_S)
    store.close()
    again = reopen(path)
    try:
        assert again.load_instances() == {r.name: r for r in rows}
    finally:
        again.close()


def test_jobs_round_trip_json_fields(store: Store, path: Path) -> None:
    """Every JobRow field, the JSON ones included, survives a reopen unchanged."""
    done = job(
        "j2",
        "failed",
        outputs={"9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}},
        error={"code": "comfy_error", "message": "boom", "details": {"node": "3"}},
        client_data=["list", 1, None, "üñí"],
        number=None,
        prompt_id=None,
        attempts=3,
    )
    rows = [job("j1"), done, job("j3", client_data=None)]
    for row in rows:
        store.save_job(row)
    assert store.flush(FLUSH_S)
    store.close()
    again = reopen(path)
    try:
        assert again.load_jobs(unfinished_only=False) == rows
    finally:
        again.close()


def test_upsert_replaces_the_row(store: Store) -> None:
    """A second save of the same key replaces the first, for jobs and instances."""
    store.save_job(job("j1", "queued"))
    store.save_instance(instance(status="connecting"))
    assert store.flush(FLUSH_S)
    store.save_job(job("j1", "completed", outputs={"9": {"text": ["hi"]}}, updated_ns=5))
    store.save_instance(instance(status="connected"))
    assert store.flush(FLUSH_S)
    assert store.load_jobs(unfinished_only=False) == [
        job("j1", "completed", outputs={"9": {"text": ["hi"]}}, updated_ns=5)
    ]
    assert store.load_instances()["gpu0"].status == "connected"
    assert store.writes == 4 and store.errors == 0


def test_load_jobs_filters_unfinished(store: Store) -> None:
    """Only accepted, queued, started and paused jobs load by default; oldest first."""
    assert set(UNFINISHED_STATES) == {"accepted", "queued", "started", "paused"}
    states = ["accepted", "queued", "started", "paused", "completed", "failed", "cancelled"]
    for i, state in enumerate(states):
        store.save_job(job(f"j{i}", state, created_ns=100 - i))
    assert store.flush(FLUSH_S)
    assert [j.state for j in store.load_jobs()] == ["paused", "started", "queued", "accepted"]
    assert sorted(j.state for j in store.load_jobs(unfinished_only=False)) == sorted(states)


def test_burst_of_saves_returns_fast_and_all_land(store: Store) -> None:
    """10,000 save_job calls enqueue in well under 0.5 s of the caller's CPU (its thread's time, not
    the wall clock, which a loaded machine stretches), and every row is there after flush."""
    rows = [job(f"j{i:05}", created_ns=i) for i in range(10_000)]
    start = time.thread_time()
    for row in rows:
        store.save_job(row)
    enqueue_s = time.thread_time() - start
    assert enqueue_s < 0.5, f"enqueueing took {enqueue_s:.3f} s of CPU"
    assert store.flush(FLUSH_S)
    assert store.writes == 10_000 and store.errors == 0
    loaded = store.load_jobs()
    assert len(loaded) == 10_000 and loaded[0] == rows[0] and loaded[-1] == rows[-1]


def test_save_is_a_snapshot(store: Store) -> None:
    """Mutating a row after save_job does not change what is written."""
    row = job("j1")
    store.save_job(row)
    row.outputs["9"] = {"images": []}
    row.state = "completed"
    assert store.flush(FLUSH_S)
    assert store.load_jobs() == [job("j1")]


def test_saves_in_one_batch_coalesce_last_wins(path: Path) -> None:
    """Saves queued before the writer starts form one batch; the same key is written once, last wins."""
    s = Store(path)
    s.save_job(job("j1", "accepted"))
    s.save_job(job("j1", "queued"))
    s.save_job(job("j2", "accepted"))
    s.open()
    try:
        assert s.flush(FLUSH_S)
        assert s.writes == 2
        assert {j.job_id: j.state for j in s.load_jobs()} == {"j1": "queued", "j2": "accepted"}
    finally:
        s.close()


def test_bad_rows_are_counted_not_raised_and_spare_their_batch(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An unencodable field and an SQL bind error are logged and counted; good rows in the batch land."""
    s = Store(path)
    s.save_job(job("bad-json", client_data=object()))  # fails on the caller's side, at encode
    s.save_job(job("good1"))
    s.save_job(job("bad-sql", attempts=2**70))  # fails in the writer: too big for an SQLite INTEGER
    s.save_job(job("good2"))
    s.open()
    try:
        assert s.flush(FLUSH_S)
        assert s.errors == 2 and s.writes == 2
        assert [j.job_id for j in s.load_jobs()] == ["good1", "good2"]
        s.save_job(job("after"))  # the writer thread kept going
        assert s.flush(FLUSH_S)
        assert "after" in {j.job_id for j in s.load_jobs()}
    finally:
        s.close()
    assert any(r.exc_info for r in caplog.records if "bad-sql" in r.getMessage())


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from sidecar.store import InstanceRow, JobRow, Store
    s = Store(sys.argv[1])
    s.open()
    s.save_instance(InstanceRow("gpu0", "http://h:1", "connected", 5, None, "0.12.1", "cid"))
    for i in range(50):
        s.save_job(JobRow(f"j{i}", "gpu0", None, "started", {"1": {}}, {"i": i}, {}, None, 1, i, i, i))
    if not s.flush(10.0):
        os._exit(3)
    os.kill(os.getpid(), signal.SIGKILL)  # no close(), no checkpoint, no atexit
    """
)


def test_committed_writes_survive_sigkill(path: Path) -> None:
    """A process that saves, flushes and is SIGKILLed without close() loses nothing."""
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(path)], capture_output=True, timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    s = reopen(path)
    try:
        assert s.load_instances()["gpu0"].client_id == "cid"
        jobs = s.load_jobs()
        assert [j.client_data for j in jobs] == [{"i": i} for i in range(50)]
    finally:
        s.close()


def test_open_on_a_non_sqlite_file_raises_store_error_naming_the_path(tmp_path: Path) -> None:
    """A file that is not a database is refused with a StoreError that names it."""
    bogus = tmp_path / "not-a-db.sqlite3"
    bogus.write_bytes(b"definitely not SQLite\n" * 200)
    s = Store(bogus)
    with pytest.raises(StoreError, match=str(bogus)) as info:
        s.open()
    assert isinstance(info.value, SidecarError)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    s.close()


def test_open_refuses_a_newer_schema(path: Path) -> None:
    """A database stamped with a newer user_version is refused, not rewritten."""
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="schema version"):
        Store(path).open()


def test_memory_path_is_refused() -> None:
    """':memory:' cannot work with two connections, so it is refused up front."""
    with pytest.raises(StoreError, match="memory"):
        Store(":memory:")


def test_schema_wal_and_user_version(store: Store, path: Path) -> None:
    """The file is in WAL mode, carries the schema version, and has the tables and the state index."""
    assert path.parent.is_dir()  # parent directories were created
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"comfyui_instances", "jobs", "jobs_state"} <= names
        cols = [r[1] for r in conn.execute("PRAGMA table_info(jobs)")]
        assert "number" in cols and "created_ns" in cols
    finally:
        conn.close()


def test_close_is_idempotent_and_late_saves_are_counted(path: Path) -> None:
    """close() twice is fine, flushes first, and a save after close is dropped and counted."""
    s = Store(path)
    s.close()  # never opened
    s = Store(path)
    s.open()
    s.save_job(job("j1"))
    s.close()
    s.close()
    s.save_job(job("late"))
    assert s.errors == 1
    assert s.flush(0.1)  # nothing left to wait for
    with pytest.raises(StoreError, match="not open"):
        s.load_jobs()
    again = reopen(path)
    try:
        assert [j.job_id for j in again.load_jobs()] == ["j1"]
    finally:
        again.close()


SCHEMA_1_JOBS = """
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY, instance TEXT NOT NULL, prompt_id TEXT, state TEXT NOT NULL,
    workflow TEXT NOT NULL, client_data TEXT NOT NULL, outputs TEXT NOT NULL, error TEXT,
    attempts INTEGER NOT NULL, number INTEGER, created_ns INTEGER NOT NULL, updated_ns INTEGER NOT NULL,
    percent REAL NOT NULL DEFAULT 0, cancel_requested_ns INTEGER
)
"""


def old_state_file(path: Path, version: int) -> None:
    """A state file as a sidecar of schema ``version`` (1 to 4) left it, with one started job ``old``
    at 37.5 %; from schema 2 on it has the ``progress`` column, with two progress nodes; from
    schema 4 on the ``pause_requested_ns`` column (NULL)."""
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.execute(SCHEMA_1_JOBS)
    row = "'old', 'gpu0', 'p', 'started', '{}', 'null', '{}', NULL, 1, 3, 1, 2, 37.5, NULL"
    if version >= 2:
        conn.execute("ALTER TABLE jobs ADD COLUMN progress TEXT")
        row += """, '{"done": ["1"], "current": "2"}'"""
    if version >= 4:
        conn.execute("ALTER TABLE jobs ADD COLUMN pause_requested_ns INTEGER")
        row += ", NULL"
    conn.execute(f"INSERT INTO jobs VALUES ({row})")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()


def test_a_schema_1_file_opens_and_gains_the_progress_column(path: Path) -> None:
    """A state file of the previous sidecar (schema 1, no `progress` column) opens; its rows load
    with no progress nodes, and progress can be saved into them."""
    old_state_file(path, 1)
    s = reopen(path)
    try:
        (old,) = s.load_jobs()
        assert (old.job_id, old.percent, old.progress) == ("old", 37.5, None)
        s.save_progress("old", 40.0, {"done": ["1"], "current": "2"})
        assert s.flush(FLUSH_S)
        (old,) = s.load_jobs()
        assert (old.percent, old.progress) == (40.0, {"done": ["1"], "current": "2"})
    finally:
        s.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM node_costs").fetchone() == (0,)
    finally:
        conn.close()
    reopen(path).close()  # a migrated file opens again as it is


def test_a_schema_2_file_opens_gains_node_costs_and_keeps_its_jobs(path: Path) -> None:
    """A state file of the previous sidecar (schema 2: jobs with progress, no node_costs) opens; its
    jobs load as they were, and node costs can be saved and read back."""
    old_state_file(path, 2)
    s = reopen(path)
    try:
        (old,) = s.load_jobs()
        assert (old.job_id, old.percent, old.progress) == ("old", 37.5, {"done": ["1"], "current": "2"})
        assert s.load_node_costs() == []
        s.save_node_costs([NodeCostRow("gpu0", "KSampler", 1.05, 0.05, 20, 1, 5)])
        assert s.flush(FLUSH_S)
        assert s.load_node_costs() == [NodeCostRow("gpu0", "KSampler", 1.05, 0.05, 20, 1, 5)]
    finally:
        s.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_a_schema_3_file_gains_the_pending_pause_and_keeps_a_paused_job(path: Path) -> None:
    """Schema 4 adds ``jobs.pause_requested_ns`` (a pause not yet in effect, issue 10): a schema 3
    file opens with its jobs as they were, and a paused job and a pending pause are read back."""
    old_state_file(path, 3)
    s = reopen(path)
    try:
        (old,) = s.load_jobs()
        assert (old.job_id, old.percent, old.pause_requested_ns) == ("old", 37.5, None)
        s.save_job(msgspec.structs.replace(old, pause_requested_ns=7))
        s.save_job(msgspec.structs.replace(old, job_id="held", state="paused", created_ns=2))
        assert s.flush(FLUSH_S)
        assert [(r.job_id, r.state, r.pause_requested_ns) for r in s.load_jobs()] == [
            ("old", "started", 7),
            ("held", "paused", None),
        ]
    finally:
        s.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_learned_node_costs_survive_a_restart_and_the_latest_wins(path: Path) -> None:
    """Costs saved by one store are read back by the next (per instance and class; the last save of
    a class wins, also within one batch); an unreadable row is skipped, not fatal."""
    s = Store(path)
    s.open()
    s.save_node_costs([NodeCostRow("gpu0", "VAEDecode", 0.4, None, 0, 1, 1)])
    s.save_node_costs(
        [NodeCostRow("gpu0", "VAEDecode", 0.3, None, 0, 2, 2), NodeCostRow("gpu1", "VAEDecode", 0.9, None, 0, 1, 2)]
    )
    s.close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO node_costs VALUES ('gpu0', 'Broken', 'not a number', NULL, 0, 1, 3)")
    conn.commit()
    conn.close()
    again = reopen(path)
    try:
        rows = sorted(again.load_node_costs(), key=lambda r: (r.instance, r.class_type))
        assert rows == [
            NodeCostRow("gpu0", "VAEDecode", 0.3, None, 0, 2, 2),
            NodeCostRow("gpu1", "VAEDecode", 0.9, None, 0, 1, 2),
        ]
    finally:
        again.close()


def test_progress_updates_keep_their_order_with_row_saves(path: Path) -> None:
    """save_progress touches percent and progress only; in one batch with whole-row saves the
    latest write wins, whichever kind it is; a job with no row is left alone."""
    s = Store(path)
    s.save_job(job("j1", percent=10.0, progress={"done": []}))
    s.save_progress("j1", 20.0, {"done": ["1"]})
    s.save_job(job("j2", percent=5.0))
    s.save_progress("j2", 30.0, {"done": ["1", "2"]})
    s.save_job(job("j2", "started", percent=30.0, progress={"done": ["1", "2"], "current": "3"}))
    s.save_progress("ghost", 50.0, {})
    s.open()
    try:
        assert s.flush(FLUSH_S)
        rows = {j.job_id: j for j in s.load_jobs()}
        assert set(rows) == {"j1", "j2"}
        assert (rows["j1"].state, rows["j1"].percent, rows["j1"].progress) == ("queued", 20.0, {"done": ["1"]})
        assert (rows["j2"].state, rows["j2"].progress) == ("started", {"done": ["1", "2"], "current": "3"})
        s.save_progress("j1", 25.0, {"bad": object()})  # unencodable: counted, not raised
        assert s.flush(FLUSH_S) and s.errors == 1
    finally:
        s.close()


def test_a_schema_4_file_gains_job_outputs_and_its_jobs_read_back_with_theirs(path: Path) -> None:
    """Schema 5 adds the ``job_outputs`` table (a job's `stored` entries): a schema 4 file opens with
    its job as it was (no entries), entries saved into it come back in order with the job, from
    ``load_jobs`` and ``load_job``; the latest save of an entry wins; an unreadable one keeps its place."""
    old_state_file(path, 4)
    s = reopen(path)
    try:
        (old,) = s.load_jobs()
        assert (old.job_id, old.percent, old.stored) == ("old", 37.5, [])
        s.save_output("old", 0, {"node": "2", "filename": "a.png", "state": "pending"})
        s.save_output("old", 1, {"node": "4", "filename": "b.png", "state": "pending"})
        s.save_output("old", 0, {"node": "2", "filename": "a.png", "state": "stored", "ref": "/kept/a.png"})
        s.save_output("ghost", 0, {"node": "1"})  # no job row: never read back
        s.save_output("old", 2, {"bad": object()})  # unencodable: counted, not raised
        assert s.flush(FLUSH_S) and s.errors == 1
        (old,) = s.load_jobs()
        loaded = s.load_job("old")
        assert loaded is not None and loaded.stored == old.stored
        assert [(e["filename"], e["state"]) for e in old.stored] == [("a.png", "stored"), ("b.png", "pending")]
        assert old.stored[0]["ref"] == "/kept/a.png"
    finally:
        s.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        conn.execute("UPDATE job_outputs SET entry = 'not json' WHERE job_id = 'old' AND n = 0")
        conn.commit()
    finally:
        conn.close()
    again = reopen(path)
    try:
        (old,) = again.load_jobs(unfinished_only=False)
        assert [e.get("filename") for e in old.stored] == [None, "b.png"]
    finally:
        again.close()
