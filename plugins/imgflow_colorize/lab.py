"""sRGB <-> CIE Lab (D65, 2° observer) in torch, batched and on whatever device the tensors are.

The colorizers were trained on Lab computed by scikit-image, so these follow the same published
formulas and constants (sRGB transfer curve, the sRGB/XYZ matrix as skimage lists it, D65 white
(0.95047, 1.0, 1.08883), CIE's 0.008856 / 7.787 linear segment) to stay within a fraction of a
Delta-E of ``skimage.color.rgb2lab`` / ``lab2rgb``. Doing it in torch keeps full-resolution
conversion on the GPU and avoids a numpy round trip per image.

Tensors are ``(..., 3, H, W)``: the colour axis is third from the end, so both one image
``(3, H, W)`` and a batch ``(N, 3, H, W)`` work. Computation is in float32 (or the input's
floating dtype when it is float64).
"""

from __future__ import annotations

import torch

# Linear sRGB -> XYZ (rows X, Y, Z), the matrix scikit-image uses.
XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
D65_WHITE = (0.95047, 1.0, 1.08883)
EPSILON = 0.008856  # (6/29)^3 as CIE rounds it: below it the cube root becomes linear
KAPPA_SLOPE = 7.787
LINEAR_OFFSET = 16.0 / 116.0
FINV_KNEE = 0.2068966  # 6/29: the same knee seen from the Lab side


def _float(x: torch.Tensor) -> torch.Tensor:
    """Integer or half tensors would lose the precision 16-bit inputs need; compute in float32."""
    return x if x.dtype == torch.float64 else x.to(torch.float32)


def _matrices(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The RGB->XYZ matrix and its exact inverse (computed in float64, then cast), on ``device``."""
    fwd = torch.tensor(XYZ_FROM_RGB, dtype=torch.float64)
    inv = torch.linalg.inv(fwd)
    return fwd.to(device=device, dtype=dtype), inv.to(device=device, dtype=dtype)


def _apply(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Multiply the colour axis (dim -3) of ``x`` by a 3x3 matrix."""
    return torch.einsum("ij,...jhw->...ihw", matrix, x)


def _white(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(D65_WHITE, device=x.device, dtype=x.dtype).view(3, 1, 1)


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """Undo the sRGB transfer curve (input in [0, 1])."""
    curved = ((rgb.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4
    return torch.where(rgb > 0.04045, curved, rgb / 12.92)


def linear_to_srgb(lin: torch.Tensor) -> torch.Tensor:
    """Apply the sRGB transfer curve; values outside [0, 1] are left for the caller to clip."""
    curved = 1.055 * lin.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055
    return torch.where(lin > 0.0031308, curved, lin * 12.92)


def rgb2lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], ``(..., 3, H, W)`` -> Lab with L in [0, 100] and a, b roughly in [-128, 127]."""
    rgb = _float(rgb)
    fwd, _ = _matrices(rgb.device, rgb.dtype)
    xyz = _apply(fwd, srgb_to_linear(rgb)) / _white(rgb)
    f = torch.where(xyz > EPSILON, xyz.clamp_min(EPSILON) ** (1.0 / 3.0), KAPPA_SLOPE * xyz + LINEAR_OFFSET)
    fx, fy, fz = f.unbind(dim=-3)
    lab = torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)
    return lab


def lab2rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab ``(..., 3, H, W)`` -> sRGB clipped to [0, 1].

    Colours outside the sRGB gamut are clipped per channel after the transfer curve, as
    scikit-image does; negative Z (possible for extreme b) is clamped to 0 first, also as it does.
    """
    lab = _float(lab)
    _, inv = _matrices(lab.device, lab.dtype)
    big_l, a, b = lab.unbind(dim=-3)
    fy = (big_l + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, (fy - b / 200.0).clamp_min(0.0)], dim=-3)
    xyz = torch.where(f > FINV_KNEE, f**3, (f - LINEAR_OFFSET) / KAPPA_SLOPE) * _white(lab)
    return linear_to_srgb(_apply(inv, xyz)).clamp(0.0, 1.0)
