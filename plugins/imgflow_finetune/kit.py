"""What the detector and segmenter trainers share with each other (and not with the core).

  splits        ``train/`` and ``val/`` (or ``test/``) top folders, a label file's own split, or a
                fixed fraction chosen by a hash of the path and the seed (the rule of
                ``imgflow.training.labels``, so every trainer splits one folder the same way);
  checkpoints   the final ``detector.pt`` / ``segmenter.pt``: plain tensors and values in one dict
                with a format name, read back with ``weights_only=True``;
  devices       tensors of an optimiser state moved to the CPU, mixed precision on CUDA;
  previews      a PNG written atomically into the output folder during training (the same temp
                naming as the engine's writer, so a killed run's leftovers are cleaned by the next).

No torch at import.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgflow import ConfigError, derive_seed
from imgflow.training.labels import SPLIT_FOLDERS

if TYPE_CHECKING:  # pragma: no cover
    import torch

TEMP_MARKER = ".imgflow-tmp-"  # the engine's temp-file marker: leftovers are removed by the next run


# ------------------------------------------------------------------------------ splits


def folder_split(relpath: str) -> str | None:
    """"train" or "val" when the file's top folder names a split (train/, val/, valid/, test/)."""
    top = relpath.split("/", 1)[0] if "/" in relpath else ""
    return SPLIT_FOLDERS.get(top.lower())


def split_of(relpath: str, *, seed: int, val_fraction: float, fixed: str | None = None) -> str:
    """The split of a labelled file: a split folder, else ``fixed`` (a label file's own column),
    else validation for a stable ``val_fraction`` of paths (hash of path and seed)."""
    by_folder = folder_split(relpath)
    if by_folder is not None:
        return by_folder
    if fixed is not None:
        return fixed
    draw = derive_seed("val-split", seed, relpath) / float(1 << 63)
    return "val" if draw < val_fraction else "train"


# ------------------------------------------------------------------------------ checkpoints


def checkpoint_bytes(doc: dict[str, Any]) -> bytes:
    """``torch.save`` of a checkpoint document whose ``state_dict`` is moved to float32 on the CPU."""
    import torch

    state = {k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()).clone()
             for k, v in doc["state_dict"].items()}
    buffer = io.BytesIO()
    torch.save({**doc, "state_dict": state}, buffer)
    return buffer.getvalue()


def read_checkpoint(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of a local file, its failures as ConfigErrors naming it."""
    import pickle

    import torch

    from imgflow.models import check_torch_version

    check_torch_version()
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise ConfigError(f"weights {path}: the file holds Python objects, not only tensors and plain "
                              "values, and is refused for safety (fix: save a plain state dict)") from exc
        raise ConfigError(f"weights {path}: not a readable PyTorch checkpoint (truncated or corrupt) "
                          "(fix: train again, or point 'weights' at another file)") from exc
    except Exception as exc:  # truncated zip, not a torch file at all
        raise ConfigError(f"weights {path}: not a readable PyTorch checkpoint ({type(exc).__name__}) "
                          "(fix: train again, or point 'weights' at another file)") from exc


def imgflow_checkpoint(source: Any, fmt: str, required: tuple[str, ...]) -> dict[str, Any] | None:
    """The checkpoint document when ``source`` is a local file written by an imgflow trainer in
    format ``fmt``; None for anything else (a registry name, a URL, a plain state dict). A file of
    that format that lacks a ``required`` key, or has another version, is an error."""
    if not isinstance(source, Path) or not source.is_file():
        return None
    try:
        doc = read_checkpoint(source)
    except ConfigError:  # not ours (a legacy pickle, a broken file): the plain loader reports it
        return None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        return None
    if doc.get("version") != 1:
        raise ConfigError(f"weights {source}: {fmt} format version {doc.get('version')!r}, this imgflow reads "
                          "version 1 (fix: retrain with this imgflow, or upgrade imgflow)")
    missing = [key for key in required if key not in doc]
    if missing:
        raise ConfigError(f"weights {source}: the {fmt} checkpoint lacks {', '.join(missing)} (fix: train again)")
    return doc


def load_except(net: Any, state: dict[str, Any], *, fresh: tuple[str, ...], ignore: tuple[str, ...] = (),
                subject: str, fix: str) -> list[str]:
    """Load a pretrained ``state`` into ``net`` but for the layers under ``fresh`` (a new head for
    new classes), skipping the file's keys under ``ignore``; returns the keys left fresh.

    Every other key of the network must be in the file with its shape (batch-norm step counters
    excepted), and the file may hold nothing else: a checkpoint of another architecture fails
    with the list of what differs.
    """
    own = net.state_dict()
    left = [k for k in own if k.startswith(fresh)]
    kept = {k: v for k, v in state.items() if not k.startswith(fresh) and not k.startswith(ignore)}
    unexpected = [k for k in kept if k not in own]
    missing = [k for k in own if k not in kept and k not in left and not k.endswith("num_batches_tracked")]
    shapes = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in kept.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]
    problems = [f"{len(x)} {what}: {', '.join(x[:5])}{' ...' if len(x) > 5 else ''}"
                for what, x in (("unexpected keys", unexpected), ("missing keys", missing),
                                ("shape mismatches", shapes)) if x]
    if problems:
        raise ConfigError(f"{subject}: the weights do not fit the network: " + "; ".join(problems) + f" (fix: {fix})")
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in kept.items()}, strict=False)
    return left


# ------------------------------------------------------------------------------ devices


def amp_dtype(device: torch.device, enabled: bool) -> Any:
    """bfloat16 where CUDA has it, float16 otherwise; None on the CPU or when disabled."""
    import torch

    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(dtype: Any) -> Any:
    """``torch.autocast`` on CUDA for ``dtype``, or nothing."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


# ------------------------------------------------------------------------------ previews


def png_bytes(image: torch.Tensor) -> bytes:
    """A (3, H, W) float image in [0, 1] (or uint8) as PNG bytes."""
    import numpy as np
    import torch
    from PIL import Image

    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = np.ascontiguousarray(image.cpu().permute(1, 2, 0).numpy())
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def write_atomic(root: Path, relpath: str, data: bytes) -> Path:
    """Write ``root/relpath`` through a temp file, fsync and rename: never a partial file."""
    target = Path(root) / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".{target.name}{TEMP_MARKER}{secrets.token_hex(6)}"
    try:
        with open(temp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, target)
    finally:
        if temp.exists():
            temp.unlink()
    return target


def tile(images: list[torch.Tensor], columns: int = 4, gap: int = 4) -> torch.Tensor:
    """Images of any sizes side by side in rows of ``columns``, on white, top-left aligned."""
    import torch

    rows = [images[i : i + columns] for i in range(0, len(images), columns)]
    heights = [max(int(im.shape[-2]) for im in row) for row in rows]
    width = max(sum(int(im.shape[-1]) for im in row) + gap * (len(row) - 1) for row in rows)
    canvas = torch.ones(3, sum(heights) + gap * (len(rows) - 1), width)
    top = 0
    for row, height in zip(rows, heights, strict=True):
        left = 0
        for im in row:
            h, w = int(im.shape[-2]), int(im.shape[-1])
            canvas[:, top : top + h, left : left + w] = im.detach().float().cpu()[:3]
            left += w + gap
        top += height + gap
    return canvas
