"""Pixel layouts: every Pillow mode converted deliberately into the four layouts stages get.

Output: uint8 HxWx3, uint8 HxWx4, uint16 HxWx3 or uint16 HxWx4 (straight alpha), upright after
EXIF orientation, sRGB when the file carried a usable ICC profile. See :mod:`imgflow.io.decode`
for the policy per mode and why.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

GRAY16_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation so the result is upright (the inverse of how it was stored).

    The table is EXIF's: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
    7 transverse, 8 rotate 90 counter-clockwise. Done on the array so it works for every dtype.
    """
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1, :]
    if orientation == 5:
        return pixels.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(pixels, k=-1)
    if orientation == 7:
        return pixels[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(pixels, k=1)
    return pixels


def to_array(im: Image.Image, notes: list[str]) -> tuple[np.ndarray, int]:
    """Convert a loaded image to one of the four output layouts; returns (pixels, bit_depth)."""
    mode = im.mode
    if mode in GRAY16_MODES:
        return _gray16(np.asarray(im).astype(np.uint16), im.info.get("transparency")), 16
    if mode == "I":
        return _gray16(_int_to_u16(np.asarray(im), notes), im.info.get("transparency")), 16
    if mode == "F":
        return _gray3(_float_to_u16(np.asarray(im), notes)), 16
    if mode in ("1", "L", "RGB") and "transparency" in im.info:
        return np.asarray(im.convert("RGBA")), 8  # PNG colour key: that value is transparent
    if mode in ("1", "L"):
        return _in_strips(im, 3, "L" if mode == "1" else None), 8
    if mode in ("LA", "La"):
        la = np.asarray(im if mode == "LA" else im.convert("LA"))
        return np.concatenate([_gray3(la[..., 0]), la[..., 1:2]], axis=2), 8
    if mode == "P":
        target = "RGBA" if im.has_transparency_data else "RGB"
        return _in_strips(im, len(target), target), 8
    if mode in ("PA", "RGBa"):
        return np.asarray(im.convert("RGBA")), 8
    if mode in ("RGB", "RGBA", "CMYK"):
        converted = _to_srgb(im, notes)
        return _in_strips(converted, 4 if converted.mode == "RGBA" else 3,
                          "RGB" if converted.mode == "CMYK" else None), 8
    if mode in ("RGBX", "YCbCr", "LAB", "HSV"):
        return _in_strips(im, 3, "RGB"), 8
    notes.append(f"unusual mode {mode!r} converted to RGB by Pillow")
    return np.asarray(im.convert("RGB")), 8


def _gray16(levels: np.ndarray, key: object) -> np.ndarray:
    """16-bit gray as (H, W, 3), or (H, W, 4) when a PNG colour key (tRNS) marks a level transparent.

    Without the key's alpha a transparent background would come out as an opaque grey.
    """
    gray = _gray3(levels)
    if not isinstance(key, int) or isinstance(key, bool):
        return gray
    alpha = np.where(levels == key, 0, 65535).astype(np.uint16)
    return np.concatenate([gray, alpha[..., None]], axis=2)


#: Images larger than this (in Pillow's 4 bytes per pixel) are copied out in strips of about it.
STRIP_BYTES = 8 << 20


def bytes_per_pixel(mode: str) -> int:
    """What Pillow itself holds per pixel for ``mode`` (1/L/P: 1, 16-bit gray: 2, others: 4)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode in GRAY16_MODES else 4


def _in_strips(im: Image.Image, channels: int, convert: str | None = None) -> np.ndarray:
    """The pixels as (H, W, channels) uint8, copied (and converted) a strip of rows at a time.

    ``np.asarray(im)`` makes the packed bytes of the whole image twice over before numpy sees
    them, and a whole-image ``convert`` a third copy: for a 100-megapixel file that is a gigabyte
    on top of Pillow's own. Strips keep the extra to a few megabytes. A one-channel strip fills
    every channel (grayscale to three equal channels).
    """
    width, height = im.size
    if width * height * 4 <= STRIP_BYTES:
        part = np.asarray(im.convert(convert) if convert else im)
        return _gray3(part) if part.ndim == 2 else part
    out = np.empty((height, width, channels), dtype=np.uint8)
    rows = max(1, STRIP_BYTES // (width * 4))
    for top in range(0, height, rows):
        part = im.crop((0, top, width, min(height, top + rows)))
        if convert:
            part = part.convert(convert)
        values = np.asarray(part)
        out[top : top + values.shape[0]] = values[..., None] if values.ndim == 2 else values
    return out


def _gray3(gray: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 3) with three equal channels, as stages expect."""
    return np.repeat(gray[..., None], 3, axis=2)


def _int_to_u16(values: np.ndarray, notes: list[str]) -> np.ndarray:
    """32-bit integer levels kept when they fit 16 bits; clipped (with a note) when not."""
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi > 65535:
        notes.append(f"32-bit integer values {lo}..{hi} clipped to 0..65535")
        values = np.clip(values, 0, 65535)
    return values.astype(np.uint16)


def _float_to_u16(values: np.ndarray, notes: list[str]) -> np.ndarray:
    """Float images: [0, 1] is a normalised intensity, anything else is clipped levels."""
    values = values.astype(np.float64)
    nan = np.isnan(values)
    if nan.any():
        notes.append(f"{int(nan.sum())} NaN pixel(s) set to 0")
        values = np.where(nan, 0.0, values)
    lo, hi = float(values.min()), float(values.max())
    if 0.0 <= lo and hi <= 1.0:
        return np.rint(values * 65535.0).astype(np.uint16)
    if lo < 0.0 or hi > 65535.0:
        notes.append(f"float values {lo:g}..{hi:g} clipped to 0..65535")
    return np.rint(np.clip(values, 0.0, 65535.0)).astype(np.uint16)


def _to_srgb(im: Image.Image, notes: list[str]) -> Image.Image:
    """RGB/RGBA/CMYK to sRGB, through the embedded ICC profile when it is not already sRGB."""
    icc = im.info.get("icc_profile")
    if not icc:
        return im.convert("RGB") if im.mode == "CMYK" else im
    from PIL import ImageCms  # only files that carry a profile pay for littlecms

    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        name = (ImageCms.getProfileDescription(profile) or "").strip() or "unnamed"
        if im.mode != "CMYK" and _looks_srgb(name):
            return im
        out_mode = "RGBA" if im.mode == "RGBA" else "RGB"
        transform = ImageCms.buildTransform(profile, _srgb_profile(), im.mode, out_mode)
        converted = ImageCms.applyTransform(im, transform)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        fallback = "Pillow's CMYK conversion used" if im.mode == "CMYK" else "colours kept as stored"
        notes.append(f"embedded ICC profile unusable ({exc}); {fallback}")
        return im.convert("RGB") if im.mode == "CMYK" else im
    assert converted is not None
    notes.append(f"converted from ICC profile '{name}' to sRGB")
    return converted


def _looks_srgb(description: str) -> bool:
    """sRGB profiles (the camera default) need no transform; trust their description."""
    text = description.lower()
    return "srgb" in text and "linear" not in text


_srgb_cache: list[object] = []


def _srgb_profile() -> object:
    """The built-in sRGB profile, created once per process."""
    if not _srgb_cache:
        from PIL import ImageCms

        _srgb_cache.append(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")))
    return _srgb_cache[0]


