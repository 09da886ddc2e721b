"""imgflow's detection plugin: the ``detect`` stage (torchvision's COCO detectors, or a detector
trained here), the ``faces`` stage (scikit-image's bundled LBP frontal-face cascade, no download),
``train.detector`` (d2l.ai's Tiny SSD, or torchvision detectors fine-tuned on your boxes) and
``imgflow datasets make-bananas`` (a generated d2l-style data set with boxes and masks).

Registered through the ``imgflow`` entry point ``detect``. This module stays light: stage modules
are imported inside the hooks and torch, torchvision and scikit-image only in
``setup``/``process``/``export``, so ``imgflow --help`` and ``imgflow validate`` pay for none.
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

LICENSE = "BSD-3-Clause (torchvision); trained on COCO 2017 (annotations CC BY 4.0)"

# Detector -> (COCO_V1 weights URL, description). The URLs are copies of torchvision's weights enums
# (e.g. FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1.url), written out because reading the enums would
# import torchvision (3.5 s) at plugin load; tests/plugins/test_detect.py checks they still agree.
# The sha256 prefix torch.hub checks is the part of the file name after the last '-'.
MODELS: dict[str, tuple[str, str]] = {
    "fasterrcnn_resnet50_fpn_v2": (
        "https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth",
        "Faster R-CNN ResNet-50 FPN v2, COCO box mAP 46.7, about 167 MB",
    ),
    "fasterrcnn_mobilenet_v3_large_fpn": (
        "https://download.pytorch.org/models/fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth",
        "Faster R-CNN MobileNetV3-Large FPN, COCO box mAP 32.8, about 74 MB",
    ),
    "retinanet_resnet50_fpn_v2": (
        "https://download.pytorch.org/models/retinanet_resnet50_fpn_v2_coco-5905b1c5.pth",
        "RetinaNet ResNet-50 FPN v2, COCO box mAP 41.5, about 146 MB",
    ),
    "fcos_resnet50_fpn": (
        "https://download.pytorch.org/models/fcos_resnet50_fpn_coco-99b0c9b7.pth",
        "FCOS ResNet-50 FPN, COCO box mAP 39.2, about 124 MB",
    ),
    "ssd300_vgg16": (
        "https://download.pytorch.org/models/ssd300_vgg16_coco-b556d3b4.pth",
        "SSD300 VGG16, COCO box mAP 25.1, about 136 MB",
    ),
    "ssdlite320_mobilenet_v3_large": (
        "https://download.pytorch.org/models/ssdlite320_mobilenet_v3_large_coco-a79551df.pth",
        "SSDlite320 MobileNetV3-Large, COCO box mAP 21.3, about 13 MB",
    ),
    "maskrcnn_resnet50_fpn_v2": (
        "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
        "Mask R-CNN ResNet-50 FPN v2, COCO box mAP 47.4 / mask mAP 41.8, about 177 MB",
    ),
}

# File sizes in MiB as torchvision's weights enums publish them (meta["_file_size"]); the test that
# checks the URLs checks these too. Shown by `imgflow models list`, never used to verify a file.
FILE_MIB: dict[str, float] = {
    "fasterrcnn_resnet50_fpn_v2": 167.104,
    "fasterrcnn_mobilenet_v3_large_fpn": 74.239,
    "retinanet_resnet50_fpn_v2": 146.037,
    "fcos_resnet50_fpn": 123.608,
    "ssd300_vgg16": 135.988,
    "ssdlite320_mobilenet_v3_large": 13.418,
    "maskrcnn_resnet50_fpn_v2": 177.219,
}


def network_layout(model: str) -> Any:
    """The untrained detector with the COCO checkpoint's layout (for ``imgflow models random``)."""
    from torchvision.models import detection

    return getattr(detection, model)(weights=None, weights_backbone=None, num_classes=91)


def registry_name(model: str) -> str:
    """The shared-registry name of a detector's COCO checkpoint, e.g. ``detect-ssd300_vgg16``."""
    return f"detect-{model}"


@hookimpl
def register_stages(register: Callable[[type[Stage]], None]) -> None:
    """Register the ``detect``, ``faces`` and ``train.detector`` stages."""
    from imgflow_detect.detect import Detect  # lazy: keeps `imgflow --help` fast
    from imgflow_detect.faces import Faces
    from imgflow_detect.train import TrainDetector

    register(Detect)
    register(Faces)
    register(TrainDetector)


@hookimpl
def register_models(register: Callable[..., Any]) -> None:
    """Register the COCO checkpoints of every detector (exact sizes are not published: approximate)."""
    from imgflow.models import ModelSpec

    for model, (url, description) in MODELS.items():
        register(ModelSpec(name=registry_name(model), url=url, size=None, license=LICENSE,
                           stage="detect", description=description, approx_size=round(FILE_MIB[model] * 2**20),
                           layout=functools.partial(network_layout, model)))


@hookimpl
def register_commands(cli: click.Group) -> None:
    """Add ``imgflow datasets make-bananas`` (joining a ``datasets`` group another plugin made)."""
    import click

    group = cli.commands.get("datasets")
    if not isinstance(group, click.Group):

        @cli.group("datasets")
        def datasets() -> None:
            """Generate small example data sets (offline) for the shipped pipelines."""

        group = datasets

    @group.command("make-bananas")
    @click.argument("out", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--train", "train", type=click.IntRange(1, 1_000_000), default=400, show_default=True,
                  help="Training pictures.")
    @click.option("--val", "val", type=click.IntRange(0, 1_000_000), default=80, show_default=True,
                  help="Validation pictures.")
    @click.option("--size", type=click.IntRange(32, 4096), default=256, show_default=True,
                  help="Side of the square pictures in pixels (the book: 256).")
    @click.option("--max-objects", type=click.IntRange(1, 8), default=2, show_default=True,
                  help="Objects per picture: 1 to this many.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same files.")
    def make_bananas_command(out: Path, train: int, val: int, size: int, max_objects: int, seed: int) -> None:
        """Render a d2l.ai-style banana data set with boxes and masks into OUT.

        Bananas and coins cut from scikit-image's pictures, pasted on its photographs:
        OUT/{train,val}/*.jpg, OUT/labels.csv (path,label,x1,y1,x2,y2), palette masks under
        OUT/masks/ and OUT/classes.json. No network access is needed.

        \b
        Example:
          imgflow datasets make-bananas out/datasets/bananas
          imgflow run pipelines/train_detector.toml
        """
        from imgflow_detect.bananas import BananaSpec, make_bananas

        counts = make_bananas(out, BananaSpec(train=train, val=val, size=size, max_objects=max_objects, seed=seed))
        click.echo(f"wrote {counts['train']} training and {counts['val']} validation pictures with "
                   f"{counts['objects']} objects (classes: banana, coin) to {out}")
