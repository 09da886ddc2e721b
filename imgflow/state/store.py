"""The SQLite state store: the truth for "done" (DESIGN.md §2). This module is its writing side.

One file per output root, ``<output_root>/.imgflow/state.sqlite``, holds a row per input (keyed by
its path relative to the input root) and a row per run. The plan looks items up before decoding
them, so a cron rerun skips every input that is already done with the same pipeline fingerprint
and the same size and mtime; the recorder records each item once its outputs are renamed into
place. Only one process writes a store: the one that holds the output folder's lock (the driver,
on the Ray executor).

Durability. The database runs in WAL mode with ``synchronous=NORMAL``. In WAL mode NORMAL never
corrupts the database: a power cut can only lose the last few committed transactions, never
tear one. Losing them is harmless here because a record is written *after* its outputs were
renamed into place: an item whose record was lost simply runs again and atomically rewrites the
same output. FULL would add an fsync per commit for no gain in correctness. WAL also lets
``imgflow status`` read while a run writes, without either waiting for the other.

Buffering. Records are committed in one transaction every 256 records or 0.5 s, whichever comes
first, and on :meth:`StateStore.flush`. A crash loses at most the buffered records (see above for
why that is correct).

Threads. One connection guarded by one lock: the plan's feeder thread calls :meth:`lookup` while
the main thread calls :meth:`record`. Reads that stream many rows (manifest export,
``failed_inputs``) use a second, short-lived connection so they see one consistent snapshot and
never hold the lock while the caller works (:mod:`imgflow.state.reports`).

Paths that are not valid UTF-8. The walk gives a name that is not valid UTF-8 exactly as the
OS does (``os.fsdecode``: each undecodable byte a lone surrogate), so the bytes ``caf\xe9.jpg``
and a file literally named ``caf\\xe9.jpg`` are two keys. SQLite cannot store lone surrogates
as TEXT, so such a key (input or output path) is stored as a BLOB of its ``surrogatepass``
bytes: exact and reversible, and never equal to any TEXT key. Those rows sort after all text
keys in the manifest, where JSON writes the surrogates as ``\\udcXX`` escapes (Python's
``json.loads`` and ``os.fsencode`` give the exact bytes back).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from imgflow.errors import ConfigError, ImgflowError
from imgflow.state.bulk import select_priors
from imgflow.state.manifest_stamp import drop_stamp
from imgflow.state.records import (
    ITEM_STATUSES,
    RUN_STATUSES,
    ItemRecord,
    MetricRow,
    PriorItem,
    db_key,
    dumps,
    from_db_key,
    loads,
    new_run_id,
    now_iso,
    record_row,
    storable_text,
)
from imgflow.state.reports import StoreReports
from imgflow.state.schema import SCHEMA_VERSION, UPSERT_ITEM, migrate
from imgflow.state.statedir import STATE_DIR, checked_state_dir

STATE_FILE = "state.sqlite"

FLUSH_EVERY_RECORDS = 256
FLUSH_EVERY_SECONDS = 0.5
BUSY_TIMEOUT_MS = 10_000
STALE_RUN_MESSAGE = ("the process stopped without closing its run (killed, crashed or power loss); "
                     "the next run took over")


def select_prior(conn: sqlite3.Connection, key: str | bytes) -> PriorItem | None:
    """The committed row of ``key`` (see :func:`db_key`) as a PriorItem, or None."""
    found = conn.execute(
        "SELECT size, mtime_ns, content_hash, fingerprint, status, outputs, error_code, run_id "
        "FROM items WHERE relpath = ?",
        (key,),
    ).fetchone()
    if found is None:
        return None
    size, mtime_ns, content_hash, fingerprint, status, outputs, error_code, run_id = found
    return PriorItem(size, mtime_ns, content_hash, fingerprint, status, loads(outputs, []), error_code, run_id)


class SnapshotLookup:
    """Lookups from one read snapshot, taken when this object is made (see snapshot_lookup)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        conn.execute("SELECT 1 FROM items LIMIT 1").fetchall()  # pins the snapshot now

    def lookup(self, relpath: str) -> PriorItem | None:
        return select_prior(self._conn, db_key(relpath))

    def lookup_many(self, relpaths: Sequence[str]) -> list[PriorItem | None]:
        return select_priors(self._conn, relpaths)

    def close(self) -> None:
        self._conn.close()


class StateStoreError(ImgflowError):
    """The state database could not be written (disk full, permissions, I/O error)."""


class StateStore(StoreReports):
    """The per-output-root record of what is done, what failed, and which runs happened.

    ``StateStore(output_root)`` creates the store if needed (the run, which holds the output
    root's lock). ``StateStore(output_root, readonly=True)`` only reads (``imgflow status``, safe
    while a run writes) and refuses to create anything.
    """

    def __init__(self, output_root: Path, readonly: bool = False) -> None:
        self.output_root = Path(output_root)
        self.path = self.output_root / STATE_DIR / STATE_FILE
        self.readonly = readonly
        self.interrupted_runs_found = 0
        self._lock = threading.RLock()
        self._pending: dict[str | bytes, tuple] = {}
        self._timer: threading.Timer | None = None
        self._timer_error: BaseException | None = None
        self._closed = False
        self._conn = self._open()

    # -- opening ------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """Open (and for writers create and migrate) the database, with clear errors."""
        checked_state_dir(self.output_root)  # never a database reached through a symlink
        if self.readonly and not self.path.is_file():
            raise ConfigError(
                f"no imgflow state in {self.output_root}: has a pipeline written here? "
                f"(expected {self.path}; fix: pass the [output] path of a pipeline that has run)"
            )
        try:
            conn = self._connect(self.readonly)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise ConfigError(
                    f"{self.path}: state written by a newer imgflow (schema {version}, this "
                    f"version reads up to {SCHEMA_VERSION}); fix: upgrade imgflow"
                )
            if self.readonly:
                if version == 0:
                    conn.close()
                    raise ConfigError(
                        f"{self.path}: not an imgflow state store (empty schema); fix: point "
                        "`imgflow status` at a pipeline's output folder"
                    )
            else:
                self._enable_wal(conn)
                migrate(conn, version)
            return conn
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"{self.path}: cannot use the state database ({exc}); fix: check permissions "
                "and free space, or delete the file to start over (finished outputs are kept, "
                "but every input will run again)"
            ) from exc

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        """A connection with our settings; autocommit mode, transactions are explicit."""
        if readonly:
            conn = sqlite3.connect(
                self.path.resolve().as_uri() + "?mode=ro",
                uri=True,
                timeout=BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False,
                isolation_level=None,
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False,
                isolation_level=None,
            )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """WAL plus synchronous=NORMAL; see the module docstring for why that is durable enough."""
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise ConfigError(
                f"{self.path}: SQLite cannot use WAL journaling here (got {mode!r}); fix: put "
                "the output folder on a local disk (network shares often lack the shared "
                "memory WAL needs)"
            )
        conn.execute("PRAGMA synchronous = NORMAL")

    def _snapshot_connection(self) -> sqlite3.Connection:
        """A second connection for long reads: one consistent snapshot, the lock stays free."""
        conn = self._connect(readonly=True)
        conn.execute("BEGIN")
        return conn

    # -- context and lifetime ----------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Commit what is buffered and close. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            try:
                if not self.readonly:
                    self.flush()
            finally:
                self._cancel_timer()
                self._closed = True
                self._conn.close()

    def _check_writable(self) -> None:
        if self._closed:
            raise RuntimeError(f"state store {self.path} is closed")
        if self.readonly:
            raise RuntimeError(f"state store {self.path} was opened read-only")

    # -- items -------------------------------------------------------------------------------

    def lookup(self, relpath: str) -> PriorItem | None:
        """What an earlier (or this) run recorded for ``relpath``, or None if never seen."""
        key = db_key(relpath)
        with self._lock:
            row = self._pending.get(key)
            if row is not None:
                return PriorItem(row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), row[7], row[12])
            return select_prior(self._conn, key)

    def lookup_many(self, relpaths: Sequence[str]) -> list[PriorItem | None]:
        """:meth:`lookup` for many inputs at once, in order: one query per 500 (the plan's rerun
        path, see :mod:`imgflow.state.bulk`)."""
        with self._lock:
            found = select_priors(self._conn, relpaths)
            if self._pending:
                for i, relpath in enumerate(relpaths):
                    if db_key(relpath) in self._pending:
                        found[i] = self.lookup(relpath)
        return found

    def snapshot_lookup(self) -> SnapshotLookup:
        """A :meth:`lookup` that answers from the store as it is now, on its own connection, for
        a thread that must not see what this run records meanwhile (the progress bar's count)."""
        return SnapshotLookup(self._snapshot_connection())

    def output_owner(self, relpath: str) -> str | None:
        """The input whose recorded outputs include ``relpath`` (None if no input claims it)."""
        with self._lock:
            for row in self._pending.values():
                if relpath in json.loads(row[6]):
                    return from_db_key(row[0])
            found = self._conn.execute("SELECT input FROM outputs WHERE relpath = ?", (db_key(relpath),)).fetchone()
        return from_db_key(found[0]) if found else None

    def record(self, rec: ItemRecord) -> None:
        """Take one item's outcome (upsert); committed with others within 256 records or 0.5 s."""
        if rec.status not in ITEM_STATUSES:
            raise ValueError(f"item status must be one of {ITEM_STATUSES}, got {rec.status!r}")
        if rec.updated_at is None:
            rec.updated_at = now_iso()
        row = record_row(rec)
        with self._lock:
            self._check_writable()
            self._raise_timer_error()
            self._pending[row[0]] = row
            if len(self._pending) >= FLUSH_EVERY_RECORDS:
                self.flush()
            elif self._timer is None:
                self._timer = threading.Timer(FLUSH_EVERY_SECONDS, self._timed_flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        """Commit every buffered record in one transaction."""
        with self._lock:
            self._cancel_timer()
            self._raise_timer_error()
            if not self._pending or self.readonly:
                return
            rows = list(self._pending.values())

            def work(conn: sqlite3.Connection) -> None:
                conn.executemany(UPSERT_ITEM, rows)
                conn.executemany(
                    "INSERT OR REPLACE INTO outputs (relpath, input) VALUES (?, ?)",
                    [(db_key(out), row[0]) for row in rows for out in json.loads(row[6])],
                )

            drop_stamp(self.output_root)  # manifest.jsonl stops being current (manifest_stamp.py)
            self._write(work)
            self._pending.clear()

    def _timed_flush(self) -> None:
        """Timer thread: flush; an error is kept and raised to the next caller of record/flush."""
        with self._lock:
            if self._timer is threading.current_thread():  # a newer timer may have replaced us
                self._timer = None
            if self._closed:
                return
            try:
                self.flush()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self._timer_error = exc

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _raise_timer_error(self) -> None:
        if self._timer_error is not None:
            exc, self._timer_error = self._timer_error, None
            raise exc

    def _write(self, work: Callable[[sqlite3.Connection], object]) -> None:
        """Run ``work`` in one IMMEDIATE transaction; failures name the file and the fix."""
        with self._lock:
            self._check_writable()
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    work(self._conn)
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StateStoreError(
                    f"{self.path}: cannot write the state database ({exc}); fix: check free "
                    "space and permissions on that folder, then rerun (finished items are kept)"
                ) from exc

    def begin_run(
        self, *, pipeline: str, pipeline_path: str, fingerprint: str, options: dict,
        input_path: str | None = None, pipeline_text: str | None = None,
    ) -> str:
        """Start a run row and return its id.

        The run holds the output root's exclusive lock, so any other row still 'running' is
        from a run that was killed: those are marked 'interrupted' (with counts of what they
        recorded) and counted in ``interrupted_runs_found`` so the run sweeps temp files.
        """
        from imgflow import __version__

        self.flush()
        run_id = new_run_id()

        def work(conn: sqlite3.Connection) -> None:
            stale = [r for (r,) in conn.execute("SELECT run_id FROM runs WHERE status = 'running'")]
            for old in stale:
                conn.execute(
                    "UPDATE runs SET status = 'interrupted', counts = ?, message = ? WHERE run_id = ?",
                    (dumps(self._item_counts(conn, old)), STALE_RUN_MESSAGE, old),
                )
            self.interrupted_runs_found = len(stale)
            conn.execute(
                "INSERT INTO runs (run_id, started_at, pipeline, pipeline_path, fingerprint, "
                "options, imgflow_version, hostname, pid, status, input_path, pipeline_text) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?)",
                (
                    run_id,
                    now_iso(),
                    storable_text(pipeline),
                    storable_text(pipeline_path),
                    storable_text(fingerprint),
                    dumps(options),
                    __version__,
                    storable_text(socket.gethostname()),
                    os.getpid(),
                    storable_text(input_path),
                    storable_text(pipeline_text),
                ),
            )

        self._write(work)
        return run_id

    def finish_run(self, run_id: str, *, status: str, counts: dict, exit_code: int,
                   message: str | None = None) -> None:
        """Close a run row (after committing every buffered record).

        ``message`` says why a run that did not finish normally ended (error text, interrupt).
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, got {status!r}")
        self.flush()

        def work(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE runs SET finished_at = ?, status = ?, counts = ?, exit_code = ?, message = ? "
                "WHERE run_id = ?",
                (now_iso(), status, dumps(counts), int(exit_code), storable_text(message), run_id),
            )
            if cur.rowcount != 1:
                raise ValueError(f"{self.path}: no run {run_id!r} to finish")

        self._write(work)

    # -- reports -----------------------------------------------------------------------------

    def record_metrics(self, rows: list[MetricRow]) -> None:
        """Store epoch or step metrics in one transaction (replacing rows with the same key)."""
        if not rows:
            return
        drop_stamp(self.output_root)
        self._write(lambda conn: conn.executemany(
            "INSERT OR REPLACE INTO metrics (stage, kind, epoch, step, run_id, data) VALUES (?, ?, ?, ?, ?, ?)",
            [(r.stage, r.kind, r.epoch, r.step, r.run_id, dumps(r.data)) for r in rows]))

    def forget_metrics(self, stage: str, *, after_step: int = -1, from_epoch: int = 0) -> None:
        """Drop a stage's step rows after ``after_step`` and epoch rows from ``from_epoch`` on.

        A resumed run redoes everything after its checkpoint; a fresh start (the defaults)
        forgets the stage's history entirely.
        """
        drop_stamp(self.output_root)
        self._write(lambda conn: (
            conn.execute("DELETE FROM metrics WHERE stage = ? AND kind = 'step' AND step > ?", (stage, after_step)),
            conn.execute("DELETE FROM metrics WHERE stage = ? AND kind = 'epoch' AND epoch >= ?", (stage, from_epoch))))

