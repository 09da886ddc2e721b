"""Validation of a detector: COCO mAP with pycocotools, and the preview pictures.

:class:`MapAccumulator` collects ground truths and predictions image by image (in the pixels of
the images the trainer saw) and asks pycocotools' ``COCOeval`` for the two standard figures:
mAP@[.5:.95] (``stats[0]``) and mAP@0.5 (``stats[1]``). Class k of the model is category k + 1.

No torch at import.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

GT_COLOUR = "#FFFFFF"


class MapAccumulator:
    """Ground truths and detections of one validation pass, for COCOeval."""

    def __init__(self, classes: list[str]) -> None:
        self.classes = classes
        self.images: list[dict[str, Any]] = []
        self.truths: list[dict[str, Any]] = []
        self.found: list[dict[str, Any]] = []

    def add(self, height: int, width: int, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
            boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """One image: ground truth (labels 0..K-1) and detections (labels 1..K, as models give)."""
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "width": int(width), "height": int(height)})
        for box, label in zip(gt_boxes.tolist(), gt_labels.tolist(), strict=True):
            x1, y1, x2, y2 = box
            self.truths.append({"id": len(self.truths) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
            x1, y1, x2, y2 = box
            self.found.append({"image_id": image_id, "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1],
                               "score": float(score)})

    def result(self) -> dict[str, float]:
        """``{"map": mAP@[.5:.95], "map50": mAP@0.5}``; NaN without ground truth, 0 without detections."""
        if not self.truths:
            return {"map": math.nan, "map50": math.nan}
        if not self.found:
            return {"map": 0.0, "map50": 0.0}
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            truth = COCO()
            truth.dataset = {"images": self.images, "annotations": self.truths,
                             "categories": [{"id": i + 1, "name": n} for i, n in enumerate(self.classes)]}
            truth.createIndex()
            evaluation = COCOeval(truth, truth.loadRes(self.found), "bbox")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        stats = evaluation.stats
        return {"map": max(0.0, float(stats[0])), "map50": max(0.0, float(stats[1]))}


def preview(image: torch.Tensor, gt_boxes: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
            labels: torch.Tensor, classes: list[str]) -> torch.Tensor:
    """The image with its ground truth (thin white) and the detections (coloured, labelled)."""
    import torch
    from torchvision.utils import draw_bounding_boxes

    from imgflow_detect.outputs import PALETTE

    canvas = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    if len(gt_boxes):
        canvas = draw_bounding_boxes(canvas, gt_boxes.float().cpu(), colors=GT_COLOUR, width=1)
    if len(boxes):
        names = [f"{classes[int(k) - 1]} {float(s):.2f}" for k, s in zip(labels.tolist(), scores.tolist(), strict=True)]
        colours = [PALETTE[int(k) % len(PALETTE)] for k in labels.tolist()]
        canvas = draw_bounding_boxes(canvas, boxes.float().cpu(), labels=names, colors=colours, width=2)
    return canvas.float() / 255.0
