"""The reading side of the state store: manifest and summary exports, status, metrics, records.

Mixed into :class:`imgflow.state.store.StateStore`. Long reads stream from a snapshot on a
second connection (``_snapshot_connection``), so memory stays flat however many items exist and
the writer's lock stays free.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imgflow.errors import ConfigError
from imgflow.state.records import (
    ITEM_COLUMNS,
    ITEM_STATUSES,
    from_db_key,
    json_default,
    loads,
    row_record,
    run_row_dict,
)
from imgflow.state.textfiles import atomic_text_write

SUMMARY_FAILURES_CAP = 1000


class StoreReports:
    """Read-only queries and exports; needs the store's connection, lock and snapshot."""

    path: Path
    output_root: Path
    _conn: sqlite3.Connection
    _lock: threading.RLock

    def flush(self) -> None:  # pragma: no cover - provided by StateStore
        raise NotImplementedError

    def _snapshot_connection(self) -> sqlite3.Connection:  # pragma: no cover - provided by StateStore
        raise NotImplementedError

    @staticmethod
    def _item_counts(conn: sqlite3.Connection, run_id: str) -> dict[str, int]:
        """How many items a run recorded, by status (what is left of a killed run's work)."""
        counts = {status: 0 for status in ITEM_STATUSES}
        for status, n in conn.execute(
            "SELECT status, COUNT(*) FROM items WHERE run_id = ? GROUP BY status", (run_id,)
        ):
            counts[status] = n
        return counts

    def failed_inputs(self) -> Iterator[str]:
        """Relpaths of every failed item, sorted (for ``--retry-failed``); streamed."""
        self.flush()
        conn = self._snapshot_connection()
        try:
            cur = conn.execute("SELECT relpath FROM items WHERE status = 'failed' ORDER BY relpath")
            for (relpath,) in cur:
                yield from_db_key(relpath)
        finally:
            conn.close()

    # -- runs --------------------------------------------------------------------------------

    def iter_records(self, status: str | None = "done") -> Iterator[dict]:
        """Manifest records (dicts), sorted by input, streamed from a snapshot (flat memory).

        Run-level exports (a COCO JSON of every detection) are built from these, so they cover
        every item done so far, not only the items of the latest run.
        """
        self.flush()
        conn = self._snapshot_connection()
        try:
            if status is None:
                cur = conn.execute(f"SELECT {ITEM_COLUMNS} FROM items ORDER BY relpath")
            else:
                cur = conn.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE status = ? ORDER BY relpath",
                                   (status,))
            for row in cur:
                yield row_record(row).to_manifest()
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
                cur = conn.execute(f"SELECT {ITEM_COLUMNS} FROM items ORDER BY relpath")
                for row in cur:
                    line = json.dumps(
                        row_record(row).to_manifest(),
                        ensure_ascii=False,
                        separators=(",", ":"),
                        default=json_default,
                    )
                    fh.write(line)
                    fh.write("\n")
                    lines += 1
            finally:
                conn.close()
            for record in self.iter_metrics():  # training runs: epoch and step records follow
                fh.write(json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=json_default))
                fh.write("\n")
                lines += 1

        atomic_text_write(Path(path), write)
        return lines

    # -- training metrics

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
                       **loads(data, {})}
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
            summary = run_row_dict(dict(zip((d[0] for d in cur.description), row)))
            summary.pop("pipeline_text", None)  # the pipeline file itself; the HTML report shows it
            if summary["counts"] is None:  # still running, or killed before begin_run saw it
                summary["counts"] = self._item_counts(self._conn, run_id)
            total = self._conn.execute(
                "SELECT COUNT(*) FROM items WHERE run_id = ? AND status = 'failed'", (run_id,)
            ).fetchone()[0]
            failures = [
                {"input": from_db_key(r), "code": code, "message": message}
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
                run = run_row_dict(dict(zip(columns, row)))
                for key in ("message", "input_path", "pipeline_text"):
                    run.setdefault(key, None)
                yield run
        finally:
            conn.close()

    def run_options(self, run_id: str) -> dict | None:
        """The ``options`` a run recorded when it began (None: no such run)."""
        with self._lock:
            row = self._conn.execute("SELECT options FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return loads(row[0], {}) if row is not None else None

    def export_summary(self, run_id: str, path: Path) -> None:
        """Write :meth:`run_summary` as pretty JSON, atomically."""
        summary = self.run_summary(run_id)
        atomic_text_write(
            Path(path),
            lambda fh: fh.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n"),
        )

    def status_report(self, recent_runs: int = 5, failures: int = 20) -> dict:
        """Counts by status over all items, the latest runs and the latest failures."""
        self.flush()
        with self._lock:
            counts = {status: 0 for status in ITEM_STATUSES}
            by_status = "SELECT status, COUNT(*) FROM items GROUP BY status"
            for status, n in self._conn.execute(by_status):
                counts[status] = n
            # ``message`` (schema 3) is absent from an older store that status opens read-only
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(runs)")}
            message = ", message" if "message" in columns else ""
            cur = self._conn.execute(
                "SELECT run_id, started_at, finished_at, status, counts, exit_code, pipeline, "
                f"hostname, pid{message} FROM runs ORDER BY started_at DESC, run_id DESC LIMIT ?",
                (recent_runs,),
            )
            columns = [d[0] for d in cur.description]
            runs = [run_row_dict(dict(zip(columns, row))) for row in cur]
            recent_failures = [
                {"input": from_db_key(r), "code": code, "message": message, "run_id": rid,
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
                           "last_epoch": {"epoch": last[0], **loads(last[1], {})} if last else None})
        return report
