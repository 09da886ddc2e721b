"""The four torchvision segmentation architectures, built bare (no weights, no download).

torchvision is imported inside :func:`build` only: it takes seconds to import, and listing or
validating pipelines must not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgflow_segment.voc import NUM_CLASSES

if TYPE_CHECKING:  # pragma: no cover
    import torch
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


# ---------------------------------------------------------------------------------------------
# trained segmenters (train.segmenter's segmenter.pt)
# ---------------------------------------------------------------------------------------------

FCN18 = "fcn_resnet18"
TRAINABLE: tuple[str, ...] = (FCN18, "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "fcn_resnet50",
                              "deeplabv3_resnet50")
# The layers a new set of classes replaces in torchvision's segmenters (the rest of the VOC
# weights carry over); the auxiliary head is not built for training here.
HEADS: dict[str, tuple[str, ...]] = {
    "fcn_resnet50": ("classifier.4.",),
    "deeplabv3_resnet50": ("classifier.4.",),
    "deeplabv3_mobilenet_v3_large": ("classifier.4.",),
    "lraspp_mobilenet_v3_large": ("classifier.low_classifier.", "classifier.high_classifier."),
}
AUX = ("aux_classifier.",)


def build_for_classes(model: str, num_classes: int) -> nn.Module:
    """An untrained segmenter with ``num_classes`` outputs (no auxiliary head, nothing downloaded)."""
    if model == FCN18:
        from imgflow_segment.fcn import fcn_resnet18

        return fcn_resnet18(num_classes)
    from torchvision.models import segmentation

    if model not in HEADS:
        raise ValueError(f"unknown segmentation model {model!r}; expected one of {', '.join(TRAINABLE)}")
    return getattr(segmentation, model)(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)


def load_pretrained(net: nn.Module, model: str, source: object) -> list[str]:
    """Fill ``net`` from its pretrained checkpoint but for the new class layers; returns those.

    fcn_resnet18: an ImageNet ResNet-18 (finetune-resnet18) into the trunk. torchvision segmenters:
    their VOC checkpoint (segment-<model>) without the classifier's last layer and the aux head.
    """
    from imgflow import models
    from imgflow_finetune import kit

    state = models.load_state_dict(source)  # type: ignore[arg-type]
    if model == FCN18:
        from imgflow_segment.fcn import trunk_state_from_resnet18

        return kit.load_except(net, trunk_state_from_resnet18(state), fresh=("final_conv.", "transpose_conv."),
                               subject=str(source), fix="use the ImageNet ResNet-18 weights finetune-resnet18")
    return kit.load_except(net, state, fresh=HEADS[model], ignore=AUX, subject=str(source),
                           fix=f"use the VOC weights segment-{model}, or a state dict of the same architecture")


def trunk(net: nn.Module, model: str) -> nn.Module:
    """The pretrained feature extractor (what ``freeze_backbone`` holds fixed)."""
    return net[:8] if model == FCN18 else net.backbone  # type: ignore[index]


def logits(net: nn.Module, model: str, x: torch.Tensor) -> torch.Tensor:
    """Class logits at the input's size, ``(N, classes, H, W)``, for any H and W."""
    if model == FCN18:
        from imgflow_segment.fcn import padded_forward

        return padded_forward(net, x)
    return net(x)["out"]


def random_crop(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int],
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``size`` window of an image and its mask (the book's voc_rand_crop); a smaller
    image is padded first (zeros, and the ignore index 255 in the mask)."""
    import torch
    from torch.nn import functional as F

    height, width = size
    dh, dw = max(0, height - image.shape[-2]), max(0, width - image.shape[-1])
    if dh or dw:
        image = F.pad(image, [0, dw, 0, dh])
        mask = F.pad(mask, [0, dw, 0, dh], value=255)
    top = int(torch.randint(0, image.shape[-2] - height + 1, (1,), generator=gen))
    left = int(torch.randint(0, image.shape[-1] - width + 1, (1,), generator=gen))
    return image[:, top : top + height, left : left + width], mask[:, top : top + height, left : left + width]


def segmenter_for_inference(doc: dict) -> nn.Module:
    """The network a ``segmenter.pt`` describes, loaded strictly; it returns ``{"out": logits}``."""
    from imgflow.models import check_keys

    model, classes = str(doc["model"]), list(doc["classes"])
    net = build_for_classes(model, len(classes))
    state = {k: v.float() if v.is_floating_point() else v for k, v in doc["state_dict"].items()}
    check_keys(state, expected_shapes(net), subject=f"segmenter.pt ({model}, {len(classes)} classes)")
    net.load_state_dict(state, strict=True)
    if model == FCN18:
        from imgflow_segment.fcn import PaddedFCN

        return PaddedFCN(net)
    return net


#: What segmenter.pt (written by train.segmenter, read by segment) is, and the keys it must hold.
FORMAT = "imgflow-segmenter"
REQUIRED = ("model", "classes", "palette", "state_dict")
