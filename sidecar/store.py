"""SHELL: the sidecar's state in SQLite (stdlib ``sqlite3``); writes never block the loop.

Four tables: ``comfyui_instances`` (one row per configured instance), ``jobs``
(one row per job, JSON columns encoded with ``msgspec.json``), with an index on
``jobs(state)``, ``job_outputs`` (one row per file output of a job and its copy in
the output store: ``Job.stored``, by position) and ``node_costs`` (how long nodes
of each class took on each instance: what the progress percentage is weighted by). The schema carries
``PRAGMA user_version`` (:data:`SCHEMA_VERSION`) and is created if missing; a file
of an older schema is migrated in place (tables created, columns added,
``storeschema.MIGRATIONS``); a file written by a newer sidecar is refused.

Threads and connections:

- Writes happen on state transitions only, never per progress frame (plus a
  job's percentage and progress nodes at node boundaries, ``save_progress``: a
  small ``UPDATE``, not the whole row; and the node costs learned when a node
  ends, ``save_node_costs``; and a job's file output when it is offered and when its
  fetch ends, ``save_output``: one small row, never the job's whole list). ``save_*`` encodes the row on the
  caller's thread (a snapshot: later mutation of the Struct does not leak into
  the database), puts it on a ``queue.SimpleQueue`` and returns at once.
- One dedicated writer thread owns its own connection. It takes everything
  queued, keeps the last version of each row (same key, last wins), writes the
  batch in one transaction and commits once, so a burst of transitions costs one
  fsync. A failed batch is rolled back and retried row by row, so one bad row
  cannot sink its neighbours; failures are logged with ``exc_info`` and counted
  in :attr:`Store.errors`, never raised into callers, and the thread keeps going.
- Reads (``load_*``) happen at start-up, before the loop is busy, on a separate
  connection. They see committed data only: ``flush()`` first to read your writes.

Durability: the file is in WAL mode with ``synchronous=NORMAL``. A commit is
written to the WAL before ``commit()`` returns, so if the *process* dies (SIGKILL,
``os._exit``, a crash) nothing committed is lost. On *power loss or an OS crash*
the last few commits since the previous WAL checkpoint may roll back (the
database itself stays consistent, never corrupt). Rows still in the queue, not
yet committed, are lost in either case; ``close()`` flushes them on shutdown.

``":memory:"`` is not supported: the reader and the writer are two connections.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Any

import msgspec

from .core.jobs import ACTIVE_STATES
from .storeschema import (
    JOB_COLUMNS,
    SCHEMA_VERSION,
    UPDATE_PROGRESS,
    UPSERT_COST,
    UPSERT_INSTANCE,
    UPSERT_JOB,
    UPSERT_OUTPUT,
    StoreError,
    create_schema,
)

__all__ = [
    "SCHEMA_VERSION",
    "UNFINISHED_STATES",
    "InstanceRow",
    "JobRow",
    "NodeCostRow",
    "Store",
    "StoreError",
]

logger = logging.getLogger(__name__)

UNFINISHED_STATES: tuple[str, ...] = tuple(sorted(ACTIVE_STATES))
BUSY_TIMEOUT_MS = 5_000


class InstanceRow(msgspec.Struct):
    name: str
    url: str
    status: str
    last_connected_ns: int | None
    last_error: str | None
    version: str | None
    client_id: str


class JobRow(msgspec.Struct):
    job_id: str
    instance: str
    prompt_id: str | None
    state: str
    workflow: dict[str, Any]
    client_data: Any
    outputs: dict[str, Any]
    error: dict[str, Any] | None
    attempts: int
    number: int | None
    created_ns: int
    updated_ns: int
    percent: float = 0.0
    cancel_requested_ns: int | None = None
    progress: dict[str, Any] | None = None  # the progress plan's node sets (persistence.py)
    pause_requested_ns: int | None = None
    # Read back only (``load_*``), in order: written entry by entry with Store.save_output, not by save_job
    stored: list[dict[str, Any]] = []


class NodeCostRow(msgspec.Struct):
    """How long nodes of one class took on one instance (sidecar.core.costs.NodeCost)."""

    instance: str
    class_type: str
    seconds: float
    step_s: float | None
    steps: int
    runs: int
    updated_ns: int


# A queued write: (sql, key, params). Keys coalesce a batch ("i"/"j" + primary key).
_Write = tuple[str, tuple[str, str], tuple[Any, ...]]
_STOP = object()

_ENCODER = msgspec.json.Encoder()
_DICT = msgspec.json.Decoder(dict[str, Any])
_ANY = msgspec.json.Decoder()
_OPT_DICT = msgspec.json.Decoder(dict[str, Any] | None)


def _json(value: Any) -> str:
    return _ENCODER.encode(value).decode()


class Store:
    """SQLite state: ``open()``, ``load_*`` at start-up, ``save_*`` on transitions, ``close()``."""

    def __init__(self, path: str | Path) -> None:
        if str(path) == ":memory:":
            raise StoreError("state path ':memory:' is not supported (the store uses two connections)")
        self.path = Path(path)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._writes = 0
        self._write_errors = 0  # touched by the writer thread only
        self._caller_errors = 0  # encode failures and late saves, on callers' threads
        self._caller_lock = threading.Lock()

    # Public: lifecycle

    def open(self) -> None:
        """Create the schema if missing and start the writer thread.

        Raises :class:`StoreError`, naming the path, if the file cannot be opened,
        is not a SQLite database, or has a newer schema.
        """
        if self._closed:
            raise StoreError(f"state database {self.path}: the store is closed")
        if self._thread is not None:
            return
        reader = writer = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            writer = self._connect()
            create_schema(self.path, writer)
            reader = self._connect()
        except (OSError, sqlite3.Error) as exc:
            for conn in (reader, writer):
                if conn is not None:
                    conn.close()
            raise StoreError(f"cannot open state database {self.path}: {exc}") from exc
        except StoreError:
            if writer is not None:
                writer.close()
            raise
        self._reader = reader
        self._thread = threading.Thread(target=self._run, args=(writer,), name="sidecar-store", daemon=True)
        self._thread.start()
        logger.info("state database %s open (schema %d, WAL)", self.path, SCHEMA_VERSION)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Block until every write enqueued before this call is committed; True if done in time.

        A thread-safe wait for shutdown and tests: never call it on the event loop
        (use ``await asyncio.to_thread(store.flush)``). A failed write counts as done.
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            return self._queue.empty()
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush, stop the writer thread and close both connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout_s)
            if thread.is_alive():
                logger.error("state writer did not finish within %.1f s; queued writes may be lost", timeout_s)
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    @property
    def writes(self) -> int:
        """Rows committed (after coalescing: two saves of one row in one batch write it once)."""
        return self._writes

    @property
    def errors(self) -> int:
        """Writes that failed: encode errors, SQL errors, saves after ``close()``."""
        return self._write_errors + self._caller_errors

    # Public: reads (start-up)

    def load_instances(self) -> dict[str, InstanceRow]:
        """Every stored instance, by name."""
        rows = self._read(
            "SELECT name, url, status, last_connected, last_error, version, client_id FROM comfyui_instances"
        )
        return {r[0]: InstanceRow(*r) for r in rows}

    def load_jobs(self, unfinished_only: bool = True) -> list[JobRow]:
        """Stored jobs, oldest first; only states in :data:`UNFINISHED_STATES` unless told otherwise.

        A row whose JSON cannot be decoded is logged and skipped.
        """
        params = UNFINISHED_STATES if unfinished_only else ()
        where = f" WHERE state IN ({', '.join('?' * len(params))})" if params else ""
        found = self._read(f"SELECT {JOB_COLUMNS} FROM jobs{where} ORDER BY created_ns, job_id", params)
        rows = [row for row in map(self._job_row, found) if row is not None]
        if rows:
            self._attach_outputs(rows, f" WHERE job_id IN (SELECT job_id FROM jobs{where})", params)
        return rows

    def load_job(self, job_id: str) -> JobRow | None:
        """One stored job (any state), or None. A primary-key read: call it off the loop."""
        found = self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,))
        row = self._job_row(found[0]) if found else None
        if row is not None:
            self._attach_outputs([row], " WHERE job_id = ?", (job_id,))
        return row

    def load_node_costs(self) -> list[NodeCostRow]:
        """Every learned node cost (a row of the wrong type is logged and skipped)."""
        rows = []
        for r in self._read("SELECT instance, class_type, seconds, step_s, steps, runs, updated_ns FROM node_costs"):
            try:
                rows.append(msgspec.convert(dict(zip(NodeCostRow.__struct_fields__, r, strict=True)), NodeCostRow))
            except msgspec.ValidationError as exc:
                logger.warning("state database %s: node cost %r unreadable (%s); skipped", self.path, r[:2], exc)
        return rows

    # Public: writes (enqueue and return)

    def save_instance(self, row: InstanceRow) -> None:
        """Enqueue an upsert of ``row``; returns at once."""
        params = (row.name, row.url, row.status, row.last_connected_ns, row.last_error, row.version, row.client_id)
        self._enqueue((UPSERT_INSTANCE, ("i", row.name), params))

    def save_job(self, row: JobRow) -> None:
        """Enqueue an upsert of ``row`` (encoded now, as a snapshot); returns at once."""
        try:
            params = (
                row.job_id,
                row.instance,
                row.prompt_id,
                row.state,
                _json(row.workflow),
                _json(row.client_data),
                _json(row.outputs),
                None if row.error is None else _json(row.error),
                row.attempts,
                row.number,
                row.created_ns,
                row.updated_ns,
                row.percent,
                row.cancel_requested_ns,
                None if row.progress is None else _json(row.progress),
                row.pause_requested_ns,
            )
        except (TypeError, msgspec.EncodeError):
            logger.error("job %r not saved: a field cannot be encoded as JSON", row.job_id, exc_info=True)
            self._count_caller_error()
            return
        self._enqueue((UPSERT_JOB, ("j", row.job_id), params))

    def save_progress(self, job_id: str, percent: float, progress: dict[str, Any]) -> None:
        """Enqueue an update of a saved job's ``percent`` and ``progress`` only; returns at once.

        For node boundaries: it does not re-encode the workflow. A job with no row yet is left alone.
        """
        try:
            params = (percent, _json(progress), job_id)
        except (TypeError, msgspec.EncodeError):
            logger.error("progress of job %r not saved: it cannot be encoded as JSON", job_id, exc_info=True)
            self._count_caller_error()
            return
        self._enqueue((UPDATE_PROGRESS, ("p", job_id), params))

    def save_output(self, job_id: str, n: int, entry: Any) -> None:
        """Enqueue an upsert of the job's ``n``-th file output (encoded now); returns at once.

        ``entry`` is anything ``msgspec.json`` encodes (a ``StoredOutput``); it is read back in
        ``JobRow.stored``. Called when an entry is offered and when its fetch ends.
        """
        try:
            params = (job_id, n, _json(entry))
        except (TypeError, msgspec.EncodeError):
            logger.error("output %d of job %r not saved: it cannot be encoded as JSON", n, job_id, exc_info=True)
            self._count_caller_error()
            return
        self._enqueue((UPSERT_OUTPUT, ("o", f"{job_id}\x00{n}"), params))

    def save_node_costs(self, rows: list[NodeCostRow]) -> None:
        """Enqueue upserts of learned node costs; returns at once (a few rows when a node ends)."""
        for row in rows:
            params = (row.instance, row.class_type, row.seconds, row.step_s, row.steps, row.runs, row.updated_ns)
            self._enqueue((UPSERT_COST, ("c", f"{row.instance}\x00{row.class_type}"), params))

    # Private

    def _job_row(self, r: tuple[Any, ...]) -> JobRow | None:
        try:
            return JobRow(
                job_id=r[0],
                instance=r[1],
                prompt_id=r[2],
                state=r[3],
                workflow=_DICT.decode(r[4]),
                client_data=_ANY.decode(r[5]),
                outputs=_DICT.decode(r[6]),
                error=_OPT_DICT.decode(r[7]) if r[7] is not None else None,
                attempts=r[8],
                number=r[9],
                created_ns=r[10],
                updated_ns=r[11],
                percent=r[12],
                cancel_requested_ns=r[13],
                progress=_OPT_DICT.decode(r[14]) if r[14] is not None else None,
                pause_requested_ns=r[15],
            )
        except msgspec.DecodeError:
            logger.error("state database %s: job %r is unreadable; skipped", self.path, r[0], exc_info=True)
            return None

    def _attach_outputs(self, rows: list[JobRow], where: str, params: tuple[Any, ...]) -> None:
        """Fill ``rows``' ``stored`` from ``job_outputs`` (``where`` picks the jobs); an unreadable
        entry is logged and kept as an empty map, so the others keep their positions."""
        by_id = {row.job_id: row for row in rows}
        sql = f"SELECT job_id, n, entry FROM job_outputs{where} ORDER BY job_id, n"
        for job_id, n, text in self._read(sql, params):
            row = by_id.get(job_id)
            if row is None:
                continue
            try:
                entry = _DICT.decode(text)
            except msgspec.DecodeError:
                logger.error("state database %s: output %d of job %r is unreadable", self.path, n, job_id)
                entry = {}
            row.stored.append(entry)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._reader_lock:
            if self._reader is None:
                raise StoreError(f"state database {self.path}: the store is not open")
            try:
                return self._reader.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read state database {self.path}: {exc}") from exc

    def _enqueue(self, write: _Write) -> None:
        if self._closed:
            logger.warning("state write for %s %r after close; dropped", *write[1])
            self._count_caller_error()
            return
        self._queue.put(write)

    def _count_caller_error(self) -> None:
        with self._caller_lock:
            self._caller_errors += 1

    def _run(self, conn: sqlite3.Connection) -> None:
        """The writer thread: drain, write one transaction, commit, signal flushes; until ``_STOP``."""
        try:
            stop = False
            while not stop:
                items = [self._queue.get()]
                while True:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                batch: dict[tuple[str, str], _Write] = {}
                waiters: list[threading.Event] = []
                for item in items:
                    if item is _STOP:
                        stop = True
                    elif isinstance(item, threading.Event):
                        waiters.append(item)
                    else:
                        batch.pop(item[1], None)  # re-insert: keep the latest write's position
                        batch[item[1]] = item
                if batch:
                    self._write_batch(conn, list(batch.values()))
                for done in waiters:
                    done.set()
        finally:
            conn.close()

    def _write_batch(self, conn: sqlite3.Connection, batch: list[_Write]) -> None:
        try:
            conn.execute("BEGIN")
            for sql, _, params in batch:
                conn.execute(sql, params)
            conn.execute("COMMIT")
        except Exception:
            logger.warning("state batch of %d rows failed; retrying row by row", len(batch), exc_info=True)
            self._rollback(conn)
        else:
            self._writes += len(batch)
            return
        for sql, key, params in batch:
            try:
                conn.execute(sql, params)  # autocommit: one transaction per row
            except Exception:
                logger.error("state write for %s %r failed", *key, exc_info=True)
                self._write_errors += 1
            else:
                self._writes += 1

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                logger.error("state rollback failed", exc_info=True)
