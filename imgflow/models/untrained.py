"""Untrained weights: ``weights = "random"`` and the checkpoints ``imgflow models random`` writes.

Trying a pipeline offline should not need a 137 MB download or a line of Python, so every
model-using stage accepts ``weights = "random"`` (a seeded random initialisation), and
``imgflow models random NAME`` writes a random-weights checkpoint with the layout of any
registered model. Outputs made that way mean nothing, so they are labelled wherever a person
looks: ``"weights": "... (untrained)"`` in the manifest, and the run's summary line names the
stages that ran on untrained weights.

How the label travels: a stage's :meth:`~imgflow.Stage.fingerprint` facts carry
``"untrained": True`` (:func:`random_fingerprint`, or :func:`imgflow.models.weights_fingerprint`
for a checkpoint file that holds :data:`MARKER`); the engine reads the facts for the summary
line and stages label their manifest results with :func:`weights_label`.

A marked checkpoint is ``{"state_dict": {...}, "imgflow_untrained": {"from": NAME, "seed": S}}``:
the shared loader unwraps ``state_dict`` as for any training checkpoint, so it loads through the
same path (``weights_only=True``, key and shape checks) as the real weights. Recognising the
marker reads the checkpoint's small ``data.pkl`` record as bytes: no torch, no unpickling.

torch is imported only to write a checkpoint.
"""

from __future__ import annotations

import os
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.models.spec import ModelSpec

RANDOM = "random"
MARKER = "imgflow_untrained"
# The marker key as pickle protocol 2 writes a str (BINUNICODE: 'X', 4-byte length, UTF-8).
_PICKLED_MARKER = b"X" + len(MARKER).to_bytes(4, "little") + MARKER.encode()
UNTRAINED = "untrained"


def random_fingerprint(seed: int) -> dict[str, Any]:
    """The fingerprint facts of ``weights = "random"`` initialised from ``seed``."""
    return {"weights": f"random@{seed}", UNTRAINED: True}


def weights_label(facts: Mapping[str, Any]) -> str:
    """What a stage records as ``weights`` in its manifest results: the fingerprint's weights,
    with ``(untrained)`` after it when they are a random initialisation."""
    label = str(facts.get("weights", ""))
    return f"{label} (untrained)" if facts.get(UNTRAINED) else label


def says_untrained(facts: Any) -> bool:
    """True when fingerprint facts (nested dicts and lists) mark any weights as untrained."""
    if isinstance(facts, Mapping):
        return facts.get(UNTRAINED) is True or any(says_untrained(v) for v in facts.values())
    if isinstance(facts, list | tuple):
        return any(says_untrained(v) for v in facts)
    return False


def is_untrained_file(path: Path) -> bool:
    """True when ``path`` is a checkpoint written by ``imgflow models random`` (cheap: reads the
    zip's ``data.pkl`` record as bytes; any unreadable or legacy file answers False)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            return bool(names) and _PICKLED_MARKER in archive.read(names[0])
    except (OSError, zipfile.BadZipFile, KeyError, ValueError):
        return False


def default_output(spec: ModelSpec) -> Path:
    """``<name>-random.pth`` in the current folder."""
    return Path(f"{spec.name}-random.pth")


def save_random_checkpoint(spec: ModelSpec, out: Path, seed: int = 0) -> Path:
    """Write a random-weights checkpoint with ``spec``'s layout to ``out``; return ``out``.

    The network comes from ``spec.layout`` with torch's RNG seeded by ``seed`` (the global RNG
    is left as it was), so the same command writes the same tensors. Written to a temporary
    file beside ``out`` and renamed, so ``out`` never holds half a checkpoint.
    """
    import torch

    from imgflow.errors import ConfigError

    if spec.layout is None:
        raise ConfigError(f"model '{spec.name}': its plugin gives no network layout, so no random checkpoint "
                          "can be made for it (fix: use weights = \"random\" in the stage if it has that, or "
                          "ask the plugin's authors to add layout= to its ModelSpec)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = spec.layout()
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    doc = {"state_dict": state, MARKER: {"from": spec.name, "seed": int(seed),
                                         "note": "random weights for trying things out; outputs mean nothing"}}
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{out} is a folder (fix: give a file name, e.g. {out / default_output(spec)})")
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(doc, tmp)
        os.replace(tmp, out)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc} (fix: choose a writable place with -o)") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return out
