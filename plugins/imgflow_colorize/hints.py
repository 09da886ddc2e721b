"""Simulated user hints for training SIGGRAPH17, as the paper draws them.

A network fine-tuned without hints would learn to ignore its hint planes; it keeps taking hints
only if it keeps seeing them. Per training image (Zhang et al. 2017, §3.3):

  how many   a geometric number of points: P(k) = (1 - p)^k · p with p = 1/8 (no hint one image
             in eight, seven on average), so the network also learns automatic colorization;
  where      each point's patch position from a Gaussian centred on the image with a standard
             deviation of a quarter of the free range, clipped to the image (users click on
             subjects, rarely at the borders);
  how big    a square patch whose side is uniform in 1..9 model pixels;
  what       the patch's mean true ab, written over the whole patch, and the mask set to 1 there.

The planes have the layout the ``colorize`` stage feeds (:meth:`Colorize.hint_planes`): ab / 110
on two planes, zero without a hint, and a 0/1 mask; so what the network trains on is what it is
given at inference. All draws come from the generator passed in (the item's own, seeded by the
pipeline seed, the stage, the item and the epoch), so a rerun draws the same hints.

Imports torch at import time; the trainer imports it lazily.
"""

from __future__ import annotations

import math

import torch

AB_NORM = 110.0


def hint_count(generator: torch.Generator, p: float) -> int:
    """A geometric number of points (failures before the first success, success probability p)."""
    if p >= 1.0:
        return 0
    u = float(torch.rand((), generator=generator))
    return math.floor(math.log1p(-u) / math.log1p(-p))


def simulate_hints(ab: torch.Tensor, generator: torch.Generator, *, p: float = 0.125, max_patch: int = 9,
                   min_points: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Hint planes for one image's true ab ``(2, S, S)`` in Lab units.

    Returns hint ab / 110 ``(2, S, S)``, the mask ``(1, S, S)`` and the number of points; at
    least ``min_points`` (validation uses 1 so that "with hints" always means something).
    """
    _, height, width = ab.shape
    hint_ab = torch.zeros_like(ab)
    mask = torch.zeros(1, height, width, dtype=ab.dtype, device=ab.device)
    count = max(min_points, hint_count(generator, p))
    for _ in range(count):
        side = int(torch.randint(1, min(max_patch, height, width) + 1, (), generator=generator))
        top = _gaussian_position(height - side + 1, generator)
        left = _gaussian_position(width - side + 1, generator)
        patch = ab[:, top:top + side, left:left + side]
        hint_ab[:, top:top + side, left:left + side] = patch.mean(dim=(1, 2), keepdim=True) / AB_NORM
        mask[:, top:top + side, left:left + side] = 1.0
    return hint_ab, mask, count


def _gaussian_position(free: int, generator: torch.Generator) -> int:
    """A start offset in [0, free - 1], drawn around the middle with σ = free / 4."""
    draw = free / 2.0 + float(torch.randn((), generator=generator)) * free / 4.0
    return int(min(max(int(draw), 0), free - 1))
