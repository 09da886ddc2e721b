"""The four torchvision segmentation architectures, built bare (no weights, no download).

torchvision is imported inside :func:`build` only: it takes seconds to import, and listing or
validating pipelines must not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgflow_segment.voc import NUM_CLASSES

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

ARCHITECTURES: tuple[str, ...] = (
    "fcn_resnet50",
    "deeplabv3_resnet50",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
)
# The official COCO_WITH_VOC_LABELS_V1 checkpoints of FCN and DeepLabV3 were trained with the
# auxiliary head and carry its ``aux_classifier.*`` keys; a strict load needs it built. LR-ASPP
# has no auxiliary head.
AUX_LOSS: dict[str, bool] = {
    "fcn_resnet50": True,
    "deeplabv3_resnet50": True,
    "deeplabv3_mobilenet_v3_large": True,
    "lraspp_mobilenet_v3_large": False,
}


def build(model: str) -> nn.Module:
    """An untrained ``model`` with 21 outputs and the official checkpoint's key layout.

    ``weights=None, weights_backbone=None``: torchvision never downloads anything here; the
    weights come from imgflow's registry (or a file) afterwards, loaded strictly.
    """
    from torchvision.models import segmentation

    if model not in AUX_LOSS:
        raise ValueError(f"unknown segmentation model {model!r}; expected one of {', '.join(ARCHITECTURES)}")
    builder = getattr(segmentation, model)
    kwargs = {"weights": None, "weights_backbone": None, "num_classes": NUM_CLASSES}
    if AUX_LOSS[model]:
        kwargs["aux_loss"] = True
    return builder(**kwargs)


def expected_shapes(net: nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the network's state dict holds, for a checked load."""
    return {name: tuple(value.shape) for name, value in net.state_dict().items()}
