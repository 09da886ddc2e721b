"""The detection maths of d2l.ai (SPEC.md section 4) against the book's worked examples.

The numbers are the ones the book prints (its anchor example on the 728 x 561 cat-and-dog photo,
the labelling example with five anchors and two ground truths, the NMS example with four
predictions), as transcribed in the shared seed notes; torchvision's box_iou is the reference for
IoU.
"""

from __future__ import annotations

import pytest
import torch
from imgflow_detect import anchors as A
from imgflow_detect import tiny_ssd

GROUND_TRUTH = torch.tensor([[0, 0.1, 0.08, 0.52, 0.92], [1, 0.55, 0.2, 0.9, 0.88]])  # dog, cat
FIVE_ANCHORS = torch.tensor([[0, 0.1, 0.2, 0.3], [0.15, 0.2, 0.4, 0.4], [0.63, 0.05, 0.88, 0.98],
                             [0.66, 0.45, 0.8, 0.8], [0.57, 0.3, 0.92, 0.9]])


def test_anchors_of_the_728_by_561_example():
    h, w = 561, 728
    y = A.multibox_prior(h, w, sizes=[0.75, 0.5, 0.25], ratios=[1, 2, 0.5])
    assert y.shape == (1, 2042040, 4)  # 561 * 728 pixels x (3 + 3 - 1) anchors
    boxes = y.reshape(h, w, 5, 4)
    expected = torch.tensor([[0.06, 0.07, 0.63, 0.82], [0.15, 0.20, 0.54, 0.70], [0.25, 0.32, 0.44, 0.57],
                             [-0.06, 0.18, 0.75, 0.71], [0.14, -0.08, 0.55, 0.98]])
    assert torch.allclose(boxes[250, 250], expected, atol=0.005)
    scaled = boxes[250, 250, :3] * torch.tensor([w, h, w, h])
    printed = torch.tensor([[40.13, 40.12, 460.88, 460.87], [110.25, 110.25, 390.75, 390.75],
                            [180.38, 180.38, 320.62, 320.62]])
    assert torch.allclose(scaled, printed, atol=0.01)


def test_box_iou_agrees_with_torchvision():
    from torchvision.ops import box_iou

    gen = torch.Generator().manual_seed(0)
    corners = torch.rand(20, 2, 2, generator=gen).sort(dim=1).values  # x1 <= x2, y1 <= y2
    boxes = torch.stack([corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0], corners[:, 1, 1]], dim=1)
    assert torch.allclose(A.box_iou(boxes[:12], boxes[8:]), box_iou(boxes[:12], boxes[8:]), atol=1e-6)
    assert A.box_iou(GROUND_TRUTH[:1, 1:], GROUND_TRUTH[:1, 1:]).item() == pytest.approx(1.0)


def test_labelling_five_anchors_with_two_ground_truths():
    offsets, masks, labels = A.multibox_target(FIVE_ANCHORS.unsqueeze(0), [GROUND_TRUTH[:, 1:]],
                                               [GROUND_TRUTH[:, 0]])
    assert labels.tolist() == [[0, 1, 2, 0, 2]]  # background, dog, cat, background, cat
    assert masks.tolist() == [[0.0] * 4 + [1.0] * 8 + [0.0] * 4 + [1.0] * 4]
    book = torch.tensor([[0, 0, 0, 0, 1.40, 10.0, 2.59, 7.18, -1.20, 0.269, 1.68, -1.57,
                          0, 0, 0, 0, -0.571, -1.00, 4.17e-06, 0.626]])
    assert torch.allclose(offsets, book, atol=0.006)


def test_the_seed_notes_offsets_are_the_unparenthesised_formula():
    """The seed transcription prints -7.90, -10, -23, -0.138 for anchors 1 and 2: that is
    10 * (b - a / w), its missing parentheses, not SPEC's 10 * (b - a) / w implemented here."""
    a = A.box_corner_to_center(FIVE_ANCHORS[1:3])
    b = A.box_corner_to_center(GROUND_TRUTH[:, 1:])
    slipped = 10 * (b[:, :2] - a[:, :2] / a[:, 2:])
    assert torch.allclose(slipped, torch.tensor([[-7.90, -10.0], [-22.95, -0.138]]), atol=0.01)
    assert torch.allclose(A.offset_boxes(FIVE_ANCHORS[1:3], GROUND_TRUTH[:, 1:])[:, :2],
                          torch.tensor([[1.40, 10.0], [-1.20, 0.269]]), atol=0.005)


def test_offsets_invert():
    gen = torch.Generator().manual_seed(1)
    anchors = A.box_center_to_corner(torch.rand(50, 4, generator=gen) * 0.5 + 0.1)
    boxes = A.box_center_to_corner(torch.rand(50, 4, generator=gen) * 0.5 + 0.1)
    assert torch.allclose(A.offset_inverse(anchors, A.offset_boxes(anchors, boxes, eps=0)), boxes, atol=1e-5)


def test_non_maximum_suppression_example():
    anchors = torch.tensor([[0.1, 0.08, 0.52, 0.92], [0.08, 0.2, 0.56, 0.95], [0.15, 0.3, 0.62, 0.91],
                            [0.55, 0.2, 0.9, 0.88]])
    offsets = torch.zeros(anchors.numel())
    cls_probs = torch.tensor([[0.0] * 4, [0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.9]])  # background, dog, cat
    out = A.multibox_detection(cls_probs.unsqueeze(0), offsets.unsqueeze(0), anchors.unsqueeze(0), nms_threshold=0.5)
    book = torch.tensor([[0.00, 0.90, 0.10, 0.08, 0.52, 0.92], [1.00, 0.90, 0.55, 0.20, 0.90, 0.88],
                         [-1.00, 0.80, 0.08, 0.20, 0.56, 0.95], [-1.00, 0.70, 0.15, 0.30, 0.62, 0.91]])
    assert torch.allclose(out[0], book, atol=1e-6)


def test_tiny_ssd_has_five_scales_and_5444_anchors_at_256():
    torch.manual_seed(0)
    net = tiny_ssd.TinySSD(num_classes=1)
    anchors, cls_preds, bbox_preds = net(torch.zeros(2, 3, 256, 256))
    assert anchors.shape == (1, 5444, 4)  # (32^2 + 16^2 + 8^2 + 4^2 + 1) x 4
    assert cls_preds.shape == (2, 5444, 2) and bbox_preds.shape == (2, 5444 * 4)
    sizes, x = [], torch.zeros(1, 3, 256, 256)
    for i in range(5):
        x = getattr(net, f"blk_{i}")(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(64, 32, 32), (128, 16, 16), (128, 8, 8), (128, 4, 4), (128, 1, 1)]
    # the book's module names: blk_i, cls_i, bbox_i (blk_4, the global max pool, has no weights)
    assert [name for name, _ in net.named_children()] == [f"{p}_{i}" for i in range(5) for p in ("blk", "cls", "bbox")]
    assert "blk_0.0.0.weight" in net.state_dict() and "cls_4.weight" in net.state_dict()
    # the first scale's first anchor: size 0.2 at ratio 1, centred on pixel (0.5, 0.5) of 32 x 32
    assert torch.allclose(anchors[0, 0], torch.tensor([0.5 / 32 - 0.1, 0.5 / 32 - 0.1, 0.5 / 32 + 0.1, 0.5 / 32 + 0.1]))


def test_tiny_ssd_loss_is_cross_entropy_plus_masked_l1():
    cls_preds = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])  # one image, two anchors, background + 1 class
    cls_labels = torch.tensor([[0, 1]])
    bbox_preds = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 0.5]])
    bbox_labels = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.5, 1.5]])
    masks = torch.tensor([[0.0] * 4 + [1.0] * 4])  # the first anchor's offsets do not count
    ce = (torch.log1p(torch.exp(torch.tensor(-2.0))) + torch.log1p(torch.exp(torch.tensor(-1.0)))) / 2
    l1 = (0.5 + 0.5 + 0.0 + 1.0) / 8
    loss = tiny_ssd.calc_loss(cls_preds, cls_labels, bbox_preds, bbox_labels, masks)
    assert loss.shape == (1,) and loss.item() == pytest.approx(float(ce) + l1, rel=1e-6)
