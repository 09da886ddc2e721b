"""Output sizes of the geometric ops, in plain Python (no torch).

The stages need them before any pixel exists (to estimate an item's memory from its decoded
size, :meth:`imgflow.Stage.output_shape`), possibly while torch is still being imported.
"""

from __future__ import annotations

from collections.abc import Sequence


def resize_output_size(
    height: int, width: int, size: int | Sequence[int], edge: str = "shorter"
) -> tuple[int, int]:
    """The ``(h, w)`` a resize produces.

    A pair is taken as is. An int sets the ``edge`` ("shorter" or "longer") to that many pixels
    and scales the other edge to keep the aspect ratio (truncating, like torchvision's ``size``
    and ``max_size`` rules), never below one pixel.
    """
    if not isinstance(size, int):
        h, w = size
        return int(h), int(w)
    short, long = (width, height) if width <= height else (height, width)
    if edge == "shorter":
        new_short, new_long = size, max(1, int(size * long / short))
    else:
        new_short, new_long = max(1, int(size * short / long)), size
    return (new_long, new_short) if width <= height else (new_short, new_long)
