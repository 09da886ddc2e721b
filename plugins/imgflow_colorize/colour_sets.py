"""Small colour data sets for trying, testing and measuring ``train.colorizer`` without downloads.

  palette     smooth random luminance fields coloured by a fixed palette: every pixel's ab is a
              function of its L alone, so a colorizer can learn it exactly and the validation
              ab error says plainly whether training works (tests, benchmarks, experiments);
  photo       crops of scikit-image's bundled colour photos (astronaut, coffee, chelsea, rocket:
              public domain or CC0), the training crops from the left 3/4 of each photo and the
              validation crops from the right 1/4, so the two never share pixels
              (``examples/colour``, made by ``examples/make_colour_set.py``).

Both are deterministic in their seed. Imports torch and numpy at import time; only tests,
benchmarks and the examples script use it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from imgflow_colorize import lab

# (L, a, b) stops of the default palette, L increasing: dark blue, green, yellow, light pink.
PALETTE = ((25.0, 15.0, -50.0), (50.0, -45.0, 35.0), (75.0, 5.0, 65.0), (90.0, 20.0, 5.0))
# Another mapping with the same luminance stops, for "fine-tune to a new look" experiments.
PALETTE_B = ((25.0, 40.0, 20.0), (50.0, 30.0, 50.0), (75.0, -30.0, 40.0), (90.0, -10.0, -15.0))
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def palette_lab(t: torch.Tensor, palette: tuple[tuple[float, float, float], ...] = PALETTE) -> torch.Tensor:
    """Lab ``(3, H, W)`` for positions ``t`` in [0, 1] ``(H, W)`` along the palette (linear between stops)."""
    stops = torch.tensor(palette, dtype=torch.float64)
    pos = t.double().clamp(0, 1) * (len(palette) - 1)
    low = pos.floor().long().clamp(max=len(palette) - 2)
    frac = (pos - low).unsqueeze(-1)
    values = stops[low] * (1 - frac) + stops[low + 1] * frac
    return values.permute(2, 0, 1).float()


def smooth_field(size: int, generator: torch.Generator, cells: int = 4) -> torch.Tensor:
    """A smooth random field ``(size, size)`` stretched to [0, 1]: coarse noise, bicubic upsampled."""
    coarse = torch.randn(1, 1, cells, cells, generator=generator)
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
    return (field - field.min()) / (field.max() - field.min()).clamp_min(1e-6)


def palette_image(size: int, seed: int, palette: tuple[tuple[float, float, float], ...] = PALETTE) -> np.ndarray:
    """One palette picture as an ``(size, size, 3)`` uint8 sRGB array."""
    gen = torch.Generator().manual_seed(seed)
    field = smooth_field(size, gen, cells=int(torch.randint(2, 6, (), generator=gen)))
    rgb = lab.lab2rgb(palette_lab(field, palette))
    return (rgb.permute(1, 2, 0) * 255).round().byte().numpy()


def write_palette_set(folder: Path, *, train: int, val: int, size: int = 64, seed: int = 0,
                      palette: tuple[tuple[float, float, float], ...] = PALETTE) -> Path:
    """``folder/train/p_NNN.png`` and ``folder/val/p_NNN.png`` (lossless: the colours stay exact)."""
    for split, count, offset in (("train", train, 0), ("val", val, 1_000_000)):
        (folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            picture = palette_image(size, seed * 7_919 + offset + i, palette)
            Image.fromarray(picture).save(folder / split / f"p_{i:03d}.png")
    return folder


def photo_crops(name: str, count: int, size: int, split: str, seed: int) -> list[np.ndarray]:
    """``count`` square crops of a scikit-image photo, from its left 3/4 (train) or right 1/4 (val),
    each of a random side between half and all of the region's height, resized to ``size``."""
    from skimage import data

    photo = getattr(data, name)()
    height, width = photo.shape[:2]
    cut = width * 3 // 4
    region = photo[:, :cut] if split == "train" else photo[:, cut:]
    rng = np.random.default_rng([seed, PHOTOS.index(name), 0 if split == "train" else 1])
    crops = []
    for _ in range(count):
        side = int(rng.integers(min(height, region.shape[1]) // 2, min(height, region.shape[1]) + 1))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, region.shape[1] - side + 1))
        crop = Image.fromarray(region[top:top + side, left:left + side])
        crops.append(np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS)))
    return crops


def write_photo_set(folder: Path, *, train_per_photo: int, val_per_photo: int, size: int = 128, seed: int = 0,
                    quality: int = 88) -> list[Path]:
    """``folder/train/<photo>_NN.jpg`` and ``folder/val/<photo>_NN.jpg``; returns the files written."""
    written = []
    for split, count in (("train", train_per_photo), ("val", val_per_photo)):
        (folder / split).mkdir(parents=True, exist_ok=True)
        for name in PHOTOS:
            for i, crop in enumerate(photo_crops(name, count, size, split, seed)):
                path = folder / split / f"{name}_{i:02d}.jpg"
                Image.fromarray(crop).save(path, quality=quality, optimize=True)
                written.append(path)
    return written
