"""The state database's schema and its migrations, one function per version step.

``PRAGMA user_version`` holds the version; a store opened by a newer imgflow is refused, an older
one is upgraded by the next writer (each step in its own transaction).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from imgflow.state.records import ITEM_COLUMNS

SCHEMA_VERSION = 3



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


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    0: _migrate_0_to_1, 1: _migrate_1_to_2, 2: _migrate_2_to_3}

UPSERT_ITEM = f"""
    INSERT INTO items ({ITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (relpath) DO UPDATE SET
        size = excluded.size, mtime_ns = excluded.mtime_ns,
        content_hash = excluded.content_hash, fingerprint = excluded.fingerprint,
        status = excluded.status, outputs = excluded.outputs,
        error_code = excluded.error_code, error_message = excluded.error_message,
        results = excluded.results, timings = excluded.timings, meta = excluded.meta,
        run_id = excluded.run_id, updated_at = excluded.updated_at
"""


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring the schema from ``version`` up to SCHEMA_VERSION, one step per transaction."""
    while version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](conn)
            version += 1
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
