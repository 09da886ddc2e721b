"""Telling a run that is still going from one that was killed, without waiting for the next run.

A run's row says ``running`` from its start until it closes the row. A run killed outright
(SIGKILL, the OOM killer, a power cut) never closes it; the next run on the folder marks it
``interrupted`` when it starts. Until then the lock tells the truth: a live run holds the output
folder's lock (a kernel lock, dropped when its holder dies), so a ``running`` row with no live
holder behind it belongs to a dead run. :func:`settle_dead_runs` shows such rows as
``interrupted``, with a message saying why; it only changes what is reported, never the store.

This module does not import torch.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from imgflow.state.lock import lock_holder

DEAD_RUN_MESSAGE = ("killed before it could finish (SIGKILL, out of memory or power loss): no process "
                    "holds the output folder's lock; finished items are kept, and the next run "
                    "cleans up and does the rest")


def settle_dead_runs(runs: list[dict[str, Any]], root: Path) -> list[dict[str, Any]]:
    """``runs`` (status report rows) with every dead ``running`` row shown as ``interrupted``.

    A row is dead when no process holds the lock, or when the holder is another process on this
    host. Rows are changed in place and returned; ``message`` says what happened.
    """
    running = [run for run in runs if run.get("status") == "running"]
    if not running:
        return runs
    holder = lock_holder(root)
    for run in running:
        alive = holder is not None and (holder.pid is None or holder.pid == run.get("pid")
                                        or (holder.host and holder.host != socket.gethostname()))
        if not alive:
            run["status"] = "interrupted"
            run["message"] = DEAD_RUN_MESSAGE
    return runs
