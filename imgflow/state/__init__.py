"""Recording: the SQLite state store (the truth for "done"), its exports, and the output lock.

  store.py      StateStore: items, runs and metrics written by the one process holding the lock
  reports.py    its reading side: manifest.jsonl, run-summary.json, status, metrics
  records.py    ItemRecord, PriorItem, MetricRow and their row conversions
  schema.py     tables and migrations (PRAGMA user_version)
  textfiles.py  atomic streaming writes of text files
  lock.py       the kernel lock that makes one run per output folder

This package imports no torch.
"""

from __future__ import annotations

from imgflow.state.lock import LockHolder, OutputLock, lock_holder
from imgflow.state.records import ItemRecord, MetricRow, PriorItem
from imgflow.state.schema import SCHEMA_VERSION
from imgflow.state.store import STATE_DIR, STATE_FILE, StateStore, StateStoreError

__all__ = [
    "SCHEMA_VERSION",
    "STATE_DIR",
    "STATE_FILE",
    "ItemRecord",
    "LockHolder",
    "MetricRow",
    "OutputLock",
    "PriorItem",
    "StateStore",
    "StateStoreError",
    "lock_holder",
]
