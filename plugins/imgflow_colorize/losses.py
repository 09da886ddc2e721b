"""Losses and quality measures for fine-tuning the colorizers (SPEC §1 "Training facts").

  ECCV16      cross-entropy between the predicted 313-bin distribution and the soft-encoded
              true ab (see :mod:`.bins`), weighted per pixel by the rebalancing weight of the
              pixel's nearest bin; computed on the network's 1/4-resolution grid;
  SIGGRAPH17  smooth-L1 (Huber, δ = 1 ab unit) between the regressed and the true ab;
  both        the mean ab error in Lab units and Hasler & Süsstrunk's colourfulness, which tell a
              person what the losses do not: how far the colours are, and how vivid.

Every function returns one value per image ``(N,)``: validation batches may be uneven, and the
epoch means are taken per image.

Imports torch at import time; the trainer imports it lazily.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from imgflow_colorize.bins import soft_encode

ECCV16_STRIDE = 4  # ECCV16 predicts its distribution at 1/4 of the input resolution


def cell_means(ab: torch.Tensor, stride: int = ECCV16_STRIDE) -> torch.Tensor:
    """True ab on ECCV16's output grid: the mean of each ``stride`` x ``stride`` cell.

    The network's x4 bilinear upsampling (align_corners=False) centres each low-resolution
    prediction on the middle of such a cell, so the cell mean is the colour it should predict.
    """
    return F.avg_pool2d(ab, stride)


def classification_loss(logits: torch.Tensor, ab_small: torch.Tensor, centres: torch.Tensor,
                        class_weights: torch.Tensor, *, neighbours: int, sigma: float,
                        temperature: float) -> torch.Tensor:
    """Rebalanced soft cross-entropy per image, ``(N,)``.

    ``logits`` ``(N, Q, h, w)`` are model8's outputs; ``ab_small`` ``(N, 2, h, w)`` the true ab in
    Lab units on the same grid. The training distribution is softmax(temperature * logits), so
    the network's own softmax(logits), which ``colorize`` decodes, is the annealed distribution
    (temperature T sharpens it as the paper's annealed mean does; T = 1: no annealing).
    """
    n, q, h, w = logits.shape
    log_p = F.log_softmax(logits.float() * temperature, dim=1).permute(0, 2, 3, 1).reshape(-1, q)
    index, weights = soft_encode(ab_small.permute(0, 2, 3, 1).reshape(-1, 2), centres, neighbours, sigma)
    cross_entropy = -(weights * log_p.gather(1, index)).sum(dim=1)
    pixel_weights = class_weights.to(device=logits.device, dtype=torch.float32)[index[:, 0]]
    return (pixel_weights * cross_entropy).view(n, h * w).mean(dim=1)


def regression_loss(pred_ab: torch.Tensor, true_ab: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 (Huber with δ = 1 ab unit) per image, ``(N,)``; both in Lab units."""
    return F.smooth_l1_loss(pred_ab.float(), true_ab.float(), beta=1.0, reduction="none").flatten(1).mean(dim=1)


def ab_error(pred_ab: torch.Tensor, true_ab: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance in the ab plane per image, ``(N,)``, in Lab units."""
    return (pred_ab.float() - true_ab.float()).square().sum(dim=1).sqrt().flatten(1).mean(dim=1)


def colourfulness(rgb: torch.Tensor) -> torch.Tensor:
    """Hasler & Süsstrunk's colourfulness per image, ``(N,)``, of sRGB ``(N, 3, H, W)`` in [0, 1].

    M = sqrt(σ_rg² + σ_yb²) + 0.3·sqrt(μ_rg² + μ_yb²) with rg = R - G, yb = (R + G)/2 - B on the
    0..255 scale: about 0 for grey, 15 slightly, 33 moderately, 59 quite, 82+ extremely colourful.
    """
    r, g, b = (rgb.float() * 255.0).unbind(dim=1)
    rg = (r - g).flatten(1)
    yb = (0.5 * (r + g) - b).flatten(1)
    spread = (rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False)).sqrt()
    mean = (rg.mean(dim=1).square() + yb.mean(dim=1).square()).sqrt()
    return spread + 0.3 * mean
