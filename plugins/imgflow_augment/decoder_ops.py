"""``resize`` and ``center_crop`` as the decode worker does them: Pillow and numpy on 8-bit pixels.

Used when every stage of a pipeline can be done this way (see :mod:`imgflow.io.decoder_ops`):
the main process then never imports torch. Each op gives what the stage's own 8-bit path gives,
within one level: Pillow's BILINEAR is the antialiased triangle filter that torch's 8-bit
``interpolate(..., antialias=True)`` reproduces (they differ only where a rounding lands on the
other side of a half level), and the crop is the same window with the same zero padding. Alpha
is resampled as a plane of its own, straight (Pillow's RGBA resize would premultiply), as the
stage does. Imports numpy and Pillow only: these objects are unpickled in the decode workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from imgflow_augment.geometry import resize_output_size


@dataclass(frozen=True)
class ResizeOp:
    """``resize`` with bilinear, antialiased resampling (the stage's default)."""

    size: int | tuple[int, int]
    edge: str

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        from PIL import Image

        height, width = pixels.shape[:2]
        new_h, new_w = resize_output_size(height, width, self.size, self.edge)
        if (new_h, new_w) == (height, width):
            return pixels
        planes = [pixels[..., :3]] + ([pixels[..., 3]] if pixels.shape[2] == 4 else [])
        out = [np.asarray(Image.fromarray(np.ascontiguousarray(p)).resize((new_w, new_h), Image.Resampling.BILINEAR))
               for p in planes]
        if len(out) == 1:
            return out[0]
        return np.concatenate([out[0], out[1][..., None]], axis=2)

    def apply_image(self, image: Any) -> Any:
        """The same on a Pillow RGB or L image (no alpha): Pillow's own BILINEAR, no export."""
        from PIL import Image

        width, height = image.size
        new_h, new_w = resize_output_size(height, width, self.size, self.edge)
        if (new_h, new_w) == (height, width):
            return image
        return image.resize((new_w, new_h), Image.Resampling.BILINEAR)


@dataclass(frozen=True)
class CenterCropOp:
    """``center_crop``: the centred window, zero-padded where the image is smaller."""

    size: tuple[int, int]

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        out_h, out_w = self.size
        in_h, in_w = pixels.shape[:2]
        if out_h > in_h or out_w > in_w:  # the deficit split with the extra pixel right/bottom
            dh, dw = max(out_h - in_h, 0), max(out_w - in_w, 0)
            pixels = np.pad(pixels, ((dh // 2, (dh + 1) // 2), (dw // 2, (dw + 1) // 2), (0, 0)))
            in_h, in_w = pixels.shape[:2]
        top, left = int(round((in_h - out_h) / 2.0)), int(round((in_w - out_w) / 2.0))
        return pixels[top:top + out_h, left:left + out_w]

    def apply_image(self, image: Any) -> Any:
        """The same window on a Pillow image: ``crop`` fills what lies outside it with zeros."""
        out_h, out_w = self.size
        in_w, in_h = image.size
        dh, dw = max(out_h - in_h, 0), max(out_w - in_w, 0)
        pad_top, pad_left = dh // 2, dw // 2
        top = int(round((in_h + dh - out_h) / 2.0)) - pad_top
        left = int(round((in_w + dw - out_w) / 2.0)) - pad_left
        return image.crop((left, top, left + out_w, top + out_h))
