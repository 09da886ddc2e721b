"""Items and batches: what flows between stages.

Layout (the one every stage can rely on):
  ``Item.image``  torch.float32, shape (3, H, W), sRGB in [0, 1], on the batch's device.
                  Grayscale inputs arrive as three equal channels; ``meta.mode`` says what the
                  file was. 16-bit inputs keep their levels (values are k/65535).
  ``Item.alpha``  None, or torch.float32 (1, H, W) in [0, 1] (straight, not premultiplied).
  ``Item.targets`` None, or the item's training labels (:class:`Targets`, in training runs of
                  detectors and segmenters): geometric augmenters move them with the pixels.
Stages return images in the same layout; the writer quantises to 8 or 16 bits at the end.

8-bit inputs are kept as 8-bit pixels (``Item.uint8``) until a stage reads ``image`` or
``alpha``: the conversion happens then, once, so the layout above holds for every stage that
reads them, while a chain of stages that work on 8-bit pixels (``Stage.works_on_uint8``: flips,
crops, resize) never makes the float copy, 4x the size. See :class:`Item`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imgflow.seeds import derive_seed

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


class Item:
    """One image travelling through the stages.

    ``source`` is the input file's path relative to the input root (posix form); it is the
    manifest key. ``variant`` distinguishes fan-out copies ("_aug0"); ``key`` = source + variant
    is the item's identity for random draws.

    8-bit pixels stay 8-bit until a stage needs floats. A decoded 8-bit image arrives as
    :attr:`uint8`: a torch.uint8 (C, H, W) tensor, C = 3, or 4 with straight alpha as the last
    channel, usually a channels-last view of the decoded buffer (a float32 copy is 4x its size:
    1.2 GB for a 100-megapixel image). The first read of :attr:`image` or :attr:`alpha` converts
    it once into the documented float layout, so a stage that only reads ``item.image`` sees no
    difference. A stage that can work on 8-bit pixels declares ``works_on_uint8 = True``, reads
    :attr:`uint8` while it is not None, and stores its result with :meth:`set_uint8` (never
    modifying the tensor it was given in place: it may be the decoded buffer, kept for retries);
    when every stage does, the writer encodes straight from the 8-bit pixels and no float copy is
    ever made. Assigning :attr:`image` (or :attr:`alpha`) makes the item a float item for good.
    """

    def __init__(self, source: str, image: torch.Tensor | None = None, meta: ImageMeta | None = None,
                 alpha: torch.Tensor | None = None, variant: str = "", seed: int = 0, epoch: int = 0,
                 results: dict[str, Any] | None = None, artifacts: list[Artifact] | None = None,
                 write_image: bool = True, *, uint8: torch.Tensor | None = None,
                 targets: Targets | None = None) -> None:
        if meta is None:
            raise TypeError("Item() needs meta (an ImageMeta)")
        if (image is None) == (uint8 is None):
            raise TypeError("Item() needs exactly one of image (float32) and uint8")
        self.source = source
        self.meta = meta
        self.variant = variant
        self.seed = seed  # pipeline seed
        self.epoch = epoch
        self.results: dict[str, Any] = {} if results is None else results  # stage id -> JSON-able result
        self.artifacts: list[Artifact] = [] if artifacts is None else artifacts
        self.write_image = write_image
        self.targets = targets  # training labels of detectors/segmenters (see Targets)
        self._image = image
        self._alpha = alpha
        self._uint8 = uint8

    def __repr__(self) -> str:
        kind = "uint8" if self._uint8 is not None else "float"
        height, width = self.size
        return f"Item({self.key!r}, {kind} {width}x{height})"

    # -- pixels

    @property
    def image(self) -> torch.Tensor:
        """float32 (3, H, W) in [0, 1]; converts 8-bit pixels on first access."""
        if self._image is None:
            self._to_float()
        assert self._image is not None
        return self._image

    @image.setter
    def image(self, value: torch.Tensor) -> None:
        pixels, self._uint8 = self._uint8, None
        if pixels is not None and pixels.shape[0] == 4:  # keep the alpha that rode along
            import torch

            self._alpha = pixels[3:4].to(torch.float32).mul_(1.0 / 255.0)
        self._image = value

    @property
    def alpha(self) -> torch.Tensor | None:
        """None, or float32 (1, H, W) in [0, 1]; converts 8-bit pixels on first access."""
        if self._uint8 is not None:
            self._to_float()
        return self._alpha

    @alpha.setter
    def alpha(self, value: torch.Tensor | None) -> None:
        if self._uint8 is not None:
            self._to_float()
        self._alpha = value

    @property
    def uint8(self) -> torch.Tensor | None:
        """The 8-bit pixels (C, H, W), alpha as channel 4 when present; None once the item is float."""
        return self._uint8

    def set_uint8(self, pixels: torch.Tensor) -> None:
        """Replace the 8-bit pixels with a stage's result (same channels, any size)."""
        if self._uint8 is None:
            raise ValueError(f"{self.key}: set_uint8 on an item that already holds float pixels")
        self._uint8 = pixels

    @property
    def size(self) -> tuple[int, int]:
        """(height, width), without converting anything."""
        pixels = self._uint8 if self._uint8 is not None else self._image
        assert pixels is not None
        return int(pixels.shape[-2]), int(pixels.shape[-1])

    def _to_float(self) -> None:
        """8-bit (C, H, W) -> one fresh float32 buffer; image and alpha are views of it."""
        import torch

        pixels, self._uint8 = self._uint8, None
        assert pixels is not None
        planes = torch.empty(pixels.shape, dtype=torch.float32, device=pixels.device)
        planes.copy_(pixels)  # channels-last in, contiguous planes out: the vectorised path
        planes.mul_(1.0 / 255.0)
        self._image = planes[:3]
        self._alpha = planes[3:4] if pixels.shape[0] == 4 else None

    # -- identity and randomness

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

    def derive(self, image: torch.Tensor | None, variant: str, alpha: torch.Tensor | None = None, *,
               uint8: torch.Tensor | None = None) -> Item:
        """A fan-out child: same source, new image (float, or ``uint8=``) and variant suffix;
        results are copied."""
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
            uint8=uint8,
            targets=self.targets,
        )


@dataclass
class Batch:
    """A list of items on one device. Images may differ in size."""

    items: list[Item]
    device: Any = "cpu"  # a torch.device once the stage chain has placed the batch
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
        return len({item.size for item in self.items}) <= 1

    def stack(self) -> torch.Tensor:
        """The images as one (N, 3, H, W) tensor; only valid when :meth:`same_size`."""
        import torch

        if not self.same_size():
            raise ValueError("images in this batch differ in size; process them one by one")
        return torch.stack(self.images)

    def with_items(self, items: list[Item]) -> Batch:
        return Batch(items=items, device=self.device, split=self.split)
