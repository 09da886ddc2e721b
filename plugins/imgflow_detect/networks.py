"""The detectors ``train.detector`` trains and ``detect`` runs from its ``detector.pt``.

``tiny_ssd`` is the book's network (:mod:`imgflow_detect.tiny_ssd`). The torchvision detectors are
fine-tuned the way torchvision's tutorial does it: the architecture with ``num_classes`` = the
user's classes + 1 (index 0 is the background), every COCO weight loaded except the class head,
which starts fresh (:func:`load_except_head`).

``detector.pt`` (format "imgflow-detector", version 1), plain tensors and values only::

    {"format": "imgflow-detector", "version": 1,
     "model": "tiny_ssd",                  # or a torchvision detector name
     "classes": ["banana", "coin"],        # model label k + 1 <-> classes[k]
     "state_dict": {name: tensor, ...},    # float32, CPU
     "image_size": 256,                    # tiny_ssd: the square the network sees
     "epochs": 20}

torch and torchvision are imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgflow import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

FORMAT = "imgflow-detector"
REQUIRED = ("model", "classes", "state_dict")
TINY_SSD = "tiny_ssd"
# The class-prediction layers a new set of classes replaces, per torchvision detector (the rest of
# the COCO weights carry over). R-CNNs: torchvision's FastRCNNPredictor (scores and box deltas).
HEADS: dict[str, tuple[str, ...]] = {
    "fasterrcnn_resnet50_fpn_v2": ("roi_heads.box_predictor.",),
    "fasterrcnn_mobilenet_v3_large_fpn": ("roi_heads.box_predictor.",),
    "retinanet_resnet50_fpn_v2": ("head.classification_head.cls_logits.",),
    "fcos_resnet50_fpn": ("head.classification_head.cls_logits.",),
    "ssd300_vgg16": ("head.classification_head.",),
    "ssdlite320_mobilenet_v3_large": ("head.classification_head.",),
}
TRAINABLE = (TINY_SSD, *HEADS)
# Heads with one sigmoid per class have no background output: their index 0 never trains.
SIGMOID_HEADS = ("retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn")


def build(model: str, num_classes: int, image_size: int = 256) -> nn.Module:
    """An untrained detector for ``num_classes`` object classes (nothing is downloaded)."""
    if model == TINY_SSD:
        from imgflow_detect.tiny_ssd import TinySSD

        return TinySSD(num_classes)
    from torchvision.models import detection

    if model not in HEADS:
        raise ConfigError(f"model {model!r} cannot be trained here (fix: one of {', '.join(TRAINABLE)})")
    return getattr(detection, model)(weights=None, weights_backbone=None, num_classes=num_classes + 1)


def load_except_head(net: nn.Module, model: str, state: dict[str, torch.Tensor], subject: str) -> list[str]:
    """Load a COCO checkpoint into ``net`` but for its class head; return the keys left fresh."""
    from imgflow_finetune import kit

    return kit.load_except(net, state, fresh=HEADS[model], subject=subject,
                           fix=f"use the COCO weights detect-{model}, or a state dict of the same architecture")


def detector_for_inference(doc: dict[str, Any]) -> nn.Module:
    """The network a ``detector.pt`` describes, weights loaded strictly, behind torchvision's
    detection interface (a list of images in, one dict of boxes, scores, labels per image out)."""
    model, classes = str(doc["model"]), list(doc["classes"])
    net = build(model, len(classes))
    state = {k: v.float() if v.is_floating_point() else v for k, v in doc["state_dict"].items()}
    from imgflow.models import check_keys

    check_keys(state, {k: tuple(v.shape) for k, v in net.state_dict().items()},
               subject=f"detector.pt ({model}, {len(classes)} classes)")
    net.load_state_dict(state, strict=True)
    if model == TINY_SSD:
        from imgflow_detect.tiny_ssd import IMAGE_SIZE, TinySSDDetector

        return TinySSDDetector(net, int(doc.get("image_size", IMAGE_SIZE)))
    return net


def set_thresholds(net: nn.Module, model: str, score: float, nms: float, per_image: int) -> None:
    """A torchvision detector's own post-processing thresholds, set after construction (the
    parameter names differ by family; Tiny SSD has the book's fixed NMS and 0.01 floor)."""
    if model == TINY_SSD:
        return
    if hasattr(net, "roi_heads"):
        net.roi_heads.score_thresh, net.roi_heads.nms_thresh = score, nms
        net.roi_heads.detections_per_img = per_image
    else:
        net.score_thresh, net.nms_thresh, net.detections_per_img = score, nms, per_image
