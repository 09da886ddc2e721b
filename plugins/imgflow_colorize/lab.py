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


def _rows(matrix: torch.Tensor) -> tuple[tuple[float, float, float], ...]:
    return tuple(tuple(float(v) for v in row) for row in matrix.tolist())


_FWD = torch.tensor(XYZ_FROM_RGB, dtype=torch.float64)
#: RGB -> XYZ with each row divided by the D65 white, so the white needs no separate pass.
XYZN_FROM_RGB = _rows(_FWD / torch.tensor(D65_WHITE, dtype=torch.float64).view(3, 1))
#: XYZ (white-normalised) -> linear RGB: the exact inverse, times the white per column.
RGB_FROM_XYZN = _rows(torch.linalg.inv(_FWD) * torch.tensor(D65_WHITE, dtype=torch.float64).view(1, 3))
#: Y (luminance) from linear RGB: the middle row; it sums to 1, so grey stays grey.
Y_FROM_RGB = XYZ_FROM_RGB[1]


def _mix(row: tuple[float, float, float], planes: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``row[0] * planes[0] + row[1] * planes[1] + row[2] * planes[2]``, one fresh plane.

    Plane by plane rather than one einsum: a 3x3 colour matrix is 3 multiply-adds per pixel,
    and the einsum's permutes and copies cost 5-10x that on a CPU.
    """
    out = planes[0] * row[0]
    return out.add_(planes[1], alpha=row[1]).add_(planes[2], alpha=row[2])


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """Undo the sRGB transfer curve (input in [0, 1])."""
    curved = ((rgb.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4
    return torch.where(rgb > 0.04045, curved, rgb / 12.92)


def linear_to_srgb(lin: torch.Tensor) -> torch.Tensor:
    """Apply the sRGB transfer curve; values outside [0, 1] are left for the caller to clip."""
    curved = 1.055 * lin.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055
    return torch.where(lin > 0.0031308, curved, lin * 12.92)


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    """CIE's f: the cube root above EPSILON, the linear segment below."""
    return torch.where(t > EPSILON, t.clamp_min(EPSILON) ** (1.0 / 3.0), KAPPA_SLOPE * t + LINEAR_OFFSET)


def _lab_finv(f: torch.Tensor) -> torch.Tensor:
    return torch.where(f > FINV_KNEE, f * f * f, (f - LINEAR_OFFSET) / KAPPA_SLOPE)


def rgb2lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], ``(..., 3, H, W)`` -> Lab with L in [0, 100] and a, b roughly in [-128, 127]."""
    lin = srgb_to_linear(_float(rgb)).unbind(dim=-3)
    fx, fy, fz = (_lab_f(_mix(row, lin)) for row in XYZN_FROM_RGB)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)


def lightness(rgb: torch.Tensor) -> torch.Tensor:
    """L alone of sRGB in [0, 1]: ``(..., 3, H, W)`` -> ``(..., 1, H, W)``, a third of rgb2lab's work."""
    lin = srgb_to_linear(_float(rgb)).unbind(dim=-3)
    return (116.0 * _lab_f(_mix(Y_FROM_RGB, lin)) - 16.0).unsqueeze(-3)


def _u8_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per 8-bit level: its linear value, and the L of a grey of that level (float64, then float32)."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    lin = srgb_to_linear(levels)
    grey_l = 116.0 * _lab_f(lin) - 16.0
    return lin.to(device, torch.float32), grey_l.to(device, torch.float32)


def lightness_u8(pixels: torch.Tensor, grey: bool = False) -> torch.Tensor:
    """L of 8-bit sRGB ``(3, H, W)`` (uint8) -> ``(1, H, W)`` float32, by table look-up.

    ``grey`` (three equal channels): L depends on the level alone, one look-up per pixel.
    Otherwise the linear values come from a 256-entry table instead of a power per channel.
    """
    lin_table, grey_table = _u8_tables(pixels.device)
    if grey:
        return grey_table.take(pixels[0].to(torch.int64)).unsqueeze(0)
    lin = tuple(lin_table.take(plane.to(torch.int64)) for plane in pixels[:3])
    return (116.0 * _lab_f(_mix(Y_FROM_RGB, lin)) - 16.0).unsqueeze(0)


def lab2rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab ``(..., 3, H, W)`` -> sRGB clipped to [0, 1].

    Colours outside the sRGB gamut are clipped per channel after the transfer curve, as
    scikit-image does; negative Z (possible for extreme b) is clamped to 0 first, also as it does.
    """
    big_l, a, b = _float(lab).unbind(dim=-3)
    fy = (big_l + 16.0) / 116.0
    xyz = (_lab_finv(fy + a / 500.0), _lab_finv(fy), _lab_finv((fy - b / 200.0).clamp_min(0.0)))
    rgb = torch.stack([_mix(row, xyz) for row in RGB_FROM_XYZN], dim=-3)
    return linear_to_srgb(rgb).clamp_(0.0, 1.0)
