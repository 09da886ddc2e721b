"""Training checkpoints: where a training run stands, saved so a killed run resumes exactly.

``<output>/checkpoints/<stage id>.pt`` holds the trainer's ``state_dict()``, the torch, CUDA and
Python RNG states and the :class:`Cursor` (epoch, position in the epoch's order, step). It is
written atomically after every epoch and every ``[run] checkpoint_every`` steps, and read back
with ``weights_only=True`` like every checkpoint imgflow loads.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgflow.errors import ConfigError

CHECKPOINT_FORMAT = "imgflow-training-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"


@dataclass
class Cursor:
    """Where a training run stands: the next epoch, files of its order done, steps taken."""

    epoch: int = 0
    position: int = 0
    step: int = 0
    finished: bool = False


def training_fingerprint(pipeline_fingerprint: str, batch_size: int) -> str:
    """The pipeline fingerprint plus the batch size: for training it changes the result."""
    return hashlib.sha256(f"{pipeline_fingerprint}:{batch_size}".encode()).hexdigest()[:16]


def checkpoint_relpath(stage_id: str) -> str:
    return f"{CHECKPOINT_DIR}/{stage_id}.pt"


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The saved checkpoint document, or None when there is none; unreadable is a ConfigError."""
    if not path.exists():
        return None
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path}: cannot read the training checkpoint ({type(exc).__name__}: {exc}) "
                          "(fix: delete it, or rerun with --force to start the training over)") from exc
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: not an imgflow training checkpoint (fix: move it away, or rerun "
                          "with --force to start the training over)")
    return saved


def checkpoint_bytes(fingerprint: str, stage_id: str, cursor: Cursor, stage_state: dict[str, Any]) -> bytes:
    """A checkpoint document (with the current RNG states) serialised for an atomic write."""
    import torch

    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    doc = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "fingerprint": fingerprint,
           "stage_id": stage_id, "cursor": dict(vars(cursor)), "rng": rng, "stage": stage_state}
    buffer = io.BytesIO()
    torch.save(doc, buffer)
    return buffer.getvalue()


def restore_rng(rng: dict[str, Any]) -> None:
    """Put the RNG states a checkpoint saved back in place."""
    import torch

    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(_python_state(rng["python"]))


def _python_state(state: Any) -> tuple:
    """random.getstate() comes back from torch.load as lists; setstate wants tuples."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
