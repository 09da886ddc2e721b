"""The ``train.fast_style`` stage: trains a TransformerNet for one style on the streamed images.

Johnson et al.'s recipe as ``pytorch/examples`` ``fast_neural_style`` runs it (SPEC §2):
  * every content image is resized (shorter edge) to ``image_size`` and centre-cropped square,
    then scaled to 0..255 (this stage does it: images arrive in any size);
  * the loss network is VGG16's features, read at relu1_2, relu2_2, relu3_3 and relu4_3, its input
    x / 255 ImageNet-normalised; content loss = MSE at relu2_2 x ``content_weight`` (1e5); style
    loss = sum over the four layers of the MSE between Gram matrices (F·Fᵀ / (C·H·W)) of the
    output and of the style image, x ``style_weight`` (1e10);
  * Adam (lr 1e-3), ``epochs`` passes over the input (2), batches of ``[run] batch_size`` (4).

The engine (imgflow.training) owns the loop: the order of the images, checkpoints every
``[run] checkpoint_every`` steps and after each epoch (from :meth:`state_dict`), resuming after a
kill, and the metrics files (per-step losses in ``steps.csv`` and the manifest, the loss curves
in ``metrics.png``). At the end :meth:`finalize` returns ``output_name`` (``style.pth``): a plain
TransformerNet state dict that ``style.fast`` loads strictly with the same ``width``.

The network's initial weights come from torch's global generator, which the engine seeds with
``[run] seed`` before ``setup``: the same pipeline trains the same network.

No torch at import: torch and the networks are imported in ``setup`` and after.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from imgflow import Artifact, Params, Stage, StageContext, StageKind
from imgflow.stage import DecodeHint
from imgflow_stylize import VGG16
from imgflow_stylize.common import (
    StyleSource,
    StyleSourceParams,
    load_style_image,
    load_vgg,
    resize,
    shorter_edge_size,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Batch

LOSS_KEYS = ("content_loss", "style_loss", "total_loss")


class TrainFastStyleParams(StyleSourceParams):
    style: str = Field(..., description="The style image to learn (path relative to the pipeline file).")
    image_size: int = Field(
        256, ge=16, description="Content images are resized (shorter edge) and centre-cropped to this square (256).")
    style_size: int | None = Field(
        None, ge=16, description="Resize the style image's shorter edge to this first; unset keeps its size.")
    epochs: int = Field(
        2, ge=1, description="Passes over the input folder (2 over COCO's 83k images in the paper's recipe).")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (1e-3).")
    content_weight: float = Field(1e5, ge=0, description="Weight of the relu2_2 content loss (1e5).")
    style_weight: float = Field(
        1e10, ge=0, description="Weight of the style loss (1e10; some released styles used 5e10 or 1e11).")
    width: Literal[32, 16, 8] = Field(32, description="Channels of the TransformerNet's first layer (32, 16 or 8).")
    vgg_weights: str | None = Field(
        None,
        description="VGG16 weights of the loss network: unset for the registered ImageNet weights "
        "(stylize-vgg16), a registered name, a path or a URL; \"random\" for an untrained network "
        "(tests only: no download, no meaningful style).",
    )
    output_name: str = Field(
        "style.pth", description="File the trained network is written to, relative to the output folder.")

    @field_validator("output_name")
    @classmethod
    def _relative_pth(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or path.suffix not in (".pth", ".pt") or not path.stem:
            raise ValueError(f"'output_name' must be a relative file name ending in .pth or .pt inside the "
                             f"output folder, got {value!r} (fix: e.g. output_name = \"mosaic.pth\")")
        return value


class TrainFastStyle(StyleSource, Stage):
    name = "train.fast_style"
    vgg_default = VGG16
    kind = StageKind.TRAIN
    description = "Train a fast-style TransformerNet (Johnson et al.) for one style image on the input images."
    reads = ("image",)
    writes = ()
    consumes = True
    Params: ClassVar[type[Params]] = TrainFastStyleParams

    def __init__(self, params: Params, context: StageContext) -> None:
        super().__init__(params, context)
        self.net: Any = None
        self.vgg: Any = None
        self.optimizer: Any = None
        self.style_grams: list[Any] = []
        self.steps = 0
        self.sums = self._zero_sums()

    # -- configuration

    def epochs(self) -> int:
        return self.params.epochs

    def decode_hint(self) -> DecodeHint:
        """Only the shorter edge's ``image_size`` pixels are used: JPEGs may be decoded smaller
        (COCO's 640x480 photos at half scale), which is most of the decoding cost of a step."""
        return DecodeHint(edge="shorter", size=self.params.image_size)

    # -- lifecycle

    def setup(self, device: torch.device) -> None:
        """The network (initialised from the engine-seeded global RNG), Adam, the frozen VGG16
        and the style's Gram matrices at the four loss layers."""
        import torch

        from imgflow_stylize import losses, networks

        super().setup(device)
        self.net = networks.TransformerNet(self.params.width).to(device).train()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.params.lr)
        self.vgg = load_vgg("vgg16", networks.VGG16_DEPTH, self.vgg_source(), device, self.id)
        style = load_style_image(self.style_path(), self.id).to(device).unsqueeze(0)
        if self.params.style_size is not None:
            style = resize(style, shorter_edge_size(*style.shape[-2:], self.params.style_size))
        with torch.no_grad():
            features = networks.vgg16_slices(self.vgg, networks.imagenet_normalize(style))
        self.style_grams = [losses.gram(f) for f in features]
        self.steps = 0
        self.sums = self._zero_sums()

    def teardown(self) -> None:
        self.net = self.vgg = self.optimizer = None
        self.style_grams = []

    # -- training

    def start_epoch(self, epoch: int) -> None:
        self.sums = self._zero_sums()

    def content_batch(self, batch: Batch) -> torch.Tensor:
        """(N, 3, S, S) in 0..255: each image resized (shorter edge S) and centre-cropped."""
        import torch

        side = self.params.image_size
        crops = []
        for item in batch.items:
            image = item.image.to(device=self.torch_device, dtype=torch.float32).unsqueeze(0)
            image = resize(image, shorter_edge_size(*image.shape[-2:], side))
            crops.append(center_crop(image, side))
        return torch.cat(crops) * 255.0

    def compute_losses(self, x255: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted content, style and total losses of the network on a content batch."""
        from imgflow_stylize import losses, networks

        p: TrainFastStyleParams = self.params  # type: ignore[assignment]
        y = self.net(x255)
        features_y = networks.vgg16_slices(self.vgg, networks.imagenet_normalize(y / 255.0))
        features_x = networks.vgg16_slices(self.vgg, networks.imagenet_normalize(x255 / 255.0))
        slot = networks.VGG16_CONTENT_SLICE
        content = p.content_weight * losses.content_loss(features_y[slot], features_x[slot]).mean()
        style = sum(losses.style_loss(fy, gs).mean() for fy, gs in zip(features_y, self.style_grams, strict=True))
        style = p.style_weight * style
        return {"content_loss": content, "style_loss": style, "total_loss": content + style}

    def consume(self, batch: Batch) -> dict[str, float] | None:
        """One Adam step on a training batch (its losses returned); validation batches are only
        measured (under no_grad) and counted into the epoch's val_* metrics."""
        import torch

        if self.net is None:
            raise RuntimeError(f"stage '{self.id}' used before setup() (engine bug)")
        x = self.content_batch(batch)
        if batch.split != "train":
            with torch.no_grad():
                found = self.compute_losses(x)
            self._add("val", found, len(batch))
            return None
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        found = self.compute_losses(x)
        found["total_loss"].backward()
        self.optimizer.step()
        self.steps += 1
        self._add("train", found, 1)
        return {key: float(value.detach()) for key, value in found.items()}

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Mean step losses of the epoch (and mean validation losses, when there were any)."""
        out: dict[str, float] = {}
        for split, prefix in (("train", ""), ("val", "val_")):
            count = self.sums[split]["count"]
            if count:
                out.update({prefix + k: self.sums[split][k] / count for k in LOSS_KEYS})
        return out

    # -- resuming

    def state_dict(self) -> dict[str, Any]:
        """Network, optimiser and the counters the epoch metrics are built from."""
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "steps": self.steps, "sums": {s: dict(v) for s, v in self.sums.items()},
                "width": self.params.width}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
        self.sums = {s: {k: float(v) for k, v in values.items()} for s, values in state["sums"].items()}

    def finalize(self) -> list[Artifact]:
        """The trained network as a plain state dict (CPU tensors) that ``style.fast`` loads."""
        import io

        import torch

        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}, buffer)
        return [Artifact(self.params.output_name, data=buffer.getvalue())]

    # -- helpers

    @staticmethod
    def _zero_sums() -> dict[str, dict[str, float]]:
        return {split: {"count": 0.0, **dict.fromkeys(LOSS_KEYS, 0.0)} for split in ("train", "val")}

    def _add(self, split: str, found: dict[str, torch.Tensor], weight: int) -> None:
        """Accumulate losses: training per step, validation per image (batches may be uneven)."""
        sums = self.sums[split]
        sums["count"] += weight
        for key in LOSS_KEYS:
            sums[key] += float(found[key].detach()) * weight


def center_crop(image: torch.Tensor, side: int) -> torch.Tensor:
    """The central ``side`` x ``side`` square of (N, C, H, W), offsets rounded as torchvision's
    CenterCrop rounds them; images smaller than ``side`` are resized up to it first."""
    height, width = image.shape[-2:]
    if height < side or width < side:
        image = resize(image, (max(side, height), max(side, width)))
        height, width = image.shape[-2:]
    top = int(round((height - side) / 2.0))
    left = int(round((width - side) / 2.0))
    return image[..., top:top + side, left:left + side]
