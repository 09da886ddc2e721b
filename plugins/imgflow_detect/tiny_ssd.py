"""Tiny SSD, d2l.ai's single-shot multibox detector for the banana data set (SPEC.md section 4).

The network, exactly as the book builds it (so its state-dict keys are the book's too):

  blk_0   the base network: three down-sampling blocks 3 -> 16 -> 32 -> 64, each two
          [3x3 conv (padding 1), BatchNorm, ReLU] then a 2x2 max pool (256 px -> 32 x 32);
  blk_1   a down-sampling block 64 -> 128 (16 x 16); blk_2, blk_3: 128 -> 128 (8 x 8, 4 x 4);
  blk_4   a global max pool (1 x 1);
  cls_i   per scale, a 3x3 conv to anchors x (classes + 1) channels; bbox_i: to anchors x 4.

Five scales with anchor sizes [[0.2, 0.272], [0.37, 0.447], [0.54, 0.619], [0.71, 0.79],
[0.88, 0.961]] and ratios [1, 2, 0.5]: 4 anchors per pixel, 5,444 anchors for a 256 x 256 input.
The loss is the book's: cross-entropy over the anchors' classes plus L1 on the masked offsets,
each averaged per image, summed, then averaged over the batch. The book feeds pixel values in
0..255 (``read_image(...).float()``), and so does :func:`network_input`.

:class:`TinySSDDetector` wraps a trained network for the ``detect`` stage: any image size in,
torchvision-style detections out (boxes in the image's pixels, labels 1..K).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from imgflow_detect import anchors as A

SIZES: tuple[tuple[float, float], ...] = ((0.2, 0.272), (0.37, 0.447), (0.54, 0.619), (0.71, 0.79),
                                          (0.88, 0.961))
RATIOS: tuple[float, ...] = (1.0, 2.0, 0.5)
ANCHORS_PER_PIXEL = len(SIZES[0]) + len(RATIOS) - 1  # 4
IN_CHANNELS = (64, 128, 128, 128, 128)  # what each scale's predictors see
IMAGE_SIZE = 256  # the banana images' size in the book


def down_sample_blk(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two [conv 3x3, BatchNorm, ReLU] then a 2x2 max pool: half the height and width."""
    layers: list[nn.Module] = []
    for _ in range(2):
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                   nn.BatchNorm2d(out_channels), nn.ReLU()]
        in_channels = out_channels
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def base_net() -> nn.Sequential:
    """3 -> 16 -> 32 -> 64 channels, 1/8 of the input's height and width."""
    channels = [3, 16, 32, 64]
    return nn.Sequential(*(down_sample_blk(channels[i], channels[i + 1]) for i in range(3)))


def get_blk(i: int) -> nn.Module:
    """Block i of the five scales."""
    if i == 0:
        return base_net()
    if i == 1:
        return down_sample_blk(64, 128)
    if i == 4:
        return nn.AdaptiveMaxPool2d((1, 1))
    return down_sample_blk(128, 128)


def cls_predictor(in_channels: int, num_anchors: int, num_classes: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, num_anchors * (num_classes + 1), kernel_size=3, padding=1)


def bbox_predictor(in_channels: int, num_anchors: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, num_anchors * 4, kernel_size=3, padding=1)


def flatten_pred(pred: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H * W * C): channels last, so each pixel's anchors stay together."""
    return torch.flatten(pred.permute(0, 2, 3, 1), start_dim=1)


class TinySSD(nn.Module):
    """The book's Tiny SSD for ``num_classes`` object classes (the background is extra)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        for i in range(5):
            setattr(self, f"blk_{i}", get_blk(i))
            setattr(self, f"cls_{i}", cls_predictor(IN_CHANNELS[i], ANCHORS_PER_PIXEL, num_classes))
            setattr(self, f"bbox_{i}", bbox_predictor(IN_CHANNELS[i], ANCHORS_PER_PIXEL))
        self._anchor_cache: dict[tuple[int, int, int, str], torch.Tensor] = {}

    def scale_anchors(self, i: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Scale i's anchors for a feature map of ``height x width`` (cached: they never change)."""
        key = (i, height, width, str(device))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = A.multibox_prior(height, width, SIZES[i], RATIOS, device=device)
        return self._anchor_cache[key]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Anchors ``(1, A, 4)``, class logits ``(B, A, classes + 1)``, offsets ``(B, A * 4)``."""
        anchors, cls_preds, bbox_preds = [], [], []
        for i in range(5):
            x = getattr(self, f"blk_{i}")(x)
            anchors.append(self.scale_anchors(i, x.shape[-2], x.shape[-1], x.device))
            cls_preds.append(flatten_pred(getattr(self, f"cls_{i}")(x)))
            bbox_preds.append(flatten_pred(getattr(self, f"bbox_{i}")(x)))
        cls = torch.cat(cls_preds, dim=1)
        return (torch.cat(anchors, dim=1), cls.reshape(cls.shape[0], -1, self.num_classes + 1),
                torch.cat(bbox_preds, dim=1))


def calc_loss(cls_preds: torch.Tensor, cls_labels: torch.Tensor, bbox_preds: torch.Tensor,
              bbox_labels: torch.Tensor, bbox_masks: torch.Tensor) -> torch.Tensor:
    """Per image: mean cross-entropy over anchors + mean L1 over masked offsets, ``(B,)``."""
    batch, classes = cls_preds.shape[0], cls_preds.shape[2]
    cls = F.cross_entropy(cls_preds.reshape(-1, classes), cls_labels.reshape(-1), reduction="none")
    bbox = F.l1_loss(bbox_preds * bbox_masks, bbox_labels * bbox_masks, reduction="none")
    return cls.reshape(batch, -1).mean(dim=1) + bbox.mean(dim=1)


def network_input(images: Sequence[torch.Tensor], image_size: int) -> torch.Tensor:
    """``(B, 3, S, S)`` pixel values in 0..255 from images in [0, 1] of any size (squashed to S x S,
    bilinear with antialiasing); boxes scale with :func:`normalised_boxes`."""
    from imgflow_augment import ops

    resized = [ops.resize(image.unsqueeze(0).float(), (image_size, image_size)) for image in images]
    return torch.cat(resized) * 255.0


def normalised_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel boxes of a ``height x width`` image as fractions of its width and height."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes.device)
    return boxes.float() / scale


def detections(net: TinySSD, x: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
    """The book's prediction for a network input ``x``: softmax, decoded offsets, NMS 0.5, boxes
    under 0.01 confidence dropped; as torchvision-style dicts in each image's pixels
    (``sizes[i] = (height, width)``), labels 1..K (0 is the background)."""
    anchors, cls_preds, bbox_preds = net(x)
    probs = F.softmax(cls_preds.float(), dim=2).permute(0, 2, 1)
    found = A.multibox_detection(probs, bbox_preds.float(), anchors)
    out = []
    for rows, (height, width) in zip(found, sizes, strict=True):
        rows = rows[rows[:, 0] >= 0]
        scale = torch.tensor([width, height, width, height], dtype=rows.dtype, device=rows.device)
        out.append({"boxes": rows[:, 2:] * scale, "scores": rows[:, 1], "labels": rows[:, 0].long() + 1})
    return out


class TinySSDDetector(nn.Module):
    """A trained Tiny SSD behind torchvision's detection interface: a list of (3, H, W) images in
    [0, 1] in, one ``{"boxes", "scores", "labels"}`` dict per image out."""

    def __init__(self, net: TinySSD, image_size: int = IMAGE_SIZE) -> None:
        super().__init__()
        self.net = net
        self.image_size = image_size

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        x = network_input(images, self.image_size)
        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        return detections(self.net, x, sizes)
