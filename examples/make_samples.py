"""Regenerate the bundled sample images from scikit-image's packaged pictures.

Sources and licences (from scikit-image's own documentation of ``skimage.data``):
  astronaut  NASA, public domain          coffee  Rachel Michetti, CC0
  chelsea    Stefan van der Walt, CC0     rocket  SpaceX, public domain
  camera     Lav Varshney, CC0            coins   Greek coins, no known copyright restrictions

``examples/photos/`` holds small colour photos (augmentation, detection, styles);
``examples/archive/`` holds grayscale "scans" for the colorizer, in a two-level tree so the
output mirroring is visible. Run: ``uv run python examples/make_samples.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

HERE = Path(__file__).resolve().parent
LONG_EDGE = 384


def _small(array: np.ndarray) -> Image.Image:
    image = Image.fromarray(array)
    image.thumbnail((LONG_EDGE, LONG_EDGE), Image.Resampling.LANCZOS)
    return image


def main() -> None:
    photos = HERE / "photos"
    archive = HERE / "archive"
    (archive / "1962").mkdir(parents=True, exist_ok=True)
    photos.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        _small(getattr(data, name)()).save(photos / f"{name}.jpg", quality=90)
    _small(data.camera()).convert("L").save(archive / "camera.jpg", quality=90)
    _small(data.coins()).save(archive / "coins.png")
    _small(data.astronaut()).convert("L").save(archive / "1962" / "astronaut.jpg", quality=90)
    _small(data.chelsea()).convert("L").save(archive / "1962" / "chelsea.tif", compression="tiff_deflate")
    print(f"wrote samples under {photos} and {archive}")


if __name__ == "__main__":
    main()
