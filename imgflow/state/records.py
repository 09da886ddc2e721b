"""What the state store holds, as Python values: item records, prior facts, metric rows.

Also the conversions between those values and SQLite rows (keys that are not valid UTF-8 become
BLOBs, JSON columns), shared by the writing side (:mod:`imgflow.state.store`) and the reading
side (:mod:`imgflow.state.reports`).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ITEM_STATUSES = ("done", "failed")
RUN_STATUSES = ("running", "finished", "interrupted", "error")


@dataclass
class PriorItem:
    """What the store knows about an input from an earlier run: enough to decide "skip"."""

    size: int
    mtime_ns: int
    content_hash: str | None
    fingerprint: str
    status: str
    outputs: list[str]
    # Why it failed and which run recorded it: a failure caused by a limit re-runs when that
    # limit changes (imgflow.engine.limits). Left out of equality: they are provenance, not facts.
    error_code: str | None = field(default=None, compare=False)
    run_id: str | None = field(default=None, compare=False)


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


def now_iso() -> str:
    """UTC timestamp in microseconds; ISO text sorts in time order, so SQL can ORDER BY it."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_run_id() -> str:
    """A run id that sorts by start time (to the second) and is unique thanks to a random tail."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def db_key(relpath: str) -> str | bytes:
    """A relpath's primary key: the text itself, or exact bytes when SQLite cannot store it."""
    if not isinstance(relpath, str):
        raise TypeError(f"relpath must be str, got {type(relpath).__name__}")
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:
        return relpath.encode("utf-8", "surrogatepass")
    return relpath


def from_db_key(value: str | bytes) -> str:
    """Inverse of :func:`db_key`."""
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


def storable_text(value: str | None) -> str | None:
    """Free text (messages, paths) made storable; lone surrogates become visible escapes."""
    if value is None:
        return None
    value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def json_default(obj: Any) -> Any:
    """Let stage results carry numpy scalars/arrays, tuples, sets and paths without crashing."""
    for attr in ("tolist", "item"):
        if hasattr(obj, attr):
            return getattr(obj, attr)()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    return str(obj)


def dumps(obj: Any) -> str:
    """Compact JSON for columns; ASCII-only so any text (even lone surrogates) round-trips."""
    return json.dumps(obj, separators=(",", ":"), default=json_default)


def loads(text: str | None, empty: Any) -> Any:
    return empty if text is None else json.loads(text)



ITEM_COLUMNS = (
    "relpath, size, mtime_ns, content_hash, fingerprint, status, outputs, error_code, "
    "error_message, results, timings, meta, run_id, updated_at"
)

def record_row(rec: ItemRecord) -> tuple:
    """An ItemRecord as the parameter tuple of ``_UPSERT``."""
    error = rec.error or {}
    return (
        db_key(rec.input),
        int(rec.size),
        int(rec.mtime_ns),
        storable_text(rec.content_hash),
        storable_text(rec.fingerprint),
        rec.status,
        dumps(list(rec.outputs)),
        storable_text(error.get("code")) if rec.error is not None else None,
        storable_text(error.get("message")) if rec.error is not None else None,
        dumps(rec.results or {}),
        dumps(rec.timings or {}),
        dumps(rec.meta or {}),
        storable_text(rec.run_id),
        rec.updated_at,
    )


def row_record(row: tuple) -> ItemRecord:
    """A row selected with ``ITEM_COLUMNS`` back into an ItemRecord."""
    (relpath, size, mtime_ns, content_hash, fingerprint, status, outputs, error_code,
     error_message, results, timings, meta, run_id, updated_at) = row  # fmt: skip
    error = None
    if error_code is not None or error_message is not None:
        error = {"code": error_code, "message": error_message}
    return ItemRecord(
        input=from_db_key(relpath),
        status=status,
        size=size,
        mtime_ns=mtime_ns,
        content_hash=content_hash,
        fingerprint=fingerprint,
        outputs=loads(outputs, []),
        error=error,
        results=loads(results, {}),
        timings=loads(timings, {}),
        meta=loads(meta, {}),
        run_id=run_id,
        updated_at=updated_at,
    )


def run_row_dict(row: dict) -> dict:
    """A ``runs`` row (column name -> value) with its JSON columns decoded."""
    out = dict(row)
    if "options" in out:
        out["options"] = loads(out["options"], {})
    out["counts"] = loads(out.get("counts"), None)
    return out


