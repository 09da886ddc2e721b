"""Items and batches: what flows between stages.

Layout (the one every stage can rely on):
  ``Item.image``  torch.float32, shape (3, H, W), sRGB in [0, 1], on the batch's device.
                  Grayscale inputs arrive as three equal channels; ``meta.mode`` says what the
                  file was. 16-bit inputs keep their levels (values are k/65535).
  ``Item.alpha``  None, or torch.float32 (1, H, W) in [0, 1] (straight, not premultiplied).
  ``Item.targets`` None, or the item's training labels (:class:`Targets`, in training runs of
                  detectors and segmenters): geometric augmenters move them with the pixels.
Stages return images in the same layout; the writer quantises to 8 or 16 bits at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imgflow.stage import derive_seed

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class ImageMeta:
    """Facts about the decoded file, carried to the writer and the manifest."""

    width: int  # after EXIF orientation, before any stage
    height: int
    mode: str  # Pillow mode of the file as opened ("L", "RGB", "I;16", "CMYK", "P", ...)
    format: str  # Pillow format name ("JPEG", "PNG", ...)
    bit_depth: int = 8  # 8 or 16: levels kept in ``image``
    frames: int = 1  # multi-frame files: only the first frame is processed
    orientation: int = 1  # EXIF orientation that was applied (1 = none)
    notes: list[str] = field(default_factory=list)  # non-fatal observations (e.g. bad EXIF)

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "mode": self.mode,
            "format": self.format,
            "bit_depth": self.bit_depth,
            "frames": self.frames,
            "orientation": self.orientation,
            **({"notes": list(self.notes)} if self.notes else {}),
        }


@dataclass
class Artifact:
    """An extra file a stage wants written, relative to the output root.

    Give either ``data`` (bytes written as-is) or ``image`` (a (C, H, W) float tensor in [0, 1],
    encoded by the writer in ``format``). ``relpath`` uses forward slashes; the writer refuses
    anything that would land outside the output root.
    """

    relpath: str
    data: bytes | None = None
    image: torch.Tensor | None = None
    format: str | None = None  # for image artifacts: "png", "jpeg", ...


@dataclass
class Targets:
    """What a detector or segmenter learns from one image, in that image's pixel coordinates.

    ``boxes``   float32 (N, 4): x1, y1, x2, y2 in pixels (corner form, no +1 convention);
    ``labels``  int64 (N,): the class index of each box;
    ``mask``    int64 (1, H, W) the image's size: a class index per pixel, 255 = ignore.
    Any of them may be None (a detector has no mask, a segmenter no boxes). A trainer provides them
    (``Stage.targets_of``); augmenters that move pixels (flip, crop, resize) move them too, and
    replace the object rather than change its tensors, so fan-out copies never share an edit.
    """

    boxes: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    mask: torch.Tensor | None = None


@dataclass
class Item:
    """One image travelling through the stages.

    ``source`` is the input file's path relative to the input root (posix form); it is the
    manifest key. ``variant`` distinguishes fan-out copies ("_aug0"); ``key`` = source + variant
    is the item's identity for random draws.
    """

    source: str
    image: torch.Tensor
    meta: ImageMeta
    alpha: torch.Tensor | None = None
    variant: str = ""
    seed: int = 0  # pipeline seed
    epoch: int = 0
    results: dict[str, Any] = field(default_factory=dict)  # stage id -> JSON-able result
    artifacts: list[Artifact] = field(default_factory=list)
    write_image: bool = True
    targets: Targets | None = None  # training labels of detectors/segmenters (see Targets)

    @property
    def key(self) -> str:
        return self.source + self.variant

    def item_seed(self, stage_id: str) -> int:
        """The seed for this item in one stage: same item, same stage, same seed, every run."""
        return derive_seed(self.seed, stage_id, self.key, self.epoch)

    def generator(self, stage_id: str) -> torch.Generator:
        """A CPU torch.Generator seeded for this item in ``stage_id``.

        Draw random parameters from it on the CPU, then apply them on any device: the draw
        does not depend on the device, the batch size or the other items of the batch.
        """
        import torch

        gen = torch.Generator(device="cpu")
        gen.manual_seed(self.item_seed(stage_id))
        return gen

    def derive(self, image: torch.Tensor, variant: str, alpha: torch.Tensor | None = None) -> Item:
        """A fan-out child: same source, new image and variant suffix; results are copied."""
        return Item(
            source=self.source,
            image=image,
            meta=self.meta,
            alpha=alpha,
            variant=self.variant + variant,
            seed=self.seed,
            epoch=self.epoch,
            results=dict(self.results),
            artifacts=list(self.artifacts),
            write_image=self.write_image,
            targets=self.targets,
        )


@dataclass
class Batch:
    """A list of items on one device. Images may differ in size."""

    items: list[Item]
    device: Any = "cpu"  # a torch.device once the runner has placed the batch
    split: str = "train"  # in training runs: "train" or "val" (batches never mix the two)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    @property
    def images(self) -> list[torch.Tensor]:
        return [item.image for item in self.items]

    def same_size(self) -> bool:
        """True when every image has one (H, W), so they can be stacked into one tensor."""
        shapes = {tuple(item.image.shape[-2:]) for item in self.items}
        return len(shapes) <= 1

    def stack(self) -> torch.Tensor:
        """The images as one (N, 3, H, W) tensor; only valid when :meth:`same_size`."""
        import torch

        if not self.same_size():
            raise ValueError("images in this batch differ in size; process them one by one")
        return torch.stack(self.images)

    def with_items(self, items: list[Item]) -> Batch:
        return Batch(items=items, device=self.device, split=self.split)
