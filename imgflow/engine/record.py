"""Recording: the one place where outcomes enter the state store during a run.

Only the process that holds the output lock records (the main process locally, the driver on
Ray), and only after an item's outputs are renamed into place. Each record also counts toward
the run's summary, moves the progress bar, and is offered to plugins' ``item_done`` hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.engine.progress import Progress
    from imgflow.errors import ItemError
    from imgflow.io.source import SourceFile
    from imgflow.state import StateStore


class Recorder:
    """Records done and failed items of one run; keeps the counts and this run's failures."""

    def __init__(self, store: StateStore, run_id: str, fingerprint: str, warn: Callable[[str], None]) -> None:
        self.store = store
        self.run_id = run_id
        self.fingerprint = fingerprint
        self.warn = warn
        # failed_before: of the skipped, the inputs that failed in an earlier run and are unchanged
        self.counts = {"done": 0, "failed": 0, "skipped": 0, "failed_before": 0}
        self.failures: list[dict[str, str]] = []
        self.progress: Progress | None = None
        self.expected: int | None = None  # items this run will record, once counted (bar total, ETA)

    def done(self, source: SourceFile, *, outputs: list[str], results: dict[str, Any], timings: dict[str, float],
             meta: dict[str, Any], content_hash: str | None) -> None:
        """An item whose outputs are all in place."""
        self._record(source, "done", outputs=outputs, error=None, results=results,
                     timings=timings, meta=meta, content_hash=content_hash)

    def failed(self, source: SourceFile, error: ItemError, timings: dict[str, float]) -> None:
        """An item that failed, with its reason code and message."""
        self.failures.append({"input": source.relpath, "code": error.code, "message": error.message})
        self._record(source, "failed", outputs=[], error={"code": error.code, "message": error.message},
                     results={}, timings=timings, meta={}, content_hash=None)

    def expect(self, total: int) -> None:
        """How many items this run will record, counted ahead of the run (any thread may call)."""
        self.expected = total

    def skipped(self, count: int) -> None:
        """Items this run left alone (already done, or not selected)."""
        self.counts["skipped"] = count

    def failed_before(self, count: int) -> None:
        """Of the skipped items, how many are known failures (failed earlier, unchanged since)."""
        self.counts["failed_before"] = count

    @property
    def has_failures(self) -> bool:
        """Whether any input of this pipeline is failed: in this run, or before and not retried.

        A rerun that skips known failures is not a success: the output folder still lacks those
        items, so cron gets exit code 1 until they are fixed, retried or excluded.
        """
        return bool(self.counts["failed"] or self.counts["failed_before"])

    def _record(self, source: SourceFile, status: str, **fields: Any) -> None:
        from imgflow.plugins import call_lifecycle
        from imgflow.state import ItemRecord

        record = ItemRecord(input=source.relpath, status=status, size=source.size, mtime_ns=source.mtime_ns,
                            fingerprint=self.fingerprint, run_id=self.run_id, **fields)
        self.store.record(record)
        self.counts[status] += 1
        if self.progress is not None:
            if self.expected is not None:
                self.progress.set_total(max(self.expected, self.counts["done"] + self.counts["failed"]))
            self.progress.advance(failed=self.counts["failed"] if status == "failed" else None)
        for message in call_lifecycle("item_done", record=record.to_manifest()):
            self.warn(message)
