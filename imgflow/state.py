"""The SQLite state store and manifest export: the truth for "done" (DESIGN.md §2).

One file per output root, ``<output_root>/.imgflow/state.sqlite``, holds a row per input (keyed by
its path relative to the input root) and a row per run. The runner looks items up before decoding
them, so a cron rerun skips every input that is already done with the same pipeline fingerprint
and the same size and mtime, and records each item once its outputs are renamed into place.

Durability. The database runs in WAL mode with ``synchronous=NORMAL``. In WAL mode NORMAL never
corrupts the database: a power cut can only lose the last few committed transactions, never
tear one. Losing them is harmless here because a record is written *after* its outputs were
renamed into place: an item whose record was lost simply runs again and atomically rewrites the
same output. FULL would add an fsync per commit for no gain in correctness. WAL also lets
``imgflow status`` read while a run writes, without either waiting for the other.

Buffering. Records are committed in one transaction every 256 records or 0.5 s, whichever comes
first, and on :meth:`StateStore.flush`. A crash loses at most the buffered records (see above for
why that is correct).

Threads. One connection guarded by one lock: the runner's feeder thread calls :meth:`lookup`
while the main thread calls :meth:`record`. Reads that stream many rows (manifest export,
``failed_inputs``) use a second, short-lived connection so they see one consistent snapshot and
never hold the lock while the caller works.

Paths that are not valid UTF-8. The relpaths the runner gives are meant to be UTF-8-safe text,
but a name decoded with ``surrogateescape`` contains lone surrogates, which SQLite cannot store
as TEXT. Such a key is stored as a BLOB of its ``surrogatepass`` bytes: exact and reversible, and
never equal to any TEXT key. Those rows sort after all text keys in the manifest.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from imgflow.errors import ConfigError, ImgflowError

STATE_DIR = ".imgflow"
STATE_FILE = "state.sqlite"
SCHEMA_VERSION = 3

FLUSH_EVERY_RECORDS = 256
FLUSH_EVERY_SECONDS = 0.5
BUSY_TIMEOUT_MS = 10_000
SUMMARY_FAILURES_CAP = 1000

ITEM_STATUSES = ("done", "failed")
RUN_STATUSES = ("running", "finished", "interrupted", "error")
STALE_RUN_MESSAGE = ("the process stopped without closing its run (killed, crashed or power loss); "
                     "the next run took over")


class StateStoreError(ImgflowError):
    """The state database could not be written (disk full, permissions, I/O error)."""


# --------------------------------------------------------------------------------------------
# records


@dataclass
class PriorItem:
    """What the store knows about an input from an earlier run: enough to decide "skip"."""

    size: int
    mtime_ns: int
    content_hash: str | None
    fingerprint: str
    status: str
    outputs: list[str]


@dataclass
class ItemRecord:
    """The outcome of one input in one run; becomes one row of ``items`` and one manifest line.

    ``error`` is ``{"code": ..., "message": ...}`` for failed items and None for done ones.
    ``updated_at`` is filled in by the store when the record is taken.
    """

    input: str
    status: str
    size: int
    mtime_ns: int
    content_hash: str | None
    fingerprint: str
    outputs: list[str]
    error: dict | None
    results: dict
    timings: dict
    meta: dict
    run_id: str
    updated_at: str | None = field(default=None)

    def to_manifest(self) -> dict:
        """The manifest line for this item, keys in a fixed, documented order."""
        return {
            "input": self.input,
            "status": self.status,
            "outputs": list(self.outputs),
            "error": self.error,
            "results": self.results,
            "timings": self.timings,
            "meta": self.meta,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "content_hash": self.content_hash,
            "fingerprint": self.fingerprint,
            "run_id": self.run_id,
            "updated_at": self.updated_at,
        }


# --------------------------------------------------------------------------------------------
# small helpers


@dataclass
class MetricRow:
    """One epoch's or one training step's metrics for a consuming stage."""

    stage: str
    kind: str  # "epoch" or "step"
    epoch: int
    step: int  # global training step (epoch rows: the step count at the epoch's end)
    run_id: str
    data: dict[str, Any]


def _now_iso() -> str:
    """UTC timestamp in microseconds; ISO text sorts in time order, so SQL can ORDER BY it."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _new_run_id() -> str:
    """A run id that sorts by start time (to the second) and is unique thanks to a random tail."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _key(relpath: str) -> str | bytes:
    """A relpath's primary key: the text itself, or exact bytes when SQLite cannot store it."""
    if not isinstance(relpath, str):
        raise TypeError(f"relpath must be str, got {type(relpath).__name__}")
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:
        return relpath.encode("utf-8", "surrogatepass")
    return relpath


def _unkey(value: str | bytes) -> str:
    """Inverse of :func:`_key`."""
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


def _text(value: str | None) -> str | None:
    """Free text (messages, paths) made storable; lone surrogates become visible escapes."""
    if value is None:
        return None
    value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _json_default(obj: Any) -> Any:
    """Let stage results carry numpy scalars/arrays, tuples, sets and paths without crashing."""
    for attr in ("tolist", "item"):
        if hasattr(obj, attr):
            return getattr(obj, attr)()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    return str(obj)


def _dumps(obj: Any) -> str:
    """Compact JSON for columns; ASCII-only so any text (even lone surrogates) round-trips."""
    return json.dumps(obj, separators=(",", ":"), default=_json_default)


def _loads(text: str | None, empty: Any) -> Any:
    return empty if text is None else json.loads(text)


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write a file so a reader sees the old one or the whole new one, never a torn one.

    Temp file in the same folder (so rename is atomic), fsync, rename, fsync of the folder (so
    the rename itself survives a power cut). The temp file is removed on any error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # backslashreplace: a lone surrogate inside a JSON string becomes the JSON escape \udcxx,
        # exactly what json.dumps(ensure_ascii=True) would write, so every line stays valid.
        with open(fd, "w", encoding="utf-8", errors="backslashreplace", newline="\n") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; some platforms cannot open folders, which is fine to ignore."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


# --------------------------------------------------------------------------------------------
# schema


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    """The first schema. Later versions add a function and bump SCHEMA_VERSION."""
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS items (
            relpath       TEXT PRIMARY KEY,
            size          INTEGER NOT NULL,
            mtime_ns      INTEGER NOT NULL,
            content_hash  TEXT,
            fingerprint   TEXT NOT NULL,
            status        TEXT NOT NULL CHECK (status IN ('done', 'failed')),
            outputs       TEXT NOT NULL DEFAULT '[]',
            error_code    TEXT,
            error_message TEXT,
            results       TEXT NOT NULL DEFAULT '{}',
            timings       TEXT NOT NULL DEFAULT '{}',
            meta          TEXT NOT NULL DEFAULT '{}',
            run_id        TEXT NOT NULL,
            updated_at    TEXT NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX IF NOT EXISTS items_run ON items (run_id, status)")
    conn.execute("CREATE INDEX IF NOT EXISTS items_status ON items (status, updated_at)")
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS runs (
            run_id          TEXT PRIMARY KEY,
            started_at      TEXT NOT NULL,
            finished_at     TEXT,
            pipeline        TEXT,
            pipeline_path   TEXT,
            fingerprint     TEXT,
            options         TEXT NOT NULL DEFAULT '{}',
            imgflow_version TEXT,
            hostname        TEXT,
            pid             INTEGER,
            status          TEXT NOT NULL
                            CHECK (status IN ('running', 'finished', 'interrupted', 'error')),
            counts          TEXT,
            exit_code       INTEGER
        )"""
    )
    conn.execute("CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at)")
    # Which input wrote each output path: two inputs that map to one output name (a.png and
    # a.jpg converted to JPEG) must not silently overwrite each other.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS outputs (
            relpath TEXT PRIMARY KEY,
            input   TEXT NOT NULL
        )"""
    )


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Training metrics: one row per (stage, epoch) and per training step.

    Keyed so that a resumed run rewriting the steps after its checkpoint replaces, never
    duplicates, what the killed run had logged.
    """
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS metrics (
            stage   TEXT NOT NULL,
            kind    TEXT NOT NULL CHECK (kind IN ('epoch', 'step')),
            epoch   INTEGER NOT NULL,
            step    INTEGER NOT NULL,
            run_id  TEXT NOT NULL,
            data    TEXT NOT NULL,
            PRIMARY KEY (stage, kind, epoch, step)
        )"""
    )


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    """What the HTML report shows of a run that the other columns cannot tell.

    ``message``: why a run ended with an error (its exception text) or was interrupted.
    ``input_path``: the input root it read (a report's "before" thumbnails come from there).
    ``pipeline_text``: the pipeline file as it was when the run started.
    """
    present = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    for column in ("message", "input_path", "pipeline_text"):
        if column not in present:  # idempotent, like the CREATE ... IF NOT EXISTS steps
            conn.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")


_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    0: _migrate_0_to_1, 1: _migrate_1_to_2, 2: _migrate_2_to_3}

_ITEM_COLUMNS = (
    "relpath, size, mtime_ns, content_hash, fingerprint, status, outputs, error_code, "
    "error_message, results, timings, meta, run_id, updated_at"
)
_UPSERT = f"""
    INSERT INTO items ({_ITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (relpath) DO UPDATE SET
        size = excluded.size, mtime_ns = excluded.mtime_ns,
        content_hash = excluded.content_hash, fingerprint = excluded.fingerprint,
        status = excluded.status, outputs = excluded.outputs,
        error_code = excluded.error_code, error_message = excluded.error_message,
        results = excluded.results, timings = excluded.timings, meta = excluded.meta,
        run_id = excluded.run_id, updated_at = excluded.updated_at
"""


def _record_row(rec: ItemRecord) -> tuple:
    """An ItemRecord as the parameter tuple of ``_UPSERT``."""
    error = rec.error or {}
    return (
        _key(rec.input),
        int(rec.size),
        int(rec.mtime_ns),
        _text(rec.content_hash),
        _text(rec.fingerprint),
        rec.status,
        _dumps(list(rec.outputs)),
        _text(error.get("code")) if rec.error is not None else None,
        _text(error.get("message")) if rec.error is not None else None,
        _dumps(rec.results or {}),
        _dumps(rec.timings or {}),
        _dumps(rec.meta or {}),
        _text(rec.run_id),
        rec.updated_at,
    )


def _row_record(row: tuple) -> ItemRecord:
    """A row selected with ``_ITEM_COLUMNS`` back into an ItemRecord."""
    (relpath, size, mtime_ns, content_hash, fingerprint, status, outputs, error_code,
     error_message, results, timings, meta, run_id, updated_at) = row  # fmt: skip
    error = None
    if error_code is not None or error_message is not None:
        error = {"code": error_code, "message": error_message}
    return ItemRecord(
        input=_unkey(relpath),
        status=status,
        size=size,
        mtime_ns=mtime_ns,
        content_hash=content_hash,
        fingerprint=fingerprint,
        outputs=_loads(outputs, []),
        error=error,
        results=_loads(results, {}),
        timings=_loads(timings, {}),
        meta=_loads(meta, {}),
        run_id=run_id,
        updated_at=updated_at,
    )


def _run_row_dict(row: dict) -> dict:
    """A ``runs`` row (column name -> value) with its JSON columns decoded."""
    out = dict(row)
    if "options" in out:
        out["options"] = _loads(out["options"], {})
    out["counts"] = _loads(out.get("counts"), None)
    return out


# --------------------------------------------------------------------------------------------
# the store


class StateStore:
    """The per-output-root record of what is done, what failed, and which runs happened.

    ``StateStore(output_root)`` creates the store if needed (the runner, which holds the output
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
                self._migrate(conn, version)
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

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        """Bring the schema up to SCHEMA_VERSION, one step per transaction."""
        while version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                _MIGRATIONS[version](conn)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

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
        key = _key(relpath)
        with self._lock:
            row = self._pending.get(key)
            if row is not None:
                return PriorItem(row[1], row[2], row[3], row[4], row[5], json.loads(row[6]))
            found = self._conn.execute(
                "SELECT size, mtime_ns, content_hash, fingerprint, status, outputs "
                "FROM items WHERE relpath = ?",
                (key,),
            ).fetchone()
        if found is None:
            return None
        size, mtime_ns, content_hash, fingerprint, status, outputs = found
        return PriorItem(size, mtime_ns, content_hash, fingerprint, status, _loads(outputs, []))

    def output_owner(self, relpath: str) -> str | None:
        """The input whose recorded outputs include ``relpath`` (None if no input claims it)."""
        with self._lock:
            for row in self._pending.values():
                if relpath in json.loads(row[6]):
                    return _unkey(row[0])
            found = self._conn.execute("SELECT input FROM outputs WHERE relpath = ?", (relpath,)).fetchone()
        return _unkey(found[0]) if found else None

    def record(self, rec: ItemRecord) -> None:
        """Take one item's outcome (upsert); committed with others within 256 records or 0.5 s."""
        if rec.status not in ITEM_STATUSES:
            raise ValueError(f"item status must be one of {ITEM_STATUSES}, got {rec.status!r}")
        if rec.updated_at is None:
            rec.updated_at = _now_iso()
        row = _record_row(rec)
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
                conn.executemany(_UPSERT, rows)
                conn.executemany(
                    "INSERT OR REPLACE INTO outputs (relpath, input) VALUES (?, ?)",
                    [(out, row[0]) for row in rows for out in json.loads(row[6])],
                )

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

    def failed_inputs(self) -> Iterator[str]:
        """Relpaths of every failed item, sorted (for ``--retry-failed``); streamed."""
        self.flush()
        conn = self._snapshot_connection()
        try:
            cur = conn.execute("SELECT relpath FROM items WHERE status = 'failed' ORDER BY relpath")
            for (relpath,) in cur:
                yield _unkey(relpath)
        finally:
            conn.close()

    # -- runs --------------------------------------------------------------------------------

    def begin_run(
        self, *, pipeline: str, pipeline_path: str, fingerprint: str, options: dict,
        input_path: str | None = None, pipeline_text: str | None = None,
    ) -> str:
        """Start a run row and return its id.

        The runner holds the output root's exclusive lock, so any other row still 'running' is
        from a run that was killed: those are marked 'interrupted' (with counts of what they
        recorded) and counted in ``interrupted_runs_found`` so the runner sweeps temp files.
        """
        from imgflow import __version__

        self.flush()
        run_id = _new_run_id()

        def work(conn: sqlite3.Connection) -> None:
            stale = [r for (r,) in conn.execute("SELECT run_id FROM runs WHERE status = 'running'")]
            for old in stale:
                conn.execute(
                    "UPDATE runs SET status = 'interrupted', counts = ?, message = ? WHERE run_id = ?",
                    (_dumps(self._item_counts(conn, old)), STALE_RUN_MESSAGE, old),
                )
            self.interrupted_runs_found = len(stale)
            conn.execute(
                "INSERT INTO runs (run_id, started_at, pipeline, pipeline_path, fingerprint, "
                "options, imgflow_version, hostname, pid, status, input_path, pipeline_text) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?)",
                (
                    run_id,
                    _now_iso(),
                    _text(pipeline),
                    _text(pipeline_path),
                    _text(fingerprint),
                    _dumps(options),
                    __version__,
                    _text(socket.gethostname()),
                    os.getpid(),
                    _text(input_path),
                    _text(pipeline_text),
                ),
            )

        self._write(work)
        return run_id

    @staticmethod
    def _item_counts(conn: sqlite3.Connection, run_id: str) -> dict[str, int]:
        """How many items a run recorded, by status (what is left of a killed run's work)."""
        counts = {status: 0 for status in ITEM_STATUSES}
        for status, n in conn.execute(
            "SELECT status, COUNT(*) FROM items WHERE run_id = ? GROUP BY status", (run_id,)
        ):
            counts[status] = n
        return counts

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
                (_now_iso(), status, _dumps(counts), int(exit_code), _text(message), run_id),
            )
            if cur.rowcount != 1:
                raise ValueError(f"{self.path}: no run {run_id!r} to finish")

        self._write(work)

    # -- reports -----------------------------------------------------------------------------

    def iter_records(self, status: str | None = "done") -> Iterator[dict]:
        """Manifest records (dicts), sorted by input, streamed from a snapshot (flat memory).

        Run-level exports (a COCO JSON of every detection) are built from these, so they cover
        every item done so far, not only the items of the latest run.
        """
        self.flush()
        conn = self._snapshot_connection()
        try:
            if status is None:
                cur = conn.execute(f"SELECT {_ITEM_COLUMNS} FROM items ORDER BY relpath")
            else:
                cur = conn.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE status = ? ORDER BY relpath",
                                   (status,))
            for row in cur:
                yield _row_record(row).to_manifest()
        finally:
            conn.close()

    def export_manifest(self, path: Path) -> int:
        """Write ``manifest.jsonl`` atomically: one line per item, sorted by input; line count.

        Streams from a cursor over a snapshot, so memory stays flat however many items exist.
        """
        self.flush()
        lines = 0

        def write(fh: Any) -> None:
            nonlocal lines
            conn = self._snapshot_connection()
            try:
                cur = conn.execute(f"SELECT {_ITEM_COLUMNS} FROM items ORDER BY relpath")
                for row in cur:
                    line = json.dumps(
                        _row_record(row).to_manifest(),
                        ensure_ascii=False,
                        separators=(",", ":"),
                        default=_json_default,
                    )
                    fh.write(line)
                    fh.write("\n")
                    lines += 1
            finally:
                conn.close()
            for record in self.iter_metrics():  # training runs: epoch and step records follow
                fh.write(json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=_json_default))
                fh.write("\n")
                lines += 1

        _atomic_write(Path(path), write)
        return lines

    # -- training metrics

    def record_metrics(self, rows: list[MetricRow]) -> None:
        """Store epoch or step metrics in one transaction (replacing rows with the same key)."""
        if not rows:
            return
        self._write(lambda conn: conn.executemany(
            "INSERT OR REPLACE INTO metrics (stage, kind, epoch, step, run_id, data) VALUES (?, ?, ?, ?, ?, ?)",
            [(r.stage, r.kind, r.epoch, r.step, r.run_id, _dumps(r.data)) for r in rows]))

    def forget_metrics(self, stage: str, *, after_step: int = -1, from_epoch: int = 0) -> None:
        """Drop a stage's step rows after ``after_step`` and epoch rows from ``from_epoch`` on.

        A resumed run redoes everything after its checkpoint; a fresh start (the defaults)
        forgets the stage's history entirely.
        """
        self._write(lambda conn: (
            conn.execute("DELETE FROM metrics WHERE stage = ? AND kind = 'step' AND step > ?", (stage, after_step)),
            conn.execute("DELETE FROM metrics WHERE stage = ? AND kind = 'epoch' AND epoch >= ?", (stage, from_epoch))))

    def iter_metrics(self, stage: str | None = None, kind: str | None = None) -> Iterator[dict]:
        """Metric records as manifest lines: ``{"record": kind, "stage", "epoch", "step", ...}``."""
        self.flush()
        clauses, args = [], []
        for column, value in (("stage", stage), ("kind", kind)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        conn = self._snapshot_connection()
        try:
            cur = conn.execute(f"SELECT stage, kind, epoch, step, run_id, data FROM metrics {where} "
                               "ORDER BY stage, kind, epoch, step", args)
            for stage_id, kind_, epoch, step, run_id, data in cur:
                yield {"record": kind_, "stage": stage_id, "epoch": epoch,
                       **({"step": step} if kind_ == "step" else {}), "run_id": run_id,
                       **_loads(data, {})}
        finally:
            conn.close()

    def run_summary(self, run_id: str) -> dict:
        """The run row, its counts and its failures (capped at 1000 listed, total given)."""
        self.flush()
        with self._lock:
            cur = self._conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,))
            row = cur.fetchone()
            if row is None:
                raise ConfigError(
                    f"{self.path}: no run {run_id!r}; fix: see `imgflow status "
                    f"{self.output_root}` for the run ids"
                )
            summary = _run_row_dict(dict(zip((d[0] for d in cur.description), row)))
            summary.pop("pipeline_text", None)  # the pipeline file itself; the report shows it
            if summary["counts"] is None:  # still running, or killed before begin_run saw it
                summary["counts"] = self._item_counts(self._conn, run_id)
            total = self._conn.execute(
                "SELECT COUNT(*) FROM items WHERE run_id = ? AND status = 'failed'", (run_id,)
            ).fetchone()[0]
            failures = [
                {"input": _unkey(r), "code": code, "message": message}
                for r, code, message in self._conn.execute(
                    "SELECT relpath, error_code, error_message FROM items "
                    "WHERE run_id = ? AND status = 'failed' ORDER BY relpath LIMIT ?",
                    (run_id, SUMMARY_FAILURES_CAP),
                )
            ]
        summary["failures"] = failures
        summary["failures_total"] = total
        summary["failures_truncated"] = total > len(failures)
        return summary

    def export_summary(self, run_id: str, path: Path) -> None:
        """Write :meth:`run_summary` as pretty JSON, atomically."""
        summary = self.run_summary(run_id)
        _atomic_write(
            Path(path),
            lambda fh: fh.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n"),
        )

    def items_marker(self) -> tuple[int, str | None]:
        """(number of items, latest ``updated_at``): changes whenever any item is recorded.

        Every record stamps ``updated_at`` and items are never deleted, so an unchanged marker
        means unchanged items; the HTML report uses it to skip re-reading them.
        """
        self.flush()
        with self._lock:
            count, latest = self._conn.execute("SELECT COUNT(*), MAX(updated_at) FROM items").fetchone()
        return int(count), latest

    def iter_runs(self, limit: int | None = None) -> Iterator[dict]:
        """Every run row (JSON columns decoded), newest first; at most ``limit`` of them.

        A store written before schema 3 and opened read-only has no ``message``,
        ``input_path`` or ``pipeline_text`` columns: those keys are then None.
        """
        self.flush()
        conn = self._snapshot_connection()
        try:
            cur = conn.execute("SELECT * FROM runs ORDER BY started_at DESC, run_id DESC LIMIT ?",
                               (-1 if limit is None else int(limit),))
            columns = [d[0] for d in cur.description]
            for row in cur:
                run = _run_row_dict(dict(zip(columns, row)))
                for key in ("message", "input_path", "pipeline_text"):
                    run.setdefault(key, None)
                yield run
        finally:
            conn.close()

    def status_report(self, recent_runs: int = 5, failures: int = 20) -> dict:
        """Counts by status over all items, the latest runs and the latest failures."""
        self.flush()
        with self._lock:
            counts = {status: 0 for status in ITEM_STATUSES}
            by_status = "SELECT status, COUNT(*) FROM items GROUP BY status"
            for status, n in self._conn.execute(by_status):
                counts[status] = n
            cur = self._conn.execute(
                "SELECT run_id, started_at, finished_at, status, counts, exit_code, pipeline, "
                "hostname, pid FROM runs ORDER BY started_at DESC, run_id DESC LIMIT ?",
                (recent_runs,),
            )
            columns = [d[0] for d in cur.description]
            runs = [_run_row_dict(dict(zip(columns, row))) for row in cur]
            recent_failures = [
                {"input": _unkey(r), "code": code, "message": message, "run_id": rid,
                 "updated_at": updated}
                for r, code, message, rid, updated in self._conn.execute(
                    "SELECT relpath, error_code, error_message, run_id, updated_at FROM items "
                    "WHERE status = 'failed' ORDER BY updated_at DESC, relpath LIMIT ?",
                    (failures,),
                )
            ]  # fmt: skip
            training = self._training_report()
        return {
            "store": str(self.path),
            "counts": counts,
            "total": sum(counts.values()),
            "runs": runs,
            "failures": recent_failures,
            "training": training,
        }

    def _training_report(self) -> list[dict]:
        """Per trainer: epochs and steps logged and the last epoch's metrics (training runs)."""
        has_table = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'metrics'").fetchone()
        if not has_table:  # a store from before training runs existed, opened read-only
            return []
        report = []
        for stage, epochs, steps in self._conn.execute(
                "SELECT stage, SUM(kind = 'epoch'), MAX(CASE WHEN kind = 'step' THEN step END) "
                "FROM metrics GROUP BY stage ORDER BY stage"):
            last = self._conn.execute(
                "SELECT epoch, data FROM metrics WHERE stage = ? AND kind = 'epoch' ORDER BY epoch DESC LIMIT 1",
                (stage,)).fetchone()
            report.append({"stage": stage, "epochs": int(epochs or 0), "steps": int(steps or 0),
                           "last_epoch": {"epoch": last[0], **_loads(last[1], {})} if last else None})
        return report
