"""imgflow's fine-tuning plugin: ``train.classifier`` (d2l.ai's fine-tuning recipe as a trainer),
``classify`` (label images with the checkpoint it writes), the ImageNet backbones in the shared
weights registry, and ``imgflow datasets make-shapes`` (a small offline two-class data set).

Registered through the ``imgflow`` entry point ``finetune``. This module stays light: stage
modules are imported inside the hooks, and torch/torchvision only in ``setup``/``process``, so
``imgflow --help`` does not pay for them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgflow import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    import click

    from imgflow import Stage

LICENSE = "BSD-3-Clause (pytorch/vision); trained on ImageNet-1k (non-commercial research terms apply)"

# Architecture -> (torchvision IMAGENET1K_V1 url, description). The sha256 prefix torch.hub checks is
# the hex part of the file name (ModelSpec derives it). Plain constants so listing models never
# imports torchvision; a test compares them with torchvision's weights enums.
MODELS: dict[str, tuple[str, str]] = {
    "resnet18": (
        "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        "ResNet-18 ImageNet backbone for train.classifier (the d2l.ai recipe), about 45 MB",
    ),
    "resnet50": (
        "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "ResNet-50 ImageNet backbone for train.classifier, about 98 MB",
    ),
    "mobilenet_v3_large": (
        "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth",
        "MobileNetV3-Large ImageNet backbone for train.classifier, about 21 MB",
    ),
    "efficientnet_b0": (
        "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth",
        "EfficientNet-B0 ImageNet backbone for train.classifier, about 20 MB",
    ),
}

# File sizes in MiB as torchvision's weights enums publish them (meta["_file_size"]); a test checks
# them with the URLs. Shown by `imgflow models list`, never used to verify a file.
FILE_MIB: dict[str, float] = {
    "resnet18": 44.661,
    "resnet50": 97.781,
    "mobilenet_v3_large": 21.114,
    "efficientnet_b0": 20.451,
}


def network_layout(model: str) -> Any:
    """The untrained ImageNet network (1000 classes) of the checkpoint (for ``imgflow models random``)."""
    from imgflow_finetune import networks

    return networks.build(model)


def registry_name(model: str) -> str:
    """The shared-registry name of an architecture's ImageNet checkpoint."""
    return f"finetune-{model}"


@hookimpl
def register_stages(register: Callable[[type[Stage]], None]) -> None:
    """Register ``train.classifier`` and ``classify``."""
    from imgflow_finetune.classify import Classify  # lazy: keeps `imgflow --help` fast
    from imgflow_finetune.train import TrainClassifier

    register(TrainClassifier)
    register(Classify)


@hookimpl
def register_models(register: Callable[..., Any]) -> None:
    """Register the four ImageNet backbones (verified by their file-name hash prefix)."""
    from imgflow.models import ModelSpec

    for model, (url, description) in MODELS.items():
        register(ModelSpec(name=registry_name(model), url=url, license=LICENSE, stage="train.classifier",
                           description=description, approx_size=round(FILE_MIB[model] * 2**20),
                           layout=functools.partial(network_layout, model)))


@hookimpl
def register_commands(cli: click.Group) -> None:
    """Add ``imgflow datasets make-shapes`` (joining a ``datasets`` group another plugin made)."""
    import click

    group = cli.commands.get("datasets")
    if not isinstance(group, click.Group):

        @cli.group("datasets")
        def datasets() -> None:
            """Generate small example data sets (offline) for the shipped pipelines."""

        group = datasets

    @group.command("make-shapes")
    @click.argument("out", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--train", "train_per_class", type=click.IntRange(1, 100_000), default=60,
                  show_default=True, help="Training pictures per class.")
    @click.option("--val", "val_per_class", type=click.IntRange(0, 100_000), default=20,
                  show_default=True, help="Validation pictures per class.")
    @click.option("--size", type=click.IntRange(16, 4096), default=64, show_default=True,
                  help="Shorter side of each picture in pixels.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same files.")
    def make_shapes_command(out: Path, train_per_class: int, val_per_class: int, size: int, seed: int) -> None:
        """Render a two-class data set (brick vs grass textures) into OUT.

        Writes OUT/train/<class>/*.jpg and OUT/val/<class>/*.jpg from scikit-image's bundled
        samples: random crops, scales, turns, flips, tints and contrasts, so a network has to
        learn the texture. No network access is needed.

        \b
        Example:
          imgflow datasets make-shapes examples/shapes
          imgflow run pipelines/finetune_classifier.toml
        """
        from imgflow_finetune.shapes import ShapesSpec, make_shapes

        spec = ShapesSpec(train_per_class=train_per_class, val_per_class=val_per_class, size=size, seed=seed)
        counts = make_shapes(out, spec)
        click.echo(f"wrote {counts['train']} training and {counts['val']} validation pictures "
                   f"(classes: brick, grass) to {out}")
