"""imgflow's semantic segmentation plugin: the ``segment`` stage over torchvision's FCN,
DeepLabV3 and LR-ASPP models (or a segmenter trained here), their Pascal VOC checkpoints in the
shared weights registry, and ``train.segmenter`` (d2l.ai's FCN, or torchvision segmenters
fine-tuned on your masks).

Registered through the ``imgflow`` entry point ``segment``. This module stays light: the stage
module is imported inside the hook, and torch/torchvision only in ``setup``/``process``
(importing torchvision costs about 3.5 s, which ``imgflow --help`` must not pay).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from imgflow import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from imgflow import Stage

LICENSE = "BSD-3-Clause (pytorch/vision); trained on COCO with the 20 Pascal VOC categories"

# Architecture -> (url, description) of torchvision's COCO_WITH_VOC_LABELS_V1 checkpoint. The
# sha256 prefix is the one torch.hub checks: the hex part of the file name (ModelSpec derives it).
# Kept as plain constants so the registry never has to import torchvision; a test compares them
# with torchvision's weights enums.
MODELS: dict[str, tuple[str, str]] = {
    "fcn_resnet50": (
        "https://download.pytorch.org/models/fcn_resnet50_coco-1167a1af.pth",
        "FCN with a ResNet-50 backbone, 21 VOC classes, about 135 MB",
    ),
    "deeplabv3_resnet50": (
        "https://download.pytorch.org/models/deeplabv3_resnet50_coco-cd0a2569.pth",
        "DeepLabV3 with a ResNet-50 backbone, 21 VOC classes, about 161 MB",
    ),
    "deeplabv3_mobilenet_v3_large": (
        "https://download.pytorch.org/models/deeplabv3_mobilenet_v3_large-fc3c493d.pth",
        "DeepLabV3 with a MobileNetV3-Large backbone, 21 VOC classes, about 42 MB",
    ),
    "lraspp_mobilenet_v3_large": (
        "https://download.pytorch.org/models/lraspp_mobilenet_v3_large-d234d4ea.pth",
        "LR-ASPP with a MobileNetV3-Large backbone, 21 VOC classes, about 12.5 MB (fastest)",
    ),
}

# File sizes in MiB as torchvision's weights enums publish them (meta["_file_size"]); a test checks
# them with the URLs. Shown by `imgflow models list`, never used to verify a file.
FILE_MIB: dict[str, float] = {
    "fcn_resnet50": 135.009,
    "deeplabv3_resnet50": 160.515,
    "deeplabv3_mobilenet_v3_large": 42.301,
    "lraspp_mobilenet_v3_large": 12.49,
}


def network_layout(model: str) -> Any:
    """The untrained network with the VOC checkpoint's layout (for ``imgflow models random``)."""
    from imgflow_segment import networks

    return networks.build(model)


def registry_name(model: str) -> str:
    """The shared-registry name of an architecture's official checkpoint."""
    return f"segment-{model}"


@hookimpl
def register_stages(register: Callable[[type[Stage]], None]) -> None:
    """Register the ``segment`` and ``train.segmenter`` stages."""
    from imgflow_segment.stage import Segment  # lazy: keeps `imgflow --help` fast
    from imgflow_segment.train import TrainSegmenter

    register(Segment)
    register(TrainSegmenter)


@hookimpl
def register_models(register: Callable[..., Any]) -> None:
    """Register the four official VOC-label checkpoints (verified by their file-name prefix)."""
    from imgflow.models import ModelSpec

    for model, (url, description) in MODELS.items():
        register(ModelSpec(name=registry_name(model), url=url, license=LICENSE, stage="segment",
                           description=description, approx_size=round(FILE_MIB[model] * 2**20),
                           layout=functools.partial(network_layout, model)))
