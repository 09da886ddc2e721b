"""The recipe's image transforms, built from ``imgflow_augment.ops`` (one implementation of
resize, crop and flip in the project, with torchvision's semantics).

  train  RandomResizedCrop(image_size, scale, ratio) + horizontal flip (p) + ImageNet normalisation,
         the random values drawn from the item's own generator: they differ per epoch (the item
         carries its epoch) and per item, and are reproducible from the seed alone;
  test   Resize(resize, shorter edge) + CenterCrop(image_size) + ImageNet normalisation.

Images arrive as float32 (3, H, W) in [0, 1] of any size, on the batch's device. This module is
about tensors, so it imports torch at module level; the stage modules import it lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from imgflow_augment import ops


@dataclass(frozen=True)
class Preprocess:
    """The facts a checkpoint carries so ``classify`` prepares images exactly like validation."""

    resize: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def to_dict(self) -> dict[str, object]:
        """Plain types only: the checkpoint is read back with ``weights_only=True``."""
        return {"resize": self.resize, "image_size": self.image_size, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, doc: dict[str, object]) -> Preprocess:
        return cls(resize=int(doc["resize"]), image_size=int(doc["image_size"]),  # type: ignore[arg-type]
                   mean=tuple(float(v) for v in doc["mean"]),  # type: ignore[union-attr]
                   std=tuple(float(v) for v in doc["std"]),  # type: ignore[union-attr]
                   interpolation=str(doc.get("interpolation", "bilinear")))


@dataclass(frozen=True)
class Augment:
    """The random part of the training transform."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5


def train_view(image: torch.Tensor, gen: torch.Generator, pre: Preprocess, aug: Augment) -> torch.Tensor:
    """One training view ``(3, S, S)`` (not yet normalised): random resized crop, then maybe a flip.

    Draw order (box, then flip) follows torchvision's Compose of the two transforms. Draws
    happen on the CPU generator; the pixels stay on the image's device.
    """
    height, width = (int(s) for s in image.shape[-2:])
    box = ops.draw_resized_crop_box(gen, height, width, aug.scale, aug.ratio)
    flip = ops.draw_chance(gen, aug.flip)
    size = (pre.image_size, pre.image_size)
    x = ops.resized_crop(image.unsqueeze(0), box, size, pre.interpolation, antialias=True)
    return (x.flip(-1) if flip else x)[0]


def test_view(image: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """The deterministic view ``(3, S, S)``: shorter edge to ``resize``, then the centre crop."""
    height, width = (int(s) for s in image.shape[-2:])
    size = ops.resize_output_size(height, width, pre.resize, "shorter")
    x = ops.resize(image.unsqueeze(0), size, pre.interpolation, antialias=True)
    return ops.center_crop(x, (pre.image_size, pre.image_size))[0]


def normalise(views: Sequence[torch.Tensor], pre: Preprocess, channels_last: bool = False) -> torch.Tensor:
    """Stack views into ``(N, 3, S, S)`` and apply the ImageNet mean/std."""
    x = torch.stack(list(views))
    mean = torch.tensor(pre.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
