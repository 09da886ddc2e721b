"""imgflow's style transfer plugin: ``style.optimize`` (Gatys et al., by optimisation over VGG19
features), ``style.fast`` (Johnson et al.'s feed-forward TransformerNet) and ``train.fast_style``
(trains a TransformerNet on the streamed images for one style), plus the two ImageNet VGG
checkpoints the losses measure with, in the shared weights registry.

Registered through the ``imgflow`` entry point ``stylize``. This module stays light: the stage
modules are imported inside the hook and torch/torchvision only in ``setup``/``process``, so
``imgflow --help`` and ``imgflow validate`` pay for neither.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from imgflow import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from imgflow import Stage

LICENSE = "BSD-3-Clause (pytorch/vision); weights trained on ImageNet-1k"

# Registry name -> (url, description). The URLs are copies of torchvision's
# VGG19_Weights.IMAGENET1K_V1.url and VGG16_Weights.IMAGENET1K_V1.url, written out because reading
# the enums would import torchvision at plugin load; a test checks that they still agree. The
# sha256 prefix torch.hub checks is the hex part of the file name (ModelSpec derives it).
MODELS: dict[str, tuple[str, str]] = {
    "stylize-vgg19": (
        "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        "VGG19 ImageNet weights for style.optimize (only its features are used), about 548 MB",
    ),
    "stylize-vgg16": (
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        "VGG16 ImageNet weights for the train.fast_style perceptual loss (features only), about 528 MB",
    ),
}
VGG19 = "stylize-vgg19"
VGG16 = "stylize-vgg16"
# File sizes in MiB as torchvision's weights enums publish them (meta["_file_size"]); a test checks
# them with the URLs. Shown by `imgflow models list`, never used to verify a file.
FILE_MIB: dict[str, float] = {VGG19: 548.051, VGG16: 527.796}


def network_layout(name: str) -> Any:
    """The whole untrained torchvision VGG (classifier included, as the checkpoint holds it)."""
    from torchvision import models as tv_models

    return {VGG19: tv_models.vgg19, VGG16: tv_models.vgg16}[name](weights=None)


@hookimpl
def register_stages(register: Callable[[type[Stage]], None]) -> None:
    """Register ``style.optimize``, ``style.fast`` and ``train.fast_style``."""
    from imgflow_stylize.fast import StyleFast  # lazy: keeps `imgflow --help` fast
    from imgflow_stylize.optimize import StyleOptimize
    from imgflow_stylize.train import TrainFastStyle

    register(StyleOptimize)
    register(StyleFast)
    register(TrainFastStyle)


@hookimpl
def register_models(register: Callable[..., Any]) -> None:
    """Register the ImageNet VGG19 and VGG16 checkpoints (verified by their file-name prefix)."""
    from imgflow.models import ModelSpec

    for name, (url, description) in MODELS.items():
        register(ModelSpec(name=name, url=url, license=LICENSE, stage="style.optimize"
                           if name == VGG19 else "train.fast_style", description=description,
                           approx_size=round(FILE_MIB[name] * 2**20), layout=functools.partial(network_layout, name)))
