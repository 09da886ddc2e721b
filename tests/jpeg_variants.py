"""JPEG files of every kind the GPU decode route must tell apart, written by the tests.

Each is a real file made with Pillow: plain colour and grey JPEGs (left for the GPU), one with an
EXIF orientation, and the kinds that must stay on the CPU (CMYK, a non-sRGB ICC profile, data
after the end-of-image marker), plus a damaged one whose header reads cleanly but whose scan data
cannot be decoded by any decoder.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms


def photo(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """Photo-like uint8 (H, W, 3) pixels: gradients, a hard edge and mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([255 * x / width, 255 * y / height, 80 + 120 * (x > width / 2)], axis=2)
    return np.clip(base + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)


def jpeg_bytes(pixels: np.ndarray, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90, **save)
    return buffer.getvalue()


def write_variants(folder: Path) -> dict[str, Path]:
    """Every variant, by name, as files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = photo()
    files: dict[str, bytes] = {
        "colour.jpg": jpeg_bytes(pixels),
        "grey.jpg": jpeg_bytes(np.asarray(Image.fromarray(pixels).convert("L"))),
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to be upright
    files["rotated.jpg"] = jpeg_bytes(photo(40, 64, seed=1), exif=exif.tobytes())
    cmyk = io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(cmyk, "JPEG", quality=90)
    files["cmyk.jpg"] = cmyk.getvalue()
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    files["icc.jpg"] = jpeg_bytes(pixels, icc_profile=lab)
    files["trailer.jpg"] = jpeg_bytes(pixels) + b"TRAILER-DATA"
    files["damaged.jpg"] = damaged(jpeg_bytes(photo(seed=2)))
    paths = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths[name] = folder / name
    return paths


def damaged(data: bytes) -> bytes:
    """A bogus marker inside the scan data: the header parses, the file still ends with EOI,
    and libjpeg (Pillow's and TorchCodec's alike) refuses the pixels."""
    scan = data.find(b"\xff\xda")
    cut = scan + 300
    return data[:cut] + b"\xff\xc4\x00\x03\x00" + data[cut:]
