"""What every executor is given (a :class:`Job`) and must do with it (:class:`Executor`).

The engine decides *what* a run does (the plan, the stage chain, the writer, the recorder);
an executor decides *where* it happens: moving work items from the plan to decoding, batches
through the chain, items to the writer and outcomes back to the recorder. Every guarantee that
does not depend on where things run (selection, per-item isolation, names, atomic writes,
recording after the rename) lives in those engine pieces, so each executor gets it for free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.config import Pipeline
    from imgflow.engine.chain import StageChain
    from imgflow.engine.plan import Plan
    from imgflow.engine.record import Recorder
    from imgflow.engine.results import RunOptions
    from imgflow.engine.writer import OutputWriter


@dataclass
class Job:
    """One run's pieces, built by :mod:`imgflow.run` under the output lock."""

    pipeline: Pipeline
    plan: Plan
    chain: StageChain
    writer: OutputWriter
    recorder: Recorder
    options: RunOptions
    echo: Callable[[str], None]


class Executor(Protocol):
    """Moves a job's work through its pieces; returns when every selected item is recorded."""

    name: str

    def execute(self, job: Job) -> None: ...
