"""Which JPEGs a decode worker leaves for the GPU decoder (``[run] decode = "gpu"``), and what it
hands back for them instead of pixels.

With GPU decoding, a decode worker still reads the file (size cap, hash), parses its header with
Pillow (format, pixel cap, frames, EXIF) and reserves the image's memory, exactly as for a CPU
decode; then, for a JPEG that nvJPEG decodes to the same picture as the CPU path, it stops short
of decoding and hands the file's bytes back. The run's process decodes those in batches on the
stages' GPU (:mod:`imgflow.io.gpu_jpeg`); a file nvJPEG fails on is decoded again by a CPU
worker, so a bad JPEG fails alone, with the CPU decoder's reason.

Everything nvJPEG would not decode exactly as the CPU path does stays on the CPU, decided from
the header alone (:func:`gpu_refusal`): other formats and MPO, CMYK/YCCK, an ICC profile that is
not sRGB (the CPU path converts it), Adobe or RGB-coded colour, an EXIF block Pillow cannot read
cleanly (nvJPEG applies the orientation itself, so both must read the same one), and a file that
does not end with its end-of-image marker (truncated, or with data appended).

This module imports Pillow and numpy only (it runs in the decode workers).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from imgflow.batch import ImageMeta

_ORIENTATION_TAG = 0x0112
_EOI = b"\xff\xd9"
_RGB_COMPONENT_IDS = (ord("R"), ord("G"), ord("B"))


def gpu_refusal(im: Image.Image, data: bytes) -> str | None:
    """Why this file (header read, pixels not decoded) must be decoded on the CPU; None if nvJPEG
    may decode it."""
    if im.format != "JPEG":
        return f"{im.format} is decoded on the CPU"
    if im.mode not in ("RGB", "L"):
        return f"{im.mode} JPEGs are converted on the CPU"
    if "adobe" in im.info or "adobe_transform" in im.info:
        return "Adobe colour transform"
    layers = getattr(im, "layer", None) or []
    if tuple(layer[0] for layer in layers[:3]) == _RGB_COMPONENT_IDS:
        return "RGB-coded (not YCbCr) JPEG"
    if im.mode == "RGB" and _needs_colour_transform(im.info.get("icc_profile")):
        return "ICC profile other than sRGB"
    if clean_orientation(im) is None:
        return "EXIF block not read cleanly"
    if not data.rstrip(b"\x00\r\n\t ").endswith(_EOI):
        return "no end-of-image marker at the end of the file"
    return None


def clean_orientation(im: Image.Image) -> int | None:
    """The EXIF orientation (1 when absent) when Pillow reads it without complaint; else None."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - any trouble reading EXIF sends the file to the CPU path
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 8 else None


def _needs_colour_transform(icc: bytes | None) -> bool:
    """Whether the CPU path would convert (or note trouble with) this profile: anything but sRGB."""
    if not icc:
        return False
    from PIL import ImageCms

    from imgflow.io.modes import _looks_srgb

    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return not _looks_srgb((ImageCms.getProfileDescription(profile) or "").strip())
    except Exception:  # noqa: BLE001 - an unusable profile gets the CPU path's note
        return True


def deferred_meta(im: Image.Image, frames: int, notes: list[str]) -> ImageMeta:
    """What the CPU path would record for this JPEG: upright size, mode, orientation, notes."""
    orientation = clean_orientation(im) or 1
    width, height = im.size
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageMeta(width=width, height=height, mode=im.mode, format=str(im.format), bit_depth=8, frames=frames,
                     orientation=orientation, notes=notes)


@dataclass
class EncodedJpeg:
    """A JPEG left for the GPU decoder: its bytes as read and hashed, and where they came from
    (a CPU worker decodes the file again should nvJPEG fail on it)."""

    data: np.ndarray  # 1-D uint8
    path: str


def placeholder(height: int, width: int) -> np.ndarray:
    """A read-only (H, W, 3) uint8 array that owns one byte: the shape of the pixels to come.

    Everything that sizes an image by its pixels (the memory budget, the prefetch bound) sees
    the real shape; nothing can read pixels from it by mistake, because the stage chain refuses
    an input whose ``Decoded.encoded`` is still set (:func:`imgflow.engine.chain.to_item`).
    """
    return np.broadcast_to(np.zeros((1, 1, 1), dtype=np.uint8), (height, width, 3))
