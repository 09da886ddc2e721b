"""The validation strip ``train.colorizer`` writes after every epoch: grey | predicted | truth.

A loss curve says that training moves; only pictures say whether the colours look right. One
row per validation picture (the first ``limit`` of the epoch, which come in name order, so the
rows are the same pictures every epoch): its luminance alone, the network's colours on that
luminance, and the true colours, each at most ``TILE`` pixels wide.

The training protocol has no per-epoch artefacts, so the trainer writes the file itself, with the
same temp-file, fsync and rename discipline as the engine; a rerun of an epoch after a kill
writes the same bytes again. Imports torch at import time; the trainer imports it lazily.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from torch.nn import functional as F

from imgflow_colorize import lab

TILE = 128
GAP = 2


class ValidationStrip:
    """Tiles of up to ``limit`` validation pictures, kept as small uint8 arrays."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def clear(self) -> None:
        self.rows = []

    def add(self, lab_small: torch.Tensor, predicted_rgb: torch.Tensor, truth_rgb: torch.Tensor) -> None:
        """Keep the first pictures of a validation batch while there is room."""
        room = self.limit - len(self.rows)
        if room <= 0:
            return
        l_only = lab_small[:room].clone()
        l_only[:, 1:] = 0
        grey = lab.lab2rgb(l_only)
        for tiles in zip(grey, predicted_rgb[:room], truth_rgb[:room], strict=True):
            self.rows.append(tuple(_tile(t) for t in tiles))  # type: ignore[arg-type]

    def png(self) -> bytes | None:
        """The strip as PNG bytes (None without rows)."""
        from PIL import Image

        if not self.rows:
            return None
        side = self.rows[0][0].shape[0]
        canvas = np.full((len(self.rows) * (side + GAP) - GAP, 3 * (side + GAP) - GAP, 3), 255, dtype=np.uint8)
        for row, tiles in enumerate(self.rows):
            for col, tile in enumerate(tiles):
                top, left = row * (side + GAP), col * (side + GAP)
                canvas[top:top + side, left:left + side] = tile
        out = io.BytesIO()
        Image.fromarray(canvas).save(out, format="PNG", optimize=True)
        return out.getvalue()


def _tile(image: torch.Tensor) -> np.ndarray:
    """``(3, S, S)`` in [0, 1] -> an S x S x 3 uint8 array, shrunk to TILE pixels if larger."""
    x = image.detach().float().unsqueeze(0)
    if x.shape[-1] > TILE:
        x = F.interpolate(x, size=(TILE, TILE), mode="bilinear", antialias=True, align_corners=False)
    return (x[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()

