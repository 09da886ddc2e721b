"""Executors: where a run's work happens (DESIGN.md §2).

  base.py    the Job every executor receives and the Executor protocol
  local.py   this machine: decode worker processes, the chain on the main thread, writer threads

The engine (:mod:`imgflow.engine`) decides what a run does; an executor only moves work between
the engine's pieces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.executors.base import Executor


def get_executor(name: str) -> Executor:
    """The executor called ``name`` ("local")."""
    if name == "local":
        from imgflow.executors.local import LocalExecutor

        return LocalExecutor()
    raise ValueError(f"unknown executor {name!r}")
