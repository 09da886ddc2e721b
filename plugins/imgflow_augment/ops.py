"""Tensor operations behind the augmentation stages, in plain torch.

Everything here works on batched tensors ``(N, C, H, W)`` (float32, values in [0, 1]) and takes
per-item parameters as tensors or lists, so a stage can apply one call to a whole batch of
same-size images. Random parameters are *sampled* here too, but always from a caller-supplied
CPU ``torch.Generator``: each item owns its generator, which is what makes results independent
of batch size, batch order and device.

Semantics follow torchvision's v2 functional API (flip, crop, resize, center_crop,
adjust_brightness/contrast/saturation/hue, and the RandomResizedCrop / ColorJitter parameter
draws), implemented directly so that importing the plugin does not pay for importing torchvision.
This module is inherently about tensors, so it imports torch at module level; the stage module
imports it lazily.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from imgflow.resample import interpolate
from imgflow_augment.geometry import resize_output_size  # noqa: F401  (part of this module's API)

#: ITU-R BT.601 luma weights (R, G, B), the grayscale used by contrast and saturation.
LUMA = (0.299, 0.587, 0.114)

#: Interpolation names accepted by :func:`resize`, mapped to ``F.interpolate`` modes.
INTERPOLATION_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "area": "area"}

# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


def _per_item(
    values: torch.Tensor | Sequence[float] | float, x: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Per-item parameters as an ``(N, 1, 1, 1)`` tensor on ``x``'s device (``x``'s dtype unless
    ``dtype`` is given); a scalar is shared by every item.

    Parameters are drawn on the CPU; moving them here (once per call) keeps the arithmetic on
    the batch's device without the caller caring where that is.
    """
    t = torch.as_tensor(values).to(device=x.device, dtype=dtype or x.dtype)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    return t.reshape(-1, 1, 1, 1)


def hflip(x: torch.Tensor, mask: torch.Tensor | Sequence[bool]) -> torch.Tensor:
    """Mirror left-right the items of ``x`` whose ``mask`` entry is True (others unchanged)."""
    return torch.where(_per_item(mask, x, torch.bool), x.flip(-1), x)


def vflip(x: torch.Tensor, mask: torch.Tensor | Sequence[bool]) -> torch.Tensor:
    """Mirror top-bottom the items of ``x`` whose ``mask`` entry is True (others unchanged)."""
    return torch.where(_per_item(mask, x, torch.bool), x.flip(-2), x)


def crop(x: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """The box ``[top, top+height) x [left, left+width)`` of every item (a view, no copy)."""
    return x[..., top : top + height, left : left + width]


def resize(
    x: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear", antialias: bool = True
) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` to ``size = (h, w)``.

    Antialiasing only exists for bilinear/bicubic in ``F.interpolate``, so it is ignored for
    the other modes (as torchvision does). Bicubic overshoots near edges; the result is clamped
    back to [0, 1] because every stage promises images in that range.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    mode = INTERPOLATION_MODES[interpolation]
    smooth = mode in ("bilinear", "bicubic")
    # imgflow.resample: F.interpolate's antialiasing is wrong for outputs one pixel wide
    out = interpolate(x, size, mode=mode, antialias=antialias and smooth, align_corners=False if smooth else None)
    return out.clamp_(0.0, 1.0) if mode == "bicubic" and out.is_floating_point() else out  # uint8 saturates


def resized_crop(
    x: torch.Tensor,
    box: tuple[int, int, int, int],
    size: tuple[int, int],
    interpolation: str = "bilinear",
    antialias: bool = True,
) -> torch.Tensor:
    """Crop ``box = (top, left, height, width)`` and resize it to ``size`` (RandomResizedCrop)."""
    return resize(crop(x, *box), size, interpolation, antialias)


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centred ``size = (h, w)`` window; zero padding where the image is smaller.

    Padding splits the deficit with the extra pixel on the right/bottom, and the crop anchor
    rounds half to even, which is where torchvision puts the window too.
    """
    out_h, out_w = size
    in_h, in_w = x.shape[-2:]
    if out_h > in_h or out_w > in_w:
        dh, dw = max(out_h - in_h, 0), max(out_w - in_w, 0)
        x = F.pad(x, [dw // 2, (dw + 1) // 2, dh // 2, (dh + 1) // 2], value=0.0)
        in_h, in_w = x.shape[-2:]
    top = int(round((in_h - out_h) / 2.0))
    left = int(round((in_w - out_w) / 2.0))
    return crop(x, top, left, out_h, out_w)


# ---------------------------------------------------------------------------------------------
# Colour
# ---------------------------------------------------------------------------------------------


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of ``(N, 3, H, W)`` as ``(N, 1, H, W)``."""
    weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    return (x * weights).sum(dim=-3, keepdim=True)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor | Sequence[float] | float) -> torch.Tensor:
    """Scale intensities by ``factor`` per item (0 gives black, 1 the original)."""
    return (x * _per_item(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor | Sequence[float] | float) -> torch.Tensor:
    """Blend each item with the mean of its grayscale image (0 gives flat grey, 1 the original)."""
    mean = grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return torch.lerp(mean.expand_as(x), x, _per_item(factor, x)).clamp_(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor | Sequence[float] | float) -> torch.Tensor:
    """Blend each item with its grayscale image (0 gives grayscale, 1 the original)."""
    gray = grayscale(x).expand_as(x)
    return torch.lerp(gray, x, _per_item(factor, x)).clamp_(0.0, 1.0)


def _hue_chroma_value(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in [0, 1), chroma (max - min) and value (max) of RGB ``(N, 3, H, W)``.

    Chroma stands in for saturation (S = C / V) because the way back to RGB only needs C, which
    avoids a division by V for dark pixels. Grey pixels (C = 0) get hue 0: any hue maps back to
    the same grey.
    """
    r, g, b = x.unbind(dim=-3)
    value, _ = x.max(dim=-3)
    chroma = value - x.min(dim=-3).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    sector = torch.where(
        value == r,
        ((g - b) / safe).remainder(6.0),
        torch.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    hue = torch.where(chroma > 0, sector / 6.0, torch.zeros_like(sector))
    return hue, chroma, value


def _rgb_from_hue_chroma_value(hue: torch.Tensor, chroma: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """RGB from hue/chroma/value with the closed form ``V - C * clamp(min(k, 4 - k), 0, 1)``.

    ``k = (n + 6 H) mod 6`` with n = 5, 3, 1 for R, G, B; branch-free, so it batches well.
    """
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (hue * 6.0 + n).remainder(6.0)
        channels.append(value - chroma * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels, dim=-3)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor | Sequence[float] | float) -> torch.Tensor:
    """Rotate the HSV hue of each item by ``factor`` turns (in [-0.5, 0.5]); S and V unchanged."""
    hue, chroma, value = _hue_chroma_value(x)
    shifted = (hue + _per_item(factor, x).squeeze(-3)).remainder(1.0)
    return _rgb_from_hue_chroma_value(shifted, chroma, value).clamp_(0.0, 1.0)


#: The colour-jitter ops in torchvision's index order (0 brightness ... 3 hue).
JITTER_OPS: tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ...] = (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    adjust_hue,
)


def color_jitter(
    x: torch.Tensor, order: torch.Tensor, factors: torch.Tensor, active: Sequence[bool]
) -> torch.Tensor:
    """Apply the four jitter ops to ``(N, 3, H, W)`` in a per-item order.

    ``order`` is ``(N, 4)`` (a permutation of 0..3 per item), ``factors`` is ``(4, N)`` and
    ``active[k]`` says whether op k is enabled at all. At step s, every item runs its
    ``order[i, s]``-th op; items are grouped by op so each op is one batched call per step, and
    the total work stays four ops per item whatever the orders are.
    """
    for step in range(order.shape[1]):
        kinds = order[:, step]
        out = x
        for k, op in enumerate(JITTER_OPS):
            chosen = kinds == k
            if not active[k] or not bool(chosen.any()):
                continue
            if bool(chosen.all()):
                out = op(x, factors[k])
                continue
            if out is x:
                out = x.clone()
            idx = chosen.nonzero().flatten()
            dev_idx = idx.to(x.device)
            out[dev_idx] = op(x[dev_idx], factors[k][idx])
        x = out
    return x


# ---------------------------------------------------------------------------------------------
# Random parameter draws (CPU generator per item)
# ---------------------------------------------------------------------------------------------


def draw_uniform(gen: torch.Generator, low: float, high: float) -> float:
    """One float uniform in [low, high) from ``gen`` (one float32 draw, as torchvision makes)."""
    return float(torch.empty(1).uniform_(low, high, generator=gen).item())


def draw_chance(gen: torch.Generator, p: float) -> bool:
    """True with probability ``p``; always consumes one draw so later draws do not shift."""
    return bool(torch.rand(1, generator=gen).item() < p)


def draw_resized_crop_box(
    gen: torch.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box ``(top, left, h, w)`` inside a ``height x width`` image.

    Up to ten attempts draw an area fraction uniformly in ``scale`` and an aspect ratio
    log-uniformly in ``ratio``; the first box that fits gets a uniform position. If none fits,
    the whole image is used, trimmed at the centre to the nearest allowed ratio.
    """
    area = height * width
    log_lo, log_hi = torch.tensor(ratio, dtype=torch.float32).log().tolist()
    for _ in range(10):
        target_area = area * draw_uniform(gen, scale[0], scale[1])
        aspect = float(torch.empty(1).uniform_(log_lo, log_hi, generator=gen).exp().item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen).item())
            return top, left, h, w
    return _fallback_box(height, width, ratio)


def _fallback_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """The centred box used when no random box fitted: clip the image's ratio into ``ratio``."""
    in_ratio = width / height
    h, w = height, width
    if in_ratio < min(ratio):
        h = int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w = int(round(height * max(ratio)))
    return (height - h) // 2, (width - w) // 2, h, w


def draw_jitter(
    gen: torch.Generator, ranges: Sequence[tuple[float, float] | None]
) -> tuple[list[int], list[float | None]]:
    """An op order (permutation of 0..3) and one factor per enabled op, in torchvision's order.

    The permutation is drawn first, then brightness, contrast, saturation, hue; disabled ops
    (range None) draw nothing.
    """
    order = torch.randperm(4, generator=gen).tolist()
    factors = [None if r is None else draw_uniform(gen, r[0], r[1]) for r in ranges]
    return order, factors
