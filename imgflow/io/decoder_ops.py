"""Stages done by the decode workers: image-only pipelines without torch in the main process.

A pipeline of deterministic geometric stages on 8-bit pixels (``resize_photos.toml``: one
``resize``) spent most of a short run importing torch, 1.8-4.7 s of CPU on a 2-core machine,
while the work itself is a decode, a resample and an encode per image: libvips and a PIL loop
finish 300 photos in less time than that import. So when every stage of a pipeline offers a
:meth:`imgflow.Stage.decoder_op` (a Pillow/numpy equivalent of its ``process()``, within one level
of it), the local executor hands those ops to the decode workers in
:class:`imgflow.io.decode.DecodeLimits`, each worker applies them to the 8-bit pixels it decoded
(the decode's shrink-on-load, generalised), and the main process only encodes and writes what
comes back (:class:`DecodedItem`): it never sets the stages up, so torch is not imported.

Only 8-bit decodes get the ops; a 16-bit image comes back as decoded, and the main process sets
the stage chain up (importing torch) the first time it meets one, and runs it as before. The
manifest's ``meta`` is the decoded image's, before any stage, either way.

Eligible: the local executor, ``[run] device`` ``cpu`` or ``auto`` (an explicit GPU keeps the
stages on it), every stage with an op. The Ray executor does not use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from imgflow.batch import Artifact, ImageMeta
    from imgflow.stage import Stage


def pipeline_ops(stages: Sequence[Stage], device: str) -> tuple[Any, ...]:
    """The stages' decoder ops in order, or ``()`` unless every stage has one and the device allows."""
    if not stages or device not in ("cpu", "auto"):
        return ()
    ops = []
    for stage in stages:
        op = None if stage.consumes or stage.fans_out else stage.decoder_op()
        if op is None:
            return ()
        ops.append(op)
    return tuple(ops)


def apply_ops(pixels: np.ndarray, ops: Sequence[Any]) -> np.ndarray:
    """Run ``ops`` on ``(H, W, C)`` uint8 pixels in the worker (16-bit pixels are left alone)."""
    if not ops or pixels.dtype.itemsize != 1:
        return pixels
    for op in ops:
        pixels = op.apply(pixels)
    return pixels


class DecodedItem:
    """An input whose stages the decoder already applied, as the writer takes it; no torch.

    Has what :meth:`imgflow.engine.writer.OutputWriter.write` and the recorder read of an
    :class:`imgflow.batch.Item`: ``uint8`` is the ``(C, H, W)`` view of the worker's 8-bit
    pixels, and ``image``/``alpha`` float numpy arrays in [0, 1], made only when asked (a JPEG
    with alpha is flattened onto white in floats).
    """

    variant = ""
    write_image = True

    def __init__(self, source: str, pixels: np.ndarray, meta: ImageMeta) -> None:
        self.source = source
        self.meta = meta
        self.results: dict[str, Any] = {}
        self.artifacts: list[Artifact] = []
        self._pixels = pixels  # (H, W, C) uint8

    @property
    def uint8(self) -> np.ndarray:
        return self._pixels.transpose(2, 0, 1)

    @property
    def image(self) -> np.ndarray:
        return self._pixels[..., :3].astype("float32") / 255.0

    @property
    def alpha(self) -> np.ndarray | None:
        return self._pixels[..., 3].astype("float32") / 255.0 if self._pixels.shape[2] == 4 else None
