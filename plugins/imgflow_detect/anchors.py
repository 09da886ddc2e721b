"""Anchor boxes as d2l.ai's detection chapters define them (SPEC.md section 4), in plain torch.

Boxes are in corner form ``(x1, y1, x2, y2)``; IoU has no +1 convention. Coordinates may be
normalised (anchors: fractions of the image's width and height) or pixels, as long as both sides
of a comparison agree.

  anchors     per feature-map pixel, n sizes and m ratios give n + m - 1 boxes: (s_i, r_1) for
              every i, then (s_1, r_j) for j >= 2; width s * sqrt(r) * H / W, height s / sqrt(r),
              centred on ((x + 0.5) / W, (y + 0.5) / H);
  assignment  every anchor takes its best ground truth when their IoU >= 0.5; then, once per
              ground truth, the largest IoU left in the matrix is forced and its row and column
              are removed;
  offsets     (10 * dcx / w_a, 10 * dcy / h_a, 5 * log(w_b / w_a), 5 * log(h_b / h_a)); class 0
              is the background, so a ground truth of class c labels its anchors c + 1;
  inference   softmax, offsets decoded, non-maximum suppression at IoU 0.5 over the best class of
              every anchor, confidences under 0.01 dropped.

The functions follow the book's names and signatures where they exist (``multibox_prior``,
``box_iou``, ``assign_anchor_to_bbox``, ``offset_boxes``, ``offset_inverse``, ``multibox_target``,
``multibox_detection``), written from the formulas; tests check them against the book's worked
numbers. torch is imported at module level: this module is only imported by code that trains or
runs a detector.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: The offsets' scaling (the book's sigma_x = sigma_y = 0.1 and sigma_w = sigma_h = 0.2).
CENTRE_SCALE = 10.0
SIZE_SCALE = 5.0
#: An anchor is labelled with a ground truth when their IoU reaches this.
IOU_THRESHOLD = 0.5
#: multibox_detection's defaults: NMS IoU, and the confidence under which a box is background.
NMS_THRESHOLD = 0.5
POS_THRESHOLD = 0.009999999


def box_corner_to_center(boxes: torch.Tensor) -> torch.Tensor:
    """(x1, y1, x2, y2) -> (cx, cy, w, h), over the last dimension."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_center_to_corner(boxes: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2), over the last dimension."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def multibox_prior(height: int, width: int, sizes: Sequence[float], ratios: Sequence[float],
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Every anchor of a ``height x width`` feature map, ``(1, height * width * (n + m - 1), 4)``.

    Pixel by pixel (row-major), then the pixel's n + m - 1 shapes in the order above.
    Normalised coordinates; anchors near the border may reach past [0, 1], as in the book.
    """
    size = torch.tensor(sizes, dtype=torch.float32, device=device)
    ratio = torch.tensor(ratios, dtype=torch.float32, device=device)
    centre_y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    centre_x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    shift_y, shift_x = torch.meshgrid(centre_y, centre_x, indexing="ij")
    shift_y, shift_x = shift_y.reshape(-1), shift_x.reshape(-1)
    # half widths and heights: (s_i, r_1) for every size, then (s_1, r_j) for the other ratios
    w = torch.cat((size * torch.sqrt(ratio[0]), size[0] * torch.sqrt(ratio[1:]))) * height / width
    h = torch.cat((size / torch.sqrt(ratio[0]), size[0] / torch.sqrt(ratio[1:])))
    half = torch.stack((-w, -h, w, h)).T.repeat(height * width, 1) / 2
    per_pixel = len(sizes) + len(ratios) - 1
    centres = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1).repeat_interleave(per_pixel, dim=0)
    return (centres + half).unsqueeze(0)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise intersection over union, ``(len(boxes1), len(boxes2))``."""
    def area(b: torch.Tensor) -> torch.Tensor:
        return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])

    upper_left = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    lower_right = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    inter = (lower_right - upper_left).clamp(min=0).prod(dim=2)
    return inter / (area(boxes1)[:, None] + area(boxes2) - inter)


def assign_anchor_to_bbox(ground_truth: torch.Tensor, anchors: torch.Tensor,
                          iou_threshold: float = IOU_THRESHOLD) -> torch.Tensor:
    """For every anchor, the index of its ground truth, or -1 (background); ``(num_anchors,)``."""
    num_anchors, num_gt = anchors.shape[0], ground_truth.shape[0]
    assigned = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    if num_gt == 0:
        return assigned
    jaccard = box_iou(anchors, ground_truth)
    best_iou, best_gt = jaccard.max(dim=1)
    good = best_iou >= iou_threshold
    assigned[good] = best_gt[good]
    for _ in range(num_gt):  # force the best remaining pair of each ground truth
        flat = int(torch.argmax(jaccard))
        anchor, gt = divmod(flat, num_gt)
        assigned[anchor] = gt
        jaccard[:, gt] = -1
        jaccard[anchor, :] = -1
    return assigned


def offset_boxes(anchors: torch.Tensor, assigned: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The regression targets of ``assigned`` boxes relative to their ``anchors``, ``(A, 4)``."""
    a = box_corner_to_center(anchors)
    b = box_corner_to_center(assigned)
    centre = CENTRE_SCALE * (b[:, :2] - a[:, :2]) / a[:, 2:]
    size = SIZE_SCALE * torch.log(eps + b[:, 2:] / a[:, 2:])
    return torch.cat((centre, size), dim=1)


def offset_inverse(anchors: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The boxes that ``offsets`` predict from ``anchors`` (the inverse of :func:`offset_boxes`)."""
    a = box_corner_to_center(anchors)
    centre = offsets[:, :2] * a[:, 2:] / CENTRE_SCALE + a[:, :2]
    size = torch.exp(offsets[:, 2:] / SIZE_SCALE) * a[:, 2:]
    return box_center_to_corner(torch.cat((centre, size), dim=1))


def multibox_target(anchors: torch.Tensor, boxes: Sequence[torch.Tensor],
                    classes: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Offsets, offset masks and class labels of the anchors for a batch of ground truths.

    ``anchors`` ``(1, A, 4)`` or ``(A, 4)``; ``boxes[i]`` ``(n_i, 4)`` and ``classes[i]`` ``(n_i,)``
    (0-based object classes) for image i, in the anchors' coordinates. Returns ``(B, A * 4)``
    offsets (0 for background anchors), ``(B, A * 4)`` masks (1 where an offset counts) and
    ``(B, A)`` labels (0 = background, c + 1 for class c).
    """
    anchors = anchors.reshape(-1, 4)
    num_anchors = anchors.shape[0]
    offsets, masks, labels = [], [], []
    for gt_boxes, gt_classes in zip(boxes, classes, strict=True):
        gt_boxes = gt_boxes.to(anchors.device, anchors.dtype)
        assigned = assign_anchor_to_bbox(gt_boxes, anchors)
        positive = assigned >= 0
        mask = positive.to(anchors.dtype).unsqueeze(-1).repeat(1, 4)
        label = torch.zeros(num_anchors, dtype=torch.long, device=anchors.device)
        target = torch.zeros((num_anchors, 4), dtype=anchors.dtype, device=anchors.device)
        if bool(positive.any()):
            label[positive] = gt_classes.to(anchors.device).long()[assigned[positive]] + 1
            target[positive] = gt_boxes[assigned[positive]]
        offsets.append((offset_boxes(anchors, target) * mask).reshape(-1))
        masks.append(mask.reshape(-1))
        labels.append(label)
    return torch.stack(offsets), torch.stack(masks), torch.stack(labels)


def multibox_detection(cls_probs: torch.Tensor, offset_preds: torch.Tensor, anchors: torch.Tensor,
                       nms_threshold: float = NMS_THRESHOLD,
                       pos_threshold: float = POS_THRESHOLD) -> torch.Tensor:
    """Predicted boxes, ``(B, A, 6)``: class (-1: background or suppressed), confidence, box.

    ``cls_probs`` ``(B, classes + 1, A)`` (softmax output, row 0 the background),
    ``offset_preds`` ``(B, A * 4)``, ``anchors`` ``(1, A, 4)``. Per image: each anchor's best
    object class and its probability, the decoded box, NMS over all of them; the kept boxes come
    first in confidence order, then the suppressed ones; a confidence under ``pos_threshold``
    marks the box background and reports 1 - confidence, as the book does.
    """
    from torchvision.ops import nms

    anchors = anchors.reshape(-1, 4)
    num_anchors = anchors.shape[0]
    out = []
    for probs, offsets in zip(cls_probs, offset_preds, strict=True):
        conf, class_id = torch.max(probs[1:], dim=0)
        predicted = offset_inverse(anchors, offsets.reshape(-1, 4))
        keep = nms(predicted, conf, nms_threshold)
        dropped = torch.ones(num_anchors, dtype=torch.bool, device=conf.device)
        dropped[keep] = False
        order = torch.cat((keep, torch.nonzero(dropped).flatten()))
        class_id = class_id.clone()
        class_id[dropped] = -1
        class_id, conf, predicted = class_id[order], conf[order], predicted[order]
        low = conf < pos_threshold
        class_id[low] = -1
        conf = torch.where(low, 1 - conf, conf)
        out.append(torch.cat((class_id.unsqueeze(1).to(conf.dtype), conf.unsqueeze(1), predicted), dim=1))
    return torch.stack(out)
