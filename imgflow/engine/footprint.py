"""How much memory one image will need, estimated from its header before a pixel is decoded.

The run's memory budget (:mod:`imgflow.memory`) reserves each item's peak before its decode
starts, so the estimate comes from what the header says (size, channels, bit depth) and from
what the stages declare (:meth:`imgflow.Stage.output_shape`, ``works_on_uint8``,
``working_copies``). It follows the item through the main process:

* its decoded pixels (uint8 or uint16, kept until the stages are done: a failing batch is
  retried item by item from them);
* the image the stages work on: 8-bit pixels while every stage so far works on them, else
  float32 (4 bytes per channel), converted once at the first stage that needs floats;
* at each stage, its input, its output (``output_shape``: size and fan-out count) and
  ``working_copies`` temporaries as large as that output;
* the writer: the final image plus its quantised and encoded copies.

The item's peak is the largest of those moments. It is deliberately simple and errs on the
large side: the budget is a bound the run keeps, not a forecast of its exact footprint.

This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from imgflow.memory import ImageShape

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.stage import Stage

FLOAT_BYTES = 4


def item_peak_bytes(stages: Sequence[Stage], shape: ImageShape) -> int:
    """The most memory one item of ``shape`` holds at once in the main process (see module doc)."""
    pixels = shape.nbytes
    eight_bit = shape.itemsize == 1
    floats = not eight_bit  # 16-bit images are converted to float32 when they become items
    height, width, count = shape.height, shape.width, 1

    def image_bytes() -> int:
        per_pixel = shape.channels * (FLOAT_BYTES if floats else shape.itemsize)
        return height * width * count * per_pixel

    held = pixels + (image_bytes() if floats else 0)  # the 8-bit item is a view of the pixels
    peak = held
    for stage in stages:
        if not floats and not (eight_bit and stage.works_on_uint8):
            floats = True  # converted here, at the size the image has reached
            held += image_bytes()
            peak = max(peak, held)
        out_height, out_width, fan_out = stage.output_shape(height, width)
        before = image_bytes()
        height, width, count = out_height, out_width, count * max(1, fan_out)
        out = image_bytes()
        peak = max(peak, held + out * (1 + float(stage.working_copies)))
        held = held - (before if held - before >= pixels else 0) + out  # the input is dropped
    final = image_bytes()
    encode = final // FLOAT_BYTES * 2 if floats else final * 2  # quantised levels + encoded bytes
    return int(max(peak, held + (final if floats else 0) + encode))
