"""The four torchvision classifier backbones, built bare, with their heads swapped for ours.

torchvision is imported inside the functions only (it takes seconds): listing stages and
validating pipelines never pay for it.

Head conventions (what "the new output layer" is, per architecture):
  resnet18 / resnet50          ``fc``                     Linear(512 / 2048, classes)
  mobilenet_v3_large           ``classifier.3``           Linear(1280, classes)
  efficientnet_b0              ``classifier.1``           Linear(1280, classes)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

ARCHITECTURES: tuple[str, ...] = ("resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0")
#: Short names users reach for first; the issue text says "mobilenet_v3" and "efficientnet".
ALIASES: dict[str, str] = {"mobilenet_v3": "mobilenet_v3_large", "efficientnet": "efficientnet_b0"}
IMAGENET_CLASSES = 1000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def head_name(model: str) -> str:
    """The dotted module name of the final Linear layer, the one fine-tuning replaces."""
    return {"resnet18": "fc", "resnet50": "fc", "mobilenet_v3_large": "classifier.3",
            "efficientnet_b0": "classifier.1"}[model]


def build(model: str, num_classes: int = IMAGENET_CLASSES) -> nn.Module:
    """An untrained ``model`` with ``num_classes`` outputs (torchvision's own initialisation).

    ``weights=None``: torchvision never downloads anything here; ImageNet weights come from
    imgflow's registry afterwards. Initialisation draws from the torch global RNG, which the
    engine seeds with ``[run] seed`` before setup, so a from-scratch run is reproducible.
    """
    from torchvision import models

    if model not in ARCHITECTURES:
        raise ValueError(f"unknown classifier {model!r}; expected one of {', '.join(ARCHITECTURES)}")
    return getattr(models, model)(weights=None, num_classes=num_classes)


def get_head(net: nn.Module, model: str) -> nn.Module:
    """The final Linear layer of ``net``."""
    return net.get_submodule(head_name(model))


def replace_head(net: nn.Module, model: str, num_classes: int) -> nn.Module:
    """Swap the final layer for a fresh ``Linear(in_features, num_classes)``.

    Xavier-uniform weight (as the d2l.ai recipe does) and a zero bias; drawn from the global RNG.
    The new layer is created on the device and dtype of the old one.
    """
    import torch
    from torch import nn

    old = get_head(net, model)
    device = old.weight.device if old.weight.device.type != "meta" else torch.device("cpu")
    new = nn.Linear(old.in_features, num_classes, device=device, dtype=torch.float32)
    nn.init.xavier_uniform_(new.weight)
    nn.init.zeros_(new.bias)
    parent_name, _, child = head_name(model).rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, new)
    return net


def expected_shapes(net: nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the network's state dict holds, for a checked load."""
    return {name: tuple(value.shape) for name, value in net.state_dict().items()}


def blocks(net: nn.Module, model: str) -> list[list[str]]:
    """The backbone as an ordered list of blocks (module name prefixes), input side first.

    ``freeze = N`` freezes the first N of these: for ResNets the stem (conv1 + bn1) then
    layer1..layer4; for MobileNetV3 and EfficientNet the entries of ``features``.
    """
    if model.startswith("resnet"):
        return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    features = net.get_submodule("features")
    return [[f"features.{i}"] for i in range(len(features))]


def matches(name: str, prefixes: Sequence[str]) -> bool:
    """True when the dotted ``name`` is one of ``prefixes`` or lies inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def top_level_names(net: nn.Module) -> list[str]:
    """The names a freeze prefix may start with, for error messages."""
    return [name for name, _ in net.named_children()]
