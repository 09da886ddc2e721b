"""Training runs: a consuming stage fed epoch after epoch, with exact resume (README: Training runs).

  loop.py        TrainingRun: epochs, batches, upstream stages, the trainer protocol, metrics
  plan.py        which files train and validate, and each epoch's order
  checkpoint.py  what a checkpoint holds and how it is read back safely
  metrics.py     metrics.csv, steps.csv and the curves (metrics.png)
  labels.py      class labels and splits from folders or a CSV, for trainers
  trainer_state.py  a trainer's optimiser step and resumable state (network, optimiser, schedule, scaler)

Built on the engine's public pieces (plan walk, stage chain, recorder, writer), never on an
executor's internals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.training.loop import TrainingRun

__all__ = ["TrainingRun"]


def __getattr__(name: str) -> Any:
    if name == "TrainingRun":  # lazily: plugins import imgflow.training.labels without the loop
        from imgflow.training.loop import TrainingRun

        return TrainingRun
    raise AttributeError(name)
