"""Antialiased resampling that stays right for outputs one pixel wide (a helper for stage authors).

``torch.nn.functional.interpolate(..., antialias=True)`` (bilinear and bicubic) returns the same
value in every row when the output is one pixel wide and its height changes too: a resize of a
640x480 photo to 100x1 gives a constant column instead of each row's average (seen with torch
2.10-2.15 on the CPU; the other direction, one pixel high, is right). :func:`interpolate` works
around it by resizing the transposed image, which computes exactly the same filter, so every
caller gets the right pixels whatever the size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["interpolate"]


def interpolate(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear", antialias: bool = True,
                align_corners: bool | None = None) -> torch.Tensor:
    """``F.interpolate(x, size, mode, antialias)`` for ``(N, C, H, W)``, right also for width 1."""
    from torch.nn import functional as F

    h, w = int(size[0]), int(size[1])
    if antialias and w == 1 and h != x.shape[-2]:
        out = F.interpolate(x.transpose(-1, -2), size=[w, h], mode=mode, antialias=True, align_corners=align_corners)
        return out.transpose(-1, -2).contiguous()
    return F.interpolate(x, size=[h, w], mode=mode, antialias=antialias, align_corners=align_corners)
