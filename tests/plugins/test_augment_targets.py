"""Boxes and masks follow the geometric augmenters (plugins/imgflow_augment/targets.py).

Every op is checked against torchvision's transforms v2 with the same parameters: the image
through ``F.<op>``, an XYXY ``tv_tensors.BoundingBoxes`` and a ``tv_tensors.Mask`` through the
same call, then ``SanitizeBoundingBoxes`` (torchvision's rule for boxes a crop cut away).
"""

from __future__ import annotations

import pytest
import torch
from imgflow_augment import compose, stages
from imgflow_augment import targets as t
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from imgflow import StageContext, Targets
from imgflow.batch import Batch
from imgflow.testing import make_item

H, W = 40, 60
BOXES = torch.tensor([[5.0, 4.0, 25.0, 30.0], [30.5, 10.0, 58.0, 38.0], [0.0, 0.0, 6.0, 5.0]])
LABELS = torch.tensor([1, 2, 1])


def mask_of(boxes: torch.Tensor, labels: torch.Tensor, height: int = H, width: int = W) -> torch.Tensor:
    """A (1, H, W) int64 mask painting each box's class, so masks and boxes can be told apart."""
    mask = torch.zeros(1, height, width, dtype=torch.int64)
    for (x1, y1, x2, y2), label in zip(boxes.round().long().tolist(), labels.tolist(), strict=True):
        mask[0, y1:y2, x1:x2] = label
    mask[0, -1, :7] = 255  # an ignore strip: it must travel like the rest
    return mask


def item_with_targets():
    item = make_item(H, W, source="a.png")
    item.targets = Targets(boxes=BOXES.clone(), labels=LABELS.clone(), mask=mask_of(BOXES, LABELS))
    return item


def reference(op, *args, **kwargs):
    """torchvision v2 on the same image, boxes and mask; then its box sanitiser."""
    boxes = tv_tensors.BoundingBoxes(BOXES.clone(), format="XYXY", canvas_size=(H, W))
    sample = {"image": tv_tensors.Image(make_item(H, W, source="a.png").image), "boxes": boxes,
              "mask": tv_tensors.Mask(mask_of(BOXES, LABELS)), "labels": LABELS.clone()}
    moved = {key: op(value, *args, **kwargs) if key != "labels" else value for key, value in sample.items()}
    return v2.SanitizeBoundingBoxes(min_size=1)(moved)


def check(item, expected) -> None:
    assert item.image.shape == expected["image"].shape
    assert torch.allclose(item.image, expected["image"], atol=2e-6)
    assert torch.allclose(item.targets.boxes, expected["boxes"].as_subclass(torch.Tensor), atol=1e-4)
    assert torch.equal(item.targets.labels, expected["labels"])
    assert torch.equal(item.targets.mask, expected["mask"].as_subclass(torch.Tensor))


def stage(cls, **params):
    return cls(cls.Params(**params), StageContext(stage_id=cls.name))


@pytest.mark.parametrize("cls,op", [(stages.FlipHorizontal, TF.horizontal_flip), (stages.FlipVertical, TF.vertical_flip)])
def test_flips_move_boxes_and_masks_like_torchvision(cls, op):
    item = item_with_targets()
    stage(cls, p=1.0).apply([item], [True])
    check(item, reference(op))
    untouched = item_with_targets()
    stage(cls, p=1.0).apply([untouched], [False])
    assert torch.equal(untouched.targets.boxes, BOXES)


def test_random_resized_crop_clips_and_drops_like_torchvision():
    box = (3, 20, 30, 35)  # top, left, h, w: cuts box 0, keeps part of box 1, drops box 2
    item = item_with_targets()
    stage(stages.RandomResizedCrop, size=[24, 32]).apply([item], [box])
    expected = reference(TF.resized_crop, *box, size=[24, 32], antialias=True)
    check(item, expected)
    assert item.targets.labels.tolist() == [1, 2]  # the corner box left the crop


def test_resize_scales_boxes_and_resamples_masks_nearest():
    item = item_with_targets()
    stage(stages.Resize, size=[30, 90]).apply([item], [None])
    check(item, reference(TF.resize, size=[30, 90], antialias=True))
    assert set(item.targets.mask.unique().tolist()) <= {0, 1, 2, 255}


def test_center_crop_pads_masks_with_the_ignore_index():
    item = item_with_targets()
    stage(stages.CenterCrop, size=[50, 30]).apply([item], [None])  # taller than the image: padded
    expected = reference(TF.center_crop, output_size=[50, 30])
    assert torch.allclose(item.image, expected["image"], atol=1e-6)
    assert torch.allclose(item.targets.boxes, expected["boxes"].as_subclass(torch.Tensor))
    assert torch.equal(item.targets.labels, expected["labels"])
    inside = expected["mask"].as_subclass(torch.Tensor)[:, 5:45]
    assert torch.equal(item.targets.mask[:, 5:45], inside)  # the image's rows agree with torchvision
    assert (item.targets.mask[:, :5] == t.IGNORE_INDEX).all()  # torchvision pads with 0; we ignore
    assert (item.targets.mask[:, 45:] == t.IGNORE_INDEX).all()


def test_colour_ops_leave_targets_alone_and_augment_copies_keep_their_own():
    item = item_with_targets()
    original = item.targets
    jitter = stage(stages.ColorJitter, brightness=0.5)
    jitter.process(Batch(items=[item]))
    assert item.targets is original
    augment = stage(compose.Augment, copies=4, ops=[{"op": "flip_horizontal", "p": 0.5},
                                                  {"op": "random_resized_crop", "size": 32, "scale": [0.3, 1.0]}])
    source = item_with_targets()
    out = augment.process(Batch(items=[source]))
    assert len(out.items) == 4
    assert torch.equal(source.targets.boxes, BOXES)  # the parent's targets were never edited
    for copy in out.items:
        boxes = copy.targets.boxes
        assert copy.targets.mask.shape == (1, 32, 32) and copy.image.shape == (3, 32, 32)
        assert boxes.shape[0] == copy.targets.labels.shape[0]
        assert (boxes >= 0).all() and (boxes <= 32).all()
        # every kept box still covers pixels of its own class in the moved mask
        for (x1, y1, x2, y2), label in zip(boxes.tolist(), copy.targets.labels.tolist(), strict=True):
            window = copy.targets.mask[0, int(y1):max(int(y1) + 1, int(y2)), int(x1):max(int(x1) + 1, int(x2))]
            assert (window == label).any()
    assert len({tuple(c.targets.boxes.flatten().tolist()) for c in out.items}) > 1  # copies differ


def test_items_without_targets_are_untouched_and_empty_boxes_survive():
    plain = make_item(H, W)
    stage(stages.RandomResizedCrop, size=16).apply([plain], [(0, 0, 20, 20)])
    assert plain.targets is None
    empty = make_item(H, W)
    empty.targets = Targets(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64))
    stage(stages.FlipHorizontal).apply([empty], [True])
    stage(stages.Resize, size=20).apply([empty], [None])
    assert empty.targets.boxes.shape == (0, 4) and empty.targets.labels.shape == (0,)
