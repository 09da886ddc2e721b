"""Boxes and masks that follow the geometric augmentations (an item's :class:`imgflow.Targets`).

torchvision's transforms v2 is the model: a ``tv_tensors.BoundingBoxes`` in XYXY pixels and a
``tv_tensors.Mask`` go through the same flip, crop and resize as the image. Boxes are exact
arithmetic (no resampling); masks are class indices, so they are resized with nearest-neighbour
(``F.interpolate(mode="nearest")``, what torchvision uses for masks) and padded with 255, the
ignore index, where a centre crop pads the image (torchvision's segmentation references pad
targets with 255 for the same reason: the padding is no class).

After a crop or a resize, boxes are clipped to the new image and the ones narrower or shorter
than ``MIN_SIZE`` pixels are dropped with their labels (torchvision's ``ClampBoundingBoxes`` and
``SanitizeBoundingBoxes(min_size=1)``): an object the crop cut away is no longer a target.

This module is about tensors, so it imports torch at module level; the stage module imports it
lazily.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imgflow.batch import Targets

#: Boxes narrower or shorter than this (pixels, after the op) leave the targets.
MIN_SIZE = 1.0
#: The mask value of pixels that belong to no class (padding, VOC's object borders).
IGNORE_INDEX = 255


def _with(targets: Targets, boxes: torch.Tensor | None = None, labels: torch.Tensor | None = None,
          mask: torch.Tensor | None = None) -> Targets:
    """A new Targets: the given parts replaced, the others shared (tensors are never edited)."""
    return Targets(boxes=targets.boxes if boxes is None else boxes,
                   labels=targets.labels if labels is None else labels,
                   mask=targets.mask if mask is None else mask)


def _has_boxes(targets: Targets) -> bool:
    return targets.boxes is not None and targets.boxes.numel() > 0


def sanitize(targets: Targets, height: int, width: int, min_size: float = MIN_SIZE) -> Targets:
    """Clip the boxes to a ``height x width`` image and drop the degenerate ones (and their labels)."""
    if targets.boxes is None:
        return targets
    boxes = targets.boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    labels = targets.labels[keep] if targets.labels is not None else None
    return Targets(boxes=boxes[keep], labels=labels, mask=targets.mask)


def hflip(targets: Targets, width: int) -> Targets:
    """Mirror left-right in an image ``width`` pixels wide: x1' = W - x2, x2' = W - x1."""
    boxes = None
    if _has_boxes(targets):
        boxes = torch.stack([width - targets.boxes[:, 2], targets.boxes[:, 1],
                             width - targets.boxes[:, 0], targets.boxes[:, 3]], dim=1)
    mask = targets.mask.flip(-1) if targets.mask is not None else None
    return _with(targets, boxes=boxes, mask=mask)


def vflip(targets: Targets, height: int) -> Targets:
    """Mirror top-bottom in an image ``height`` pixels high."""
    boxes = None
    if _has_boxes(targets):
        boxes = torch.stack([targets.boxes[:, 0], height - targets.boxes[:, 3],
                             targets.boxes[:, 2], height - targets.boxes[:, 1]], dim=1)
    mask = targets.mask.flip(-2) if targets.mask is not None else None
    return _with(targets, boxes=boxes, mask=mask)


def _shift(boxes: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    return boxes + torch.tensor([dx, dy, dx, dy], dtype=boxes.dtype, device=boxes.device)


def _scale(boxes: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    return boxes * torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (1, H, W) integer mask resized with nearest-neighbour (values are classes, not levels)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    resized = F.interpolate(mask[None].float(), size=list(size), mode="nearest")[0]
    return resized.to(mask.dtype)


def resize(targets: Targets, in_size: tuple[int, int], out_size: tuple[int, int]) -> Targets:
    """Scale to a resize from ``in_size`` to ``out_size`` (both (h, w)); boxes clipped and sanitised."""
    (in_h, in_w), (out_h, out_w) = in_size, out_size
    boxes = _scale(targets.boxes, out_w / in_w, out_h / in_h) if _has_boxes(targets) else None
    mask = resize_mask(targets.mask, out_size) if targets.mask is not None else None
    return sanitize(_with(targets, boxes=boxes, mask=mask), out_h, out_w)


def crop(targets: Targets, top: int, left: int, height: int, width: int) -> Targets:
    """The part inside the window ``[top, top+height) x [left, left+width)``; boxes clipped and
    the ones that left the window dropped."""
    boxes = _shift(targets.boxes, -left, -top) if _has_boxes(targets) else None
    mask = targets.mask[..., top : top + height, left : left + width] if targets.mask is not None else None
    return sanitize(_with(targets, boxes=boxes, mask=mask), height, width)


def resized_crop(targets: Targets, box: tuple[int, int, int, int], size: tuple[int, int]) -> Targets:
    """RandomResizedCrop's geometry: crop ``box = (top, left, h, w)``, then resize it to ``size``."""
    top, left, height, width = box
    return resize(crop(targets, top, left, height, width), (height, width), size)


def center_crop(targets: Targets, in_size: tuple[int, int], size: tuple[int, int]) -> Targets:
    """The centred ``size`` window with the zero padding of :func:`imgflow_augment.ops.center_crop`
    (the mask is padded with the ignore index)."""
    (in_h, in_w), (out_h, out_w) = in_size, size
    pad_top = pad_left = 0
    if out_h > in_h or out_w > in_w:
        dh, dw = max(out_h - in_h, 0), max(out_w - in_w, 0)
        pad_top, pad_left = dh // 2, dw // 2
        if targets.mask is not None:
            padded = F.pad(targets.mask, [dw // 2, (dw + 1) // 2, dh // 2, (dh + 1) // 2], value=IGNORE_INDEX)
            targets = _with(targets, mask=padded)
        if _has_boxes(targets):
            targets = _with(targets, boxes=_shift(targets.boxes, pad_left, pad_top))
        in_h, in_w = in_h + dh, in_w + dw
    top = int(round((in_h - out_h) / 2.0))
    left = int(round((in_w - out_w) / 2.0))
    return crop(targets, top, left, out_h, out_w)
