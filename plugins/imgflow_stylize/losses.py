"""Losses of neural style transfer, per item, and the colour-preserving recombination.

Every function keeps the batch axis: a loss comes back as one value per image, shape (N,). A
batch is then optimised by summing the per-item losses, so each image's gradient is its own
(the images share no term) and Adam, being element-wise, moves every image exactly as if it were
optimised alone.

Definitions (SPEC §2, §3):
  gram(X)      X Xᵀ / (C·H·W) per image, X the (C, H·W) feature matrix;
  content      mean squared difference of feature maps;
  style        mean squared difference of Gram matrices;
  tv           0.5 · (mean |x[i+1, j] − x[i, j]| + mean |x[i, j+1] − x[i, j]|).
"""

from __future__ import annotations

import torch

# ITU-R BT.601 full-range RGB <-> YCbCr (the JPEG/JFIF convention): Y carries the luminance the
# eye reads detail from; Cb, Cr the colour.
_Y = (0.299, 0.587, 0.114)
_CB = (-0.168736, -0.331264, 0.5)
_CR = (0.5, -0.418688, -0.081312)


def gram(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C) Gram matrices normalised by C·H·W.

    Normalising by the element count makes the style loss of one layer independent of the image
    size, so a style measured at one size can be compared with an image at another.
    """
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,): the mean squared difference of each image's feature maps with its target's."""
    return (features - target.detach()).square().flatten(1).mean(dim=1)


def style_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """(N,): the mean squared difference of each image's Gram matrix with the style's.

    ``target_gram`` is (C, C) or (1 or N, C, C); one style broadcasts over the batch.
    """
    return (gram(features) - target_gram.detach()).square().flatten(1).mean(dim=1)


def tv_loss(images: torch.Tensor) -> torch.Tensor:
    """(N,): total variation, half the sum of the mean absolute vertical and horizontal steps."""
    vertical = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(dim=1)
    horizontal = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(dim=1)
    return 0.5 * (vertical + horizontal)


def _mix(matrix: tuple[tuple[float, float, float], ...], x: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(matrix, device=x.device, dtype=x.dtype)
    return torch.einsum("ij,...jhw->...ihw", m, x)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> Y in [0, 1], Cb and Cr centred on 0."""
    return _mix((_Y, _CB, _CR), rgb)


def ycbcr_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    """The exact inverse of :func:`rgb_to_ycbcr` (not clamped)."""
    inverse = torch.linalg.inv(torch.tensor((_Y, _CB, _CR), dtype=torch.float64))
    rows = tuple(tuple(float(v) for v in row) for row in inverse)
    return _mix(rows, ycc)


def preserve_colors(stylised: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """The stylised luminance (Y) with the original's colour (Cb, Cr), clamped to [0, 1].

    Style transfer only in luminance (Gatys et al., "Preserving color in neural artistic style
    transfer"; ``--preserve-color`` in fast-neural-style tools): the style brings its strokes
    and texture, the photo keeps its own colours, taken from the full-resolution original.
    """
    y = rgb_to_ycbcr(stylised)[..., :1, :, :]
    chroma = rgb_to_ycbcr(original)[..., 1:, :, :]
    return ycbcr_to_rgb(torch.cat([y, chroma], dim=-3)).clamp(0.0, 1.0)
