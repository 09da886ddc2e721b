"""Regenerate the bundled style images in ``examples/styles/`` (procedural, so no licence questions).

``mosaic.jpg``  a stained-glass mosaic: Voronoi cells in saturated colours, each shaded by a soft
                gradient and a brush-like stroke texture, separated by dark lead lines. Strong
                colours, hard edges and a repeated texture are what a Gram matrix captures well,
                which makes it a clear style for ``style.optimize`` and ``train.fast_style``.

Deterministic (fixed seed): running it again writes the same pixels.
Run: ``uv run python examples/make_styles.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SIZE = 256
CELLS = 60
SEED = 7
# A warm/cool palette of saturated colours (sRGB), like leaded glass.
PALETTE = np.array([
    (214, 40, 40), (247, 127, 0), (252, 191, 73), (234, 226, 183), (0, 48, 73),
    (38, 70, 83), (42, 157, 143), (233, 196, 106), (231, 111, 81), (106, 76, 147),
    (25, 130, 196), (138, 201, 38),
], dtype=np.float32)


def voronoi_labels(rng: np.random.Generator, size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel, the index of its nearest seed point and the gap to the second nearest
    (small near a cell border: that is where the lead lines go)."""
    points = rng.uniform(0, size, (cells, 2)).astype(np.float32)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    dist = np.sqrt((ys[..., None] - points[:, 0]) ** 2 + (xs[..., None] - points[:, 1]) ** 2)
    order = np.sort(dist, axis=-1)
    return dist.argmin(axis=-1), order[..., 1] - order[..., 0]


def mosaic(size: int = SIZE, cells: int = CELLS, seed: int = SEED) -> Image.Image:
    """The stained-glass style image."""
    rng = np.random.default_rng(seed)
    labels, gap = voronoi_labels(rng, size, cells)
    colours = PALETTE[rng.integers(0, len(PALETTE), cells)]
    image = colours[labels]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # each cell lit from its own direction: a soft gradient that keeps the glass from looking flat
    angle = rng.uniform(0, 2 * np.pi, cells)[labels]
    light = 0.8 + 0.35 * (np.cos(angle) * (xs - 0.5) + np.sin(angle) * (ys - 0.5))
    # brush strokes: diagonal waves whose direction changes per cell
    stroke_angle = rng.uniform(0, np.pi, cells)[labels]
    strokes = 1.0 + 0.12 * np.sin(90 * (np.cos(stroke_angle) * xs + np.sin(stroke_angle) * ys))
    image = image * (light * strokes)[..., None]
    lead = np.clip(gap / 3.0, 0.0, 1.0)[..., None]  # dark lines 2-3 pixels wide at the borders
    image = image * lead + 20.0 * (1.0 - lead)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def main() -> None:
    styles = HERE / "styles"
    styles.mkdir(parents=True, exist_ok=True)
    path = styles / "mosaic.jpg"
    mosaic().save(path, quality=90)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
