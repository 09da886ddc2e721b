"""Decode and memory limits, and which failures they caused: a changed limit re-runs those items.

Limits change whether an item can be processed, never the bytes it produces, so they stay out of
the pipeline fingerprint (a raised ``max_pixels`` must not redo every finished image). But an
item that *failed because of* a limit would keep its verdict forever after the limit was fixed.
So each run records the limits it ran under (in its row's ``options``), and the plan re-runs a
failed item when the one limit behind its reason code differs now from the run that failed it.
A run recorded before limits were kept counts as "unknown", so its limit failures run again once.

This module imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.config import Pipeline

#: Reason code -> the ``[run]`` limit that decides it. ``decoder_crash`` is there because a
#: decoder over its address-space cap may die instead of raising MemoryError.
LIMIT_OF_CODE: dict[str, str] = {
    "file_too_large": "max_file_mb",
    "too_many_pixels": "max_pixels",
    "memory_limit": "worker_memory_mb",
    "decoder_crash": "worker_memory_mb",
    "decoder_timeout": "decode_timeout_s",
    "memory_budget": "max_memory_mb",
}


def run_limits(pipeline: Pipeline) -> dict[str, Any]:
    """The limits a run of ``pipeline`` works under (the memory budget as resolved for this machine)."""
    from imgflow.memory import budget_mb

    run = pipeline.run
    return {"max_pixels": run.max_pixels, "max_file_mb": run.max_file_mb,
            "worker_memory_mb": run.worker_memory_mb, "decode_timeout_s": run.decode_timeout_s,
            "max_memory_mb": budget_mb(run.max_memory_mb)}


def limit_changed(code: str | None, then: dict[str, Any] | None, now: dict[str, Any]) -> bool:
    """True when ``code`` is a limit failure and its limit differs from the one it failed under.

    ``then`` is None (or lacks the key) for a run recorded before limits were kept: unknown, so
    the item is retried once.
    """
    name = LIMIT_OF_CODE.get(code or "")
    if name is None:
        return False
    if not then or name not in then:
        return True
    return then[name] != now.get(name)
