"""Executors: where a run's work happens (DESIGN.md §2).

  base.py    the Job every executor receives and the Executor protocol
  local.py   this machine: decode worker processes, the chain on the main thread, writer threads
  ray.py     a Ray cluster (Ray Data): decode actors, stage actors, results back to the driver
             (ray_cluster.py connects, ray_tasks.py holds what runs in the workers)

The engine (:mod:`imgflow.engine`) decides what a run does; an executor only moves work between
the engine's pieces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.executors.base import Executor


def get_executor(name: str) -> Executor:
    """The executor called ``name`` ("local" or "ray"); Ray is imported only when it runs."""
    if name == "local":
        from imgflow.executors.local import LocalExecutor

        return LocalExecutor()
    if name == "ray":
        from imgflow.executors.ray import RayExecutor

        return RayExecutor()
    raise ValueError(f"unknown executor {name!r}")
