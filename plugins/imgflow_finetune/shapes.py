"""A small two-class image dataset rendered from scikit-image's bundled texture samples.

``imgflow datasets make-shapes OUT`` writes ``OUT/train/<class>/*.jpg`` and ``OUT/val/<class>/*.jpg``
(the ImageFolder layout the trainer reads): crops of the ``brick`` and ``grass`` textures. The two
are visually distinct (a regular grid of mortar lines against random blades), but every picture is
a random crop at a random scale, flipped and turned by multiples of 90 degrees, tinted with a
random colour and given random brightness and contrast drawn from the SAME distributions for both
classes, so neither colour nor mean brightness gives the answer away: a network has to see the
texture. That keeps the task learnable from scratch in a few CPU epochs at 64 px while still
being far from trivial for a chance-level model.

Why generated rather than downloaded: tests and the shipped pipelines must run offline, and the
data set must not be committed. The samples ship inside scikit-image (no network), and the same
seed gives byte-identical files.

Only numpy, Pillow and scikit-image are imported (inside the functions), never torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: Class name -> scikit-image sample function name. Both are 512x512 grayscale textures.
CLASSES: dict[str, str] = {"brick": "brick", "grass": "grass"}
#: Bump when the rendering changes, so a reader can tell datasets from two versions apart.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class ShapesSpec:
    """How many pictures to render and how big they are."""

    train_per_class: int = 60
    val_per_class: int = 20
    size: int = 64  # the shorter side of each picture; the longer side varies up to 1.5x
    seed: int = 0
    quality: int = 92


def _sample(name: str) -> np.ndarray:
    """The bundled texture as float32 in [0, 1] (2-D, grayscale)."""
    import numpy as np
    from skimage import data

    return getattr(data, name)().astype(np.float32) / 255.0


def render(texture: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """One random picture (H, W, 3) uint8 from a grayscale ``texture``.

    The crop side is 20-60 % of the texture, so the pattern appears at different scales; the
    output keeps a random aspect ratio up to 3:2 so the trainer's resize and crop do real work.
    """
    import numpy as np
    from PIL import Image

    full = texture.shape[0]
    side = int(rng.uniform(0.2, 0.6) * full)
    top = int(rng.integers(0, full - side + 1))
    left = int(rng.integers(0, full - side + 1))
    patch = texture[top : top + side, left : left + side]
    patch = np.rot90(patch, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    long = int(size * rng.uniform(1.0, 1.5))
    out_h, out_w = (size, long) if rng.random() < 0.5 else (long, size)
    gray = Image.fromarray(np.ascontiguousarray(patch * 255.0).astype(np.uint8), "L")
    gray = np.asarray(gray.resize((out_w, out_h), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    contrast = rng.uniform(0.6, 1.4)
    brightness = rng.uniform(-0.15, 0.15)
    gray = (gray - gray.mean()) * contrast + 0.5 + brightness
    tint = rng.uniform(0.55, 1.0, size=3).astype(np.float32)
    rgb = np.clip(gray[..., None] * tint[None, None, :] / tint.mean() * 0.8 + 0.1, 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def make_shapes(out: Path, spec: ShapesSpec = ShapesSpec(),
                progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Render the data set under ``out``; returns the file count per split.

    Each (split, class) gets its own random stream derived from the seed, so changing the
    number of validation pictures never changes the training pictures.
    """
    import numpy as np
    from PIL import Image

    counts = {"train": 0, "val": 0}
    for class_index, (label, sample) in enumerate(CLASSES.items()):
        texture = _sample(sample)
        for split_index, (split, count) in enumerate((("train", spec.train_per_class),
                                                      ("val", spec.val_per_class))):
            folder = out / split / label
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([GENERATOR_VERSION, spec.seed, class_index, split_index])
            for i in range(count):
                pixels = render(texture, rng, spec.size)
                Image.fromarray(pixels, "RGB").save(folder / f"{label}_{i:04d}.jpg", "JPEG",
                                                    quality=spec.quality)
            counts[split] += count
            if progress:
                progress(f"wrote {count} pictures to {folder}")
    return counts
