"""The single-op augmentation stages: flips, random resized crop, colour jitter, resize and center
crop (``augment``, which composes them into N random copies per input, is in :mod:`.compose`).

Every stage splits its work in two: ``draw`` samples one item's random parameters on the CPU from
that item's own generator (so the draw never depends on the batch), and ``apply`` runs the tensor
op on the batch's device, one batched call per group of same-size images. ``augment`` reuses the
same two halves of its ops on fan-out copies.

An item that carries training targets (boxes and a mask, in training runs of detectors and
segmenters) has them moved by the same drawn parameters (``move_targets``, see
:mod:`imgflow_augment.targets`), so a flipped or cropped image keeps its labels in place.

This module does not import torch at import time (the tensor code lives in :mod:`.ops`, imported
when a batch is processed), so listing and validating stages stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from imgflow import Params, Stage, StageContext, StageKind
from imgflow.stage import DecodeHint

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Batch, Item, Targets


#: The largest output a size may ask for: s x s, or h x w. It is the default [run] max_pixels, the
#: most imgflow reads as input; a bigger output fails every item (memory), so validate refuses it.
MAX_OUTPUT_PIXELS = 100_000_000


def _check_size(value: Any) -> Any:
    """Reject anything but an int >= 1 or two of them, with one clear message, and sizes whose
    output (s x s, or h x w) would exceed :data:`MAX_OUTPUT_PIXELS`.

    Without this, pydantic reports a bad size once per member of the union, with type names
    as locations, which reads badly in a pipeline error.
    """

    def ok(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if ok(value):
        pair = (value, value)
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(ok(v) for v in value):
        pair = (value[0], value[1])
    else:
        shown = repr(value) if len(repr(value)) <= 80 else f"{repr(value)[:80]}..."
        raise ValueError(f"expected an int >= 1 or [height, width] of ints >= 1, got {shown} "
                         "(fix: e.g. size = 256, or size = [200, 300] for height 200 and width 300)")
    if pair[0] * pair[1] > MAX_OUTPUT_PIXELS:
        shown = f"{value} x {value}" if ok(value) else f"{pair[0]} x {pair[1]}"
        raise ValueError(f"size {value!r} asks for images of {shown} pixels, more than the "
                         f"{MAX_OUTPUT_PIXELS:,} imgflow handles (the default [run] max_pixels), so every "
                         "image would fail (fix: a size of at most 10000, or [h, w] with h x w <= 100,000,000)")
    return value if ok(value) else tuple(value)


Size = Annotated[int | tuple[int, int], BeforeValidator(_check_size)]
Interpolation = Literal["bilinear", "bicubic", "nearest", "area"]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]

#: Resampling filters run on 8-bit pixels within one level of the float path (torch's uint8
#: kernels; its uint8 bicubic rounds and clips between passes, up to 26 levels off on noise, and
#: it has no uint8 area filter): images stay uint8 through these, and go float for the others.
UINT8_INTERPOLATIONS = ("bilinear", "nearest")

SIZE_HELP = "Output size: [height, width], or one int for a square."
INTERPOLATION_HELP = "Resampling filter: bilinear, bicubic, nearest or area."
ANTIALIAS_HELP = "Low-pass filter when shrinking (bilinear and bicubic only), as torchvision does."


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """A size parameter as ``(height, width)``."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


# ---------------------------------------------------------------------------------------------
# The shared draw/apply machinery
# ---------------------------------------------------------------------------------------------


class Augmenter(Stage):
    """Base of the augmentation stages (not registered itself).

    Subclasses set ``random`` (whether ``draw`` is needed), ``geometric`` (whether alpha moves
    with the image) and implement ``transform`` on a stacked ``(N, C, H, W)`` group.

    Geometric ops also work on 8-bit pixels (``works_on_uint8``): an item that still holds them
    (:class:`imgflow.batch.Item`) is transformed as uint8, alpha included as its fourth channel,
    and never converted to float32 here. ``uint8_on`` says where an op can do that.
    """

    kind: ClassVar[StageKind] = StageKind.AUGMENT
    random: ClassVar[bool] = True
    geometric: ClassVar[bool] = True
    working_copies: ClassVar[float] = 1.0  # the op's result; inputs are dropped as they go

    def uint8_on(self, device: torch.device) -> bool:
        """True when ``transform`` can take uint8 pixels on ``device`` (default: what
        ``works_on_uint8`` says)."""
        return self.works_on_uint8

    def draw(self, gen: torch.Generator, height: int, width: int) -> Any:
        """One item's random parameters for an image of ``height x width`` (None: none needed)."""
        return None

    def transform(self, x: torch.Tensor, params: list[Any]) -> torch.Tensor:
        """Apply the op to a same-size group; ``params[i]`` belongs to ``x[i]``."""
        raise NotImplementedError

    def move_targets(self, targets: Targets, param: Any, height: int, width: int) -> Targets:
        """The item's boxes and mask after this op with the item's ``param``, from an image of
        ``height x width``. Colour ops leave them as they are; geometric ops override this."""
        return targets

    def apply(self, items: list[Item], params: list[Any]) -> None:
        """Transform ``items`` in place (image, alpha for geometric ops, and any targets).

        Items are grouped by size (and by whether alpha travels along) so each group is one
        stacked call; a batch of equal sizes is a single group. Alpha is concatenated as a
        fourth channel so geometric ops move it exactly like the colour channels.
        """
        import torch

        for item, param in zip(items, params, strict=True):  # before the image changes size
            if item.targets is not None:
                item.targets = self.move_targets(item.targets, param, *item.size)
        groups: dict[tuple[int, int, bool, bool], list[int]] = {}
        for i, item in enumerate(items):
            as_uint8 = item.uint8 is not None and self.uint8_on(item.uint8.device)
            with_alpha = self.geometric and (item.uint8.shape[0] == 4 if as_uint8 else item.alpha is not None)
            groups.setdefault((*item.size, with_alpha, as_uint8), []).append(i)
        for (_, _, with_alpha, as_uint8), idxs in groups.items():
            planes = [_planes(items[i], with_alpha, as_uint8) for i in idxs]
            if planes[0].device.type == "cpu" and len(planes) > 1:
                # On the CPU stacking only adds a copy of every image (measured: 2.1 s of a
                # 7.9 s run over 500 photos); batching pays off on a GPU, where it saves launches.
                for i, plane in zip(idxs, planes, strict=True):
                    _store(items[i], self.transform(plane.unsqueeze(0), [params[i]])[0], with_alpha, as_uint8)
                continue
            x = planes[0].unsqueeze(0) if len(planes) == 1 else torch.stack(planes)
            y = self.transform(x, [params[i] for i in idxs]).contiguous()
            for row, i in zip(y, idxs, strict=True):
                _store(items[i], row, with_alpha, as_uint8)

    def process(self, batch: Batch) -> Batch:
        """Draw each item's parameters from its own generator, then apply them batched."""
        if self.random:
            params = [self.draw(item.generator(self.id), *item.size) for item in batch]
        else:
            params = [None] * len(batch)
        self.apply(batch.items, params)
        return batch


def _planes(item: Item, with_alpha: bool, as_uint8: bool) -> torch.Tensor:
    """The item's image, with alpha appended as channel 4 when it must move along.

    8-bit pixels already carry their alpha as channel 4.
    """
    import torch

    if as_uint8:  # only geometric ops take 8-bit pixels: the alpha channel moves along
        assert item.uint8 is not None
        return item.uint8
    if with_alpha:
        assert item.alpha is not None
        return torch.cat([item.image, item.alpha.to(item.image.dtype)], dim=0)
    return item.image


def _store(item: Item, result: torch.Tensor, with_alpha: bool, as_uint8: bool) -> None:
    """Put an op's result back: 8-bit pixels whole, or float image and (moved) alpha."""
    if as_uint8:
        item.set_uint8(result)
        return
    item.image = result[:3]
    if with_alpha:
        item.alpha = result[3:]


# ---------------------------------------------------------------------------------------------
# Flips
# ---------------------------------------------------------------------------------------------


class FlipParams(Params):
    p: Probability = Field(0.5, description="Probability that an image is flipped.")


class FlipHorizontal(Augmenter):
    name = "flip_horizontal"
    train_only = True  # random: in training runs, never applied to validation batches
    description = "Mirror images left-right with probability p."
    reads = ("image", "alpha")
    writes = ("image", "alpha")
    works_on_uint8 = True
    Params = FlipParams

    def draw(self, gen: torch.Generator, height: int, width: int) -> bool:
        from imgflow_augment import ops

        return ops.draw_chance(gen, self.params.p)

    def transform(self, x: torch.Tensor, params: list[bool]) -> torch.Tensor:
        from imgflow_augment import ops

        return ops.hflip(x, params)

    def move_targets(self, targets: Targets, param: bool, height: int, width: int) -> Targets:
        from imgflow_augment import targets as t

        return t.hflip(targets, width) if param else targets


class FlipVertical(FlipHorizontal):
    name = "flip_vertical"
    description = "Mirror images top-bottom with probability p."

    def transform(self, x: torch.Tensor, params: list[bool]) -> torch.Tensor:
        from imgflow_augment import ops

        return ops.vflip(x, params)

    def move_targets(self, targets: Targets, param: bool, height: int, width: int) -> Targets:
        from imgflow_augment import targets as t

        return t.vflip(targets, height) if param else targets


# ---------------------------------------------------------------------------------------------
# Random resized crop
# ---------------------------------------------------------------------------------------------


class RandomResizedCropParams(Params):
    size: Size = Field(..., description=SIZE_HELP)
    scale: tuple[float, float] = Field(
        (0.08, 1.0), description="[min, max] area of the crop as a fraction of the image, drawn uniformly."
    )
    ratio: tuple[float, float] = Field(
        (3 / 4, 4 / 3),
        description="[min, max] aspect ratio (width / height) of the crop, drawn log-uniformly.",
    )
    interpolation: Interpolation = Field("bilinear", description=INTERPOLATION_HELP)
    antialias: bool = Field(True, description=ANTIALIAS_HELP)

    @field_validator("scale")
    @classmethod
    def _scale_in_unit_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"expected 0 < min <= max <= 1, got {list(v)} (fix: e.g. [0.08, 1.0])")
        return v

    @field_validator("ratio")
    @classmethod
    def _ratio_positive(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"expected 0 < min <= max, got {list(v)} (fix: e.g. [0.75, 1.3333])")
        return v


class RandomResizedCrop(Augmenter):
    name = "random_resized_crop"
    train_only = True  # random: in training runs, never applied to validation batches
    description = "Crop a random area/aspect-ratio box and resize it to a fixed size (torchvision semantics)."
    reads = ("image", "alpha")
    writes = ("image", "alpha")
    Params = RandomResizedCropParams

    @property
    def works_on_uint8(self) -> bool:  # type: ignore[override]
        return self.params.interpolation in UINT8_INTERPOLATIONS

    def uint8_on(self, device: torch.device) -> bool:
        return self.works_on_uint8 and device.type == "cpu"  # uint8 resampling is CPU-only

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return (*_pair(self.params.size), 1)

    def draw(self, gen: torch.Generator, height: int, width: int) -> tuple[int, int, int, int]:
        from imgflow_augment import ops

        return ops.draw_resized_crop_box(gen, height, width, self.params.scale, self.params.ratio)

    def transform(self, x: torch.Tensor, params: list[tuple[int, int, int, int]]) -> torch.Tensor:
        """Each item has its own box, so crops are resized one by one and then restacked."""
        import torch

        from imgflow_augment import ops

        size, p = _pair(self.params.size), self.params
        crops = [
            ops.resized_crop(x[i : i + 1], box, size, p.interpolation, p.antialias)
            for i, box in enumerate(params)
        ]
        return crops[0] if len(crops) == 1 else torch.cat(crops)

    def move_targets(self, targets: Targets, param: tuple[int, int, int, int], height: int,
                     width: int) -> Targets:
        from imgflow_augment import targets as t

        return t.resized_crop(targets, param, _pair(self.params.size))


# ---------------------------------------------------------------------------------------------
# Colour jitter
# ---------------------------------------------------------------------------------------------

JitterValue = float | tuple[float, float]
INF = float("inf")


def jitter_range(
    value: JitterValue, center: float, bounds: tuple[float, float], clip_at_zero: bool
) -> tuple[float, float] | None:
    """The ``[min, max]`` a jitter factor is drawn from, or None when the op is disabled.

    A number v means ``[center - v, center + v]`` (the lower end clipped at 0 for factors); a
    pair is taken as is. Raises ValueError, naming the accepted range, when it is out of bounds.
    """
    inside = f"[{bounds[0]:g}, {'no upper limit' if bounds[1] == INF else format(bounds[1], 'g')}]"
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"expected a number >= 0 or a [min, max] pair, got {value} (fix: a strength "
                             f"is >= 0, e.g. 0.2 draws from [{max(center - 0.2, bounds[0]):g}, {center + 0.2:g}])")
        lo, hi = center - value, center + value
        if clip_at_zero:
            lo = max(lo, 0.0)
    else:
        lo, hi = float(value[0]), float(value[1])
    if not bounds[0] <= lo <= hi <= bounds[1]:
        raise ValueError(f"expected a range inside {inside} with min <= max, got [{lo:g}, {hi:g}] "
                         f"(fix: give [min, max] with min <= max, both inside {inside})")
    return None if lo == hi == center else (lo, hi)


class ColorJitterParams(Params):
    brightness: JitterValue = Field(
        0.0, description="Brightness factor range: b means [max(0, 1-b), 1+b], or give [min, max]; 0 = off."
    )
    contrast: JitterValue = Field(
        0.0, description="Contrast factor range: c means [max(0, 1-c), 1+c], or give [min, max]; 0 = off."
    )
    saturation: JitterValue = Field(
        0.0, description="Saturation factor range: s means [max(0, 1-s), 1+s], or give [min, max]; 0 = off."
    )
    hue: JitterValue = Field(
        0.0,
        description="Hue shift range in turns: h in [0, 0.5] means [-h, h], or [min, max] in [-0.5, 0.5].",
    )

    @field_validator("brightness", "contrast", "saturation")
    @classmethod
    def _factor_range_valid(cls, v: JitterValue) -> JitterValue:
        jitter_range(v, 1.0, (0.0, INF), clip_at_zero=True)
        return v

    @field_validator("hue")
    @classmethod
    def _hue_range_valid(cls, v: JitterValue) -> JitterValue:
        jitter_range(v, 0.0, (-0.5, 0.5), clip_at_zero=False)
        return v

    def ranges(self) -> list[tuple[float, float] | None]:
        """Brightness, contrast, saturation and hue draw ranges (None = disabled)."""
        factor = [
            jitter_range(v, 1.0, (0.0, INF), True) for v in (self.brightness, self.contrast, self.saturation)
        ]
        return [*factor, jitter_range(self.hue, 0.0, (-0.5, 0.5), False)]


class ColorJitter(Augmenter):
    name = "color_jitter"
    train_only = True  # random: in training runs, never applied to validation batches
    description = "Randomly change brightness, contrast, saturation and hue, in a random order per image."
    geometric = False
    working_copies = 3.0  # each adjustment makes a temporary or two as large as the image
    Params = ColorJitterParams

    def __init__(self, params: Params, context: StageContext) -> None:
        super().__init__(params, context)
        self._ranges = self.params.ranges()

    def draw(self, gen: torch.Generator, height: int, width: int) -> tuple[list[int], list[float | None]]:
        from imgflow_augment import ops

        return ops.draw_jitter(gen, self._ranges)

    def transform(self, x: torch.Tensor, params: list[tuple[list[int], list[float | None]]]) -> torch.Tensor:
        """Per-item orders and factors become ``(N, 4)`` and ``(4, N)`` tensors for one call."""
        import torch

        from imgflow_augment import ops

        order = torch.tensor([p[0] for p in params], dtype=torch.long)
        neutral = (1.0, 1.0, 1.0, 0.0)  # placeholders for disabled ops, never applied
        factors = torch.tensor(
            [[neutral[k] if f[k] is None else f[k] for _, f in params] for k in range(4)], dtype=torch.float32
        )
        active = [r is not None for r in self._ranges]
        return ops.color_jitter(x, order, factors, active)


# ---------------------------------------------------------------------------------------------
# Deterministic geometry
# ---------------------------------------------------------------------------------------------


class ResizeParams(Params):
    size: Size = Field(..., description="[height, width], or one int for the edge named by `edge`.")
    edge: Literal["shorter", "longer"] = Field(
        "shorter",
        description="For an int size: which edge gets that length (the other keeps the aspect ratio).",
    )
    interpolation: Interpolation = Field("bilinear", description=INTERPOLATION_HELP)
    antialias: bool = Field(True, description=ANTIALIAS_HELP)

    @model_validator(mode="after")
    def _edge_needs_int_size(self) -> ResizeParams:
        if "edge" in self.model_fields_set and not isinstance(self.size, int):
            raise ValueError(
                f"'edge' only applies to an int size, got size {list(self.size)} "
                "(fix: drop 'edge', or give size as one int)"
            )
        return self


class Resize(Augmenter):
    name = "resize"
    description = "Resize to a fixed size, or scale the shorter/longer edge to a length (deterministic)."
    reads = ("image", "alpha")
    writes = ("image", "alpha")
    random = False
    Params = ResizeParams

    @property
    def works_on_uint8(self) -> bool:  # type: ignore[override]
        return self.params.interpolation in UINT8_INTERPOLATIONS

    def uint8_on(self, device: torch.device) -> bool:
        return self.works_on_uint8 and device.type == "cpu"  # uint8 resampling is CPU-only

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        from imgflow_augment.geometry import resize_output_size

        return (*resize_output_size(height, width, self.params.size, self.params.edge), 1)

    def decode_hint(self) -> DecodeHint | None:
        """A resize to a known size lets the decoder skip pixels it would throw away."""
        p = self.params
        if isinstance(p.size, int):
            return DecodeHint(edge=p.edge, size=p.size)
        return DecodeHint(edge="exact", size=(int(p.size[0]), int(p.size[1])))

    def decoder_op(self) -> Any:
        """Bilinear with antialiasing (the default) is Pillow's BILINEAR: the decoder can do it."""
        from imgflow_augment.decoder_ops import ResizeOp

        p = self.params
        if p.interpolation != "bilinear" or not p.antialias:
            return None
        return ResizeOp(p.size if isinstance(p.size, int) else (int(p.size[0]), int(p.size[1])), p.edge)

    def transform(self, x: torch.Tensor, params: list[None]) -> torch.Tensor:
        from imgflow_augment import ops

        p = self.params
        size = ops.resize_output_size(x.shape[-2], x.shape[-1], p.size, p.edge)
        return ops.resize(x, size, p.interpolation, p.antialias)

    def move_targets(self, targets: Targets, param: None, height: int, width: int) -> Targets:
        from imgflow_augment import ops
        from imgflow_augment import targets as t

        size = ops.resize_output_size(height, width, self.params.size, self.params.edge)
        return t.resize(targets, (height, width), size)


class CenterCropParams(Params):
    size: Size = Field(..., description=SIZE_HELP + " Smaller images are padded with zeros.")


class CenterCrop(Augmenter):
    name = "center_crop"
    description = "Cut the centred window of a fixed size, zero-padding smaller images (deterministic)."
    reads = ("image", "alpha")
    writes = ("image", "alpha")
    random = False
    works_on_uint8 = True
    Params = CenterCropParams

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return (*_pair(self.params.size), 1)

    def decoder_op(self) -> Any:
        from imgflow_augment.decoder_ops import CenterCropOp

        return CenterCropOp(_pair(self.params.size))

    def transform(self, x: torch.Tensor, params: list[None]) -> torch.Tensor:
        from imgflow_augment import ops

        return ops.center_crop(x, _pair(self.params.size))

    def move_targets(self, targets: Targets, param: None, height: int, width: int) -> Targets:
        from imgflow_augment import targets as t

        return t.center_crop(targets, (height, width), _pair(self.params.size))
