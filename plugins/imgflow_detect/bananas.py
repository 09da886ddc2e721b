"""A d2l.ai-style "banana" data set, rendered offline: object cut-outs pasted on photographs.

``imgflow datasets make-bananas OUT`` writes, for ``train.detector`` and ``train.segmenter``::

    OUT/train/img_0000.jpg ...        square pictures (--size, default 256 as in the book)
    OUT/val/img_0000.jpg ...
    OUT/labels.csv                    path,label,x1,y1,x2,y2: one row per object, pixels (d2l's format)
    OUT/masks/train/img_0000.png ...  palette PNGs mirroring the pictures: 0 background, 1 banana, 2 coin
    OUT/classes.json                  {"classes": ["background", "banana", "coin"], "palette": [...]}

Backgrounds are random crops of scikit-image's bundled photographs and textures (astronaut, coffee,
chelsea, rocket, brick, grass, gravel, ...), flipped and tinted. Each picture gets one or two
objects: a *banana* (a crescent cut from a yellow-tinted texture, turned at random) or a *coin* (a
disc cut from scikit-image's coins photograph, silver or gold). Sizes 20-45 % of the picture,
positions at random, never overlapping much; the boxes are the extents of the pasted pixels, so
boxes and masks agree exactly.

The book's banana set has one banana per 256 x 256 picture (1,000 + 100); this one adds a second
class so class names matter, and every number is a parameter. Same seed, same files. Only numpy,
Pillow and scikit-image, imported inside the functions (never torch).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

CLASSES = ("background", "banana", "coin")
PALETTE = ((0, 0, 0), (255, 210, 0), (90, 130, 255))
COLOUR_BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
GRAY_BACKGROUNDS = ("brick", "grass", "gravel", "camera", "moon")
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class BananaSpec:
    """How many pictures, how big, how many objects."""

    train: int = 400
    val: int = 80
    size: int = 256
    max_objects: int = 2
    seed: int = 0
    quality: int = 92


def _samples() -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Backgrounds (H, W, 3) float in [0, 1], the coins photo and a texture for the bananas."""
    import numpy as np
    from skimage import data

    backgrounds = [getattr(data, name)()[..., :3].astype(np.float32) / 255 for name in COLOUR_BACKGROUNDS]
    for name in GRAY_BACKGROUNDS:
        gray = getattr(data, name)().astype(np.float32) / 255
        backgrounds.append(np.repeat(gray[..., None], 3, axis=2))
    return backgrounds, data.coins().astype(np.float32) / 255, data.gravel().astype(np.float32) / 255


def _resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """A float (H, W[, 3]) array resized with Pillow's bilinear filter."""
    import numpy as np
    from PIL import Image

    channels = [pixels] if pixels.ndim == 2 else [pixels[..., c] for c in range(pixels.shape[2])]
    out = [np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))
           for c in channels]
    return out[0] if pixels.ndim == 2 else np.stack(out, axis=2)


def background(rng: np.random.Generator, samples: list[np.ndarray], size: int) -> np.ndarray:
    """A random crop (40-100 % of the shorter side) of a random sample, flipped and tinted."""
    import numpy as np

    source = samples[int(rng.integers(len(samples)))]
    h, w = source.shape[:2]
    side = int(min(h, w) * rng.uniform(0.4, 1.0))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = _resize(source[top : top + side, left : left + side], size, size)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    tint = rng.uniform(0.75, 1.15, 3).astype(np.float32)
    return np.clip(crop * tint, 0, 1)


def banana_shape(rng: np.random.Generator, diameter: int) -> np.ndarray:
    """A crescent (a disc minus a shifted disc), turned at random: a boolean (d, d) mask."""
    import numpy as np
    from PIL import Image

    d = diameter
    ys, xs = np.mgrid[0:d, 0:d].astype(np.float32) + 0.5
    r = d / 2
    outer = (xs - r) ** 2 + (ys - r) ** 2 <= r**2
    shift = rng.uniform(0.25, 0.4) * d
    inner = (xs - r - shift * 0.6) ** 2 + (ys - r + shift) ** 2 <= (r * rng.uniform(0.85, 0.95)) ** 2
    shape = Image.fromarray((outer & ~inner).astype(np.uint8) * 255)
    turned = shape.rotate(float(rng.uniform(0, 360)), resample=Image.NEAREST)
    return np.asarray(turned) > 127


def coin_shape(diameter: int) -> np.ndarray:
    """A disc: a boolean (d, d) mask."""
    import numpy as np

    ys, xs = np.mgrid[0:diameter, 0:diameter].astype(np.float32) + 0.5
    r = diameter / 2
    return (xs - r) ** 2 + (ys - r) ** 2 <= r**2


def object_pixels(rng: np.random.Generator, kind: str, diameter: int, coins: np.ndarray,
                  texture: np.ndarray) -> np.ndarray:
    """The (d, d, 3) colours of an object: a tinted crop of a scikit-image picture."""
    import numpy as np

    source = coins if kind == "coin" else texture
    h, w = source.shape
    side = int(min(h, w) * (rng.uniform(0.12, 0.2) if kind == "coin" else rng.uniform(0.3, 0.6)))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    gray = _resize(source[top : top + side, left : left + side], diameter, diameter)
    gray = 0.55 + 0.45 * (gray - gray.mean()) / (gray.std() + 1e-6) * 0.35
    if kind == "banana":
        colour = np.array([0.98, 0.82, 0.15]) * rng.uniform(0.85, 1.05)
    else:
        colour = np.array([0.95, 0.78, 0.35]) if rng.random() < 0.5 else np.array([0.85, 0.87, 0.9])
    return np.clip(gray[..., None] * colour[None, None, :] * 1.3, 0, 1)


def _overlaps(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]]) -> bool:
    for other in boxes:
        ix = max(0, min(box[2], other[2]) - max(box[0], other[0]))
        iy = max(0, min(box[3], other[3]) - max(box[1], other[1]))
        if ix * iy > 0.05 * min((box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1])):
            return True
    return False


def render(rng: np.random.Generator, size: int, max_objects: int, samples: list[np.ndarray], coins: np.ndarray,
           texture: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]:
    """One picture (H, W, 3) uint8, its label mask (H, W) uint8 and its objects (name, x1 y1 x2 y2)."""
    import numpy as np

    picture = background(rng, samples, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    objects: list[tuple[str, tuple[int, int, int, int]]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        kind = CLASSES[1 + int(rng.integers(2))]
        for _attempt in range(20):
            d = max(4, int(size * rng.uniform(0.2, 0.45)))
            top, left = int(rng.integers(0, size - d + 1)), int(rng.integers(0, size - d + 1))
            shape = banana_shape(rng, d) if kind == "banana" else coin_shape(d)
            ys, xs = np.nonzero(shape)
            box = (left + int(xs.min()), top + int(ys.min()), left + int(xs.max()) + 1, top + int(ys.max()) + 1)
            if not _overlaps(box, [b for _, b in objects]):
                break
        else:
            continue
        colours = object_pixels(rng, kind, d, coins, texture)
        window = picture[top : top + d, left : left + d]
        window[shape] = colours[shape]
        mask[top : top + d, left : left + d][shape] = CLASSES.index(kind)
        objects.append((kind, box))
    return (picture * 255).round().astype(np.uint8), mask, objects


def palette_png(mask: np.ndarray) -> bytes:
    """The label mask as a palette PNG (pixel values are the class ids)."""
    from PIL import Image

    image = Image.fromarray(mask, mode="P")
    flat = [v for colour in PALETTE for v in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_bananas(out: Path, spec: BananaSpec) -> dict[str, int]:
    """Write the data set into ``out``; returns how many pictures and objects per split."""
    import numpy as np
    from PIL import Image

    samples, coins, texture = _samples()
    rng = np.random.default_rng(spec.seed)
    rows: list[tuple[str, str, int, int, int, int]] = []
    counts = {"train": 0, "val": 0, "objects": 0}
    for split, count in (("train", spec.train), ("val", spec.val)):
        (out / split).mkdir(parents=True, exist_ok=True)
        (out / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            picture, mask, objects = render(rng, spec.size, spec.max_objects, samples, coins, texture)
            rel = f"{split}/img_{i:04d}"
            Image.fromarray(picture).save(out / f"{rel}.jpg", quality=spec.quality)
            (out / "masks" / f"{rel}.png").write_bytes(palette_png(mask))
            rows.extend((f"{rel}.jpg", kind, *box) for kind, box in objects)
            counts[split] += 1
            counts["objects"] += len(objects)
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "x1", "y1", "x2", "y2"])
        writer.writerows(rows)
    (out / "classes.json").write_text(json.dumps({"classes": list(CLASSES), "palette": [list(c) for c in PALETTE],
                                                  "generator": f"imgflow make-bananas v{GENERATOR_VERSION}",
                                                  "seed": spec.seed}, indent=1) + "\n", encoding="utf-8")
    return counts
