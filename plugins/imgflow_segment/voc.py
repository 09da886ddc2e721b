"""Pascal VOC label conventions: class names, the colour map, palette PNG masks, class fractions.

Pure Python at import (numpy and Pillow are imported inside the functions that need them), so
the stage module can be imported for ``imgflow stages`` and ``validate`` without cost.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
NUM_CLASSES = len(VOC_CLASSES)  # 21
BORDER = 255  # VOC marks object borders and "difficult" pixels with this index


def voc_colormap(count: int = 256) -> list[tuple[int, int, int]]:
    """The VOC colour of every label index, built from the index's bits.

    VOC spreads the bits of an index over the three channels, most significant first: bit 0
    goes to red's top bit, bit 1 to green's, bit 2 to blue's, bit 3 to red's next bit, and so
    on. Neighbouring classes thus get clearly different colours, and the table never has to be
    stored: class 1 is (128, 0, 0), person (15) is (192, 128, 128), the border (255) is
    (224, 224, 192).
    """
    colours = []
    for index in range(count):
        rgb = [0, 0, 0]
        bits = index
        for shift in range(7, -1, -1):  # fill each channel from its top bit down
            for channel in range(3):
                rgb[channel] |= ((bits >> channel) & 1) << shift
            bits >>= 3
        colours.append((rgb[0], rgb[1], rgb[2]))
    return colours


def voc_palette() -> list[int]:
    """The colour map flattened for ``Image.putpalette`` (768 values, all 256 indices), as the
    VOC SegmentationClass PNGs carry it, so our masks open like VOC's in any tool."""
    return [value for colour in voc_colormap(256) for value in colour]


def encode_mask_png(labels: np.ndarray, palette: list[tuple[int, int, int]] | None = None) -> bytes:
    """A (H, W) label array as a lossless palette PNG (mode "P", VOC colours unless ``palette`` gives
    the first classes' own), as bytes.

    The pixel values are the class indices themselves: a reader gets the labels back exactly with
    ``np.asarray(Image.open(f))`` and sees the colours in any viewer.
    """
    import numpy as np
    from PIL import Image

    if labels.ndim != 2:
        raise ValueError(f"a label mask must be (H, W), got shape {labels.shape}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 255):
        raise ValueError("label values must be in [0, 255] to fit a palette PNG")
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="P")
    colours = voc_colormap(256)
    for index, colour in enumerate(palette or []):
        colours[index] = tuple(colour)
    image.putpalette([value for colour in colours for value in colour])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def class_fractions(counts: list[int], names: tuple[str, ...] | list[str] = VOC_CLASSES) -> dict[str, float]:
    """Pixel fraction of each class present, from per-class pixel counts (index = class id).

    Absent classes are left out, so the result names what is in the picture; the fractions of a
    non-empty mask sum to 1.
    """
    total = sum(counts)
    if total <= 0:
        return {}
    return {names[i]: count / total for i, count in enumerate(counts) if count > 0}
