"""The network's input resize as the reference does it: Pillow's bicubic on 8-bit pixels.

Zhang et al.'s procedure (SPEC §1) shrinks the 8-bit RGB image to ``S x S`` with
``PIL.Image.resize(..., BICUBIC)`` and takes L of that. A bicubic resize of the same picture in
float32 (torch's antialiased bicubic) differs from it by up to 4 levels of 255 at edges, which
moved SIGGRAPH17's final colours by up to 1.34/255. So the stage resizes 8-bit pixels the way
Pillow does:

* on the CPU, with Pillow itself (its SIMD resampler is also the fastest here: 3.7 ms for a
  1024x768 grey image, where the float path took 17 ms for RGB);
* on other devices, as two matrix products with Pillow's own fixed-point coefficients, rounded
  to 8 bits after each pass as Pillow does (horizontal pass first), in float64, where those sums
  are exact: the same bytes as Pillow (tested on scikit-image's photographs), and the batch
  stays on the GPU.

Grey images (three equal channels) are resized as one channel: the same numbers, a third of the
work. Pillow's coefficients follow its published resampling algorithm (``Resample.c``): a
bicubic kernel with a = -0.5, support 2 widened by the shrink factor, bounds rounded from each
output pixel's centre, weights normalised, then quantised to 22 fractional bits.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

BICUBIC_A = -0.5
BICUBIC_SUPPORT = 2.0
PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images


def _bicubic(x: float) -> float:
    x = abs(x)
    if x < 1.0:
        return ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * BICUBIC_A
    return 0.0


@functools.lru_cache(maxsize=64)
def pillow_weights(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` float64: Pillow's 8-bit bicubic coefficients for one axis, as the
    exact multiples of 2**-22 its integer arithmetic uses."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = BICUBIC_SUPPORT * filterscale
    one = float(1 << PRECISION_BITS)
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int(): truncation, as C's cast
        xmax = min(int(center + support + 0.5), in_size)
        kernel = [_bicubic((x - center + 0.5) / filterscale) for x in range(xmin, xmax)]
        total = sum(kernel)
        for offset, k in enumerate(kernel):
            k = k / total if total != 0.0 else k
            weights[xx, xmin + offset] = math.trunc(k * one - 0.5) if k < 0 else math.trunc(k * one + 0.5)
    return weights / one


def resize_u8(pixels: torch.Tensor, side: int, grey: bool = False) -> torch.Tensor:
    """``(C, H, W)`` uint8 -> ``(C, side, side)`` uint8, Pillow's bicubic (aspect ratio ignored).

    ``grey``: the channels are equal; one is resized and repeated.
    """
    planes = pixels[:1] if grey else pixels
    if pixels.device.type == "cpu":
        out = _resize_pillow(planes, side)
    else:
        out = _resize_matmul(planes, side)
    return out.expand(pixels.shape[0], side, side) if grey else out


def _resize_pillow(planes: torch.Tensor, side: int) -> torch.Tensor:
    from PIL import Image

    if planes.shape[0] == 1:
        image = Image.fromarray(np.ascontiguousarray(planes[0].numpy()), mode="L")
        return torch.from_numpy(np.asarray(image.resize((side, side), Image.Resampling.BICUBIC)).copy())[None]
    image = Image.fromarray(np.ascontiguousarray(planes.permute(1, 2, 0).numpy()), mode="RGB")
    small = np.asarray(image.resize((side, side), Image.Resampling.BICUBIC))
    return torch.from_numpy(small.copy()).permute(2, 0, 1)


def _resize_matmul(planes: torch.Tensor, side: int) -> torch.Tensor:
    """Pillow's two passes as matrix products on ``planes``' device, rounded to 8 bits after each.

    In float64 the sums are Pillow's integer sums exactly (levels times 22-bit coefficients stay
    far below 2**53), so the result is Pillow's bit for bit; about 600 M multiply-adds for a
    1024x768 RGB image, a few ms even on a GPU with slow float64. MPS has no float64: float32
    there, a level apart at rounding ties.
    """
    height, width = planes.shape[-2:]
    dtype = torch.float32 if planes.device.type == "mps" else torch.float64
    x = planes.to(dtype)
    if width != side:
        across = torch.from_numpy(pillow_weights(width, side)).to(device=x.device, dtype=dtype)
        x = torch.floor(x @ across.T + 0.5).clamp_(0.0, 255.0)
    if height != side:
        down = torch.from_numpy(pillow_weights(height, side)).to(device=x.device, dtype=dtype)
        x = torch.floor(down @ x + 0.5).clamp_(0.0, 255.0)
    return x.to(torch.uint8)


def equal_channels(pixels: torch.Tensor) -> bool:
    """True when the first three channels are identical (a grey image in RGB layout)."""
    return bool(torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[1], pixels[2]))
