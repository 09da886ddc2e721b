"""``model.pt``: the classifier checkpoint ``train.classifier`` writes and ``classify`` reads.

Layout (format "imgflow-classifier", version 1), plain types and tensors only, so it is read
with ``torch.load(weights_only=True)``, never by unpickling code::

    {"format": "imgflow-classifier", "version": 1,
     "model": "resnet18",                       # the architecture (networks.ARCHITECTURES)
     "classes": ["brick", "grass"],             # index -> class name
     "state_dict": {name: tensor, ...},         # the whole network, head included, float32 on CPU
     "preprocess": {"resize": 256, "image_size": 224, "mean": [...], "std": [...],
                    "interpolation": "bilinear"},
     "epochs": 5}                               # epochs trained (informative)

A plain state-dict consumer can still use it: ``imgflow.models.load_state_dict`` unwraps the
``state_dict`` key.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgflow.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

FORMAT = "imgflow-classifier"
VERSION = 1
REQUIRED = ("model", "classes", "state_dict", "preprocess")


def to_bytes(model: str, classes: list[str], state_dict: dict[str, torch.Tensor],
             preprocess: dict[str, Any], epochs: int) -> bytes:
    """The checkpoint file's bytes (tensors detached, on the CPU, float32 where floating)."""
    import torch

    plain = {k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()).clone()
             for k, v in state_dict.items()}
    doc = {"format": FORMAT, "version": VERSION, "model": model, "classes": list(classes),
           "state_dict": plain, "preprocess": dict(preprocess), "epochs": int(epochs)}
    buffer = io.BytesIO()
    torch.save(doc, buffer)
    return buffer.getvalue()


def load(path: Path) -> dict[str, Any]:
    """Read and check a classifier checkpoint; every failure names the file and the fix.

    Read by the shared loader (``weights_only=True``), so a file holding Python objects or a
    damaged one gets the same message as for any other stage's weights.
    """
    from imgflow.models import load_checkpoint

    retrain = "(fix: point 'weights' at the model.pt that train.classifier wrote)"
    if not path.is_file():
        raise ConfigError(f"classifier weights {path}: no such file {retrain}")
    doc = load_checkpoint(path, "classifier weights")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(f"classifier weights {path}: not an imgflow classifier checkpoint (expected "
                          f"format {FORMAT!r}) {retrain}")
    if doc.get("version") != VERSION:
        raise ConfigError(f"classifier weights {path}: format version {doc.get('version')!r}, this imgflow "
                          f"reads version {VERSION} (fix: retrain with this imgflow, or upgrade imgflow)")
    missing = [key for key in REQUIRED if key not in doc]
    if missing:
        raise ConfigError(f"classifier weights {path}: missing {', '.join(missing)} {retrain}")
    if not isinstance(doc["classes"], list) or len(doc["classes"]) < 2:
        raise ConfigError(f"classifier weights {path}: 'classes' must list at least two names {retrain}")
    return doc
