"""``train.segmenter``: train a semantic segmenter on your own masks; writes ``segmenter.pt``.

Two families (``model``):

  fcn_resnet18  d2l.ai's FCN (SPEC.md section 5, :mod:`imgflow_segment.fcn`): the ImageNet
                ResNet-18 trunk (finetune-resnet18; ``pretrained = false`` starts from scratch), a
                1x1 conv to the classes and the bilinear-initialised transposed convolution; random
                crops of ``crop`` (320 x 480) as in the book; SGD lr 1e-3, weight decay 1e-3;
                per-pixel cross-entropy averaged per image, summed over the batch (the book's loop);
  torchvision   deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large, fcn_resnet50,
                deeplabv3_resnet50 from their Pascal VOC weights (segment-<model>) with a new
                classifier layer for your classes (the auxiliary head is left out); the same crops;
                SGD lr 0.01, momentum 0.9, weight decay 1e-4 (torchvision's references use 0.02 on 8
                GPUs), the cross-entropy averaged over the batch.

Masks come from palette PNGs (:mod:`imgflow_segment.masks`, 255 = ignore). They reach the items as
``item.targets.mask`` before the upstream stages, so a flip, crop or resize before this stage
moves them with the pixels (nearest-neighbour). Validation on whole images (ImageNet-normalised,
no crop): pixel accuracy and mean IoU over the classes, per epoch, and a preview PNG of the first
validation images with the predicted classes over them (``previews/epoch_NNN.png``).

The engine (imgflow.training) owns the loop, checkpoints and resume; :meth:`finalize` returns
``segmenter.pt``, which ``segment`` loads with ``weights = "<output>/segmenter.pt"``. No torch at
import.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from imgflow import Artifact, ConfigError, Params, Stage, StageContext, StageKind
from imgflow.training import trainer_state
from imgflow_segment.networks import FORMAT
from imgflow_segment import MODELS, registry_name

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Batch, Targets
    from imgflow_segment.masks import ClassList, MaskFolder

FCN18 = "fcn_resnet18"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BOOK_FCN = {"lr": 1e-3, "momentum": 0.0, "weight_decay": 1e-3, "reduction": "sum"}  # SPEC section 5
TORCHVISION = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "reduction": "mean"}
SegmenterName = Literal["fcn_resnet18", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large",
                        "fcn_resnet50", "deeplabv3_resnet50"]


class TrainSegmenterParams(Params):
    model: SegmenterName = Field(
        FCN18, description="fcn_resnet18 (d2l.ai's FCN) or a torchvision segmenter fine-tuned from its VOC "
        "weights: deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large, fcn_resnet50, deeplabv3_resnet50.")
    masks: str | None = Field(
        None, description="Folder of the label masks, <image path without suffix>.png each (relative to the "
        "pipeline file); unset = masks/ inside the input folder.")
    classes: list[str] | str | None = Field(
        None, description="Class names by label value: a list, or a JSON/TOML file (names and an optional "
        "palette); unset = classes.json/classes.toml in the input or masks folder, else the 21 VOC classes.")
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="Without train/ and val/ folders: the fraction of images kept for "
        "validation, chosen by a stable hash of the path and the seed.")
    epochs: int = Field(5, ge=1, le=100_000, description="Passes over the training images (the book: 5).")
    crop: tuple[int, int] | None = Field(
        (320, 480), description="[height, width] of the random training crops (the book's 320 x 480; smaller "
        "images are padded, their masks with 255); null trains on whole images (then batch_size 1 or "
        "equal sizes).")
    lr: float | None = Field(None, gt=0, description="Learning rate; default 1e-3 for fcn_resnet18 (the book), "
                             "0.01 for torchvision segmenters.")
    momentum: float | None = Field(None, ge=0, lt=1, description="SGD momentum; default 0 (fcn_resnet18), 0.9 "
                                   "(torchvision).")
    weight_decay: float | None = Field(None, ge=0, description="Default 1e-3 (fcn_resnet18), 1e-4 (torchvision).")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd (the recipes) or adamw.")
    schedule: Literal["none", "cosine"] = Field("none", description="Learning rate over epochs: constant or "
                                                "cosine to 0.")
    loss_reduction: Literal["sum", "mean"] | None = Field(
        None, description="Per-image losses summed over the batch (the book's loop, fcn_resnet18's default) or "
        "averaged (torchvision's default).")
    pretrained: bool = Field(True, description="Start from the pretrained weights: ImageNet ResNet-18 "
                             "(finetune-resnet18) for fcn_resnet18, VOC (segment-<model>) for the others.")
    weights: str | None = Field(None, description="That checkpoint instead of the registered one (a name, a "
                                "path or a URL).")
    freeze_backbone: bool = Field(False, description="Keep the pretrained trunk's weights fixed.")
    amp: bool = Field(True, description="Mixed precision on CUDA; ignored on the CPU.")
    previews: int = Field(4, ge=0, le=64, description="Validation images drawn with their predicted classes "
                          "in previews/epoch_NNN.png after each epoch (0: none).")

    @field_validator("crop")
    @classmethod
    def _crop_positive(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] < 32 or v[1] < 32):
            raise ValueError(f"expected [height, width] of at least 32 pixels each, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainSegmenterParams:
        if self.weights is not None and not self.weights.strip():
            raise ValueError("'weights' is empty (fix: give a registered name, a path or a URL, or remove it)")
        if not self.pretrained and self.weights is not None:
            raise ValueError("'weights' is set but pretrained = false (fix: remove one of them)")
        if self.freeze_backbone and not self.pretrained:
            raise ValueError("freeze_backbone with pretrained = false would keep a random trunk (fix: remove one)")
        return self

    def recipe(self) -> dict[str, Any]:
        """Learning rate, momentum, weight decay and loss reduction: the parameters, or the recipe's."""
        base = BOOK_FCN if self.model == FCN18 else TORCHVISION
        given = {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                 "reduction": self.loss_reduction}
        return {key: given[key] if given[key] is not None else value for key, value in base.items()}


class TrainSegmenter(Stage):
    name = "train.segmenter"
    kind = StageKind.TRAIN
    description = "Train a semantic segmenter (d2l.ai's FCN, or fine-tune a torchvision one) on your masks; writes segmenter.pt."
    reads = ("image",)
    writes = ()
    consumes = True
    Params: ClassVar[type[Params]] = TrainSegmenterParams

    def __init__(self, params: Params, context: StageContext) -> None:
        super().__init__(params, context)
        self.net: Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.scaler: Any = None
        self.counters: dict[str, Any] = {}  # made in setup: it holds a tensor, and __init__ imports no torch
        self.epochs_done = 0
        self._shown: list[Any] = []

    # -- the data

    @cached_property
    def masks(self) -> MaskFolder:
        """Where the masks are and what their classes are called (read before setup)."""
        from imgflow_segment.masks import ClassList, MaskFolder

        if self.params.masks is not None:
            root = self.context.resolve(self.params.masks)
        elif self.context.input_root is not None:
            root = Path(self.context.input_root) / "masks"
        else:
            raise ConfigError(f"stage '{self.id}': no input folder (fix: set [input] path)")
        if not root.is_dir():
            raise ConfigError(f"{root}: no masks folder (fix: set 'masks' to the folder of <image>.png label masks, "
                              "or put them under masks/ in the input folder)")
        search = [p for p in (self.context.input_root, root) if p is not None]
        classes = ClassList.resolve(self.params.classes, [Path(p) for p in search], self.context.resolve)
        return MaskFolder(root=root, classes=classes)

    @property
    def classes(self) -> ClassList:
        return self.masks.classes

    @cached_property
    def _masks_prefix(self) -> str:
        """The masks folder as an input-relative path prefix ("masks/"), or "" when it is elsewhere."""
        if self.context.input_root is None:
            return ""
        try:
            inside = self.masks.root.resolve().relative_to(Path(self.context.input_root).resolve())
        except ValueError:
            return ""
        return f"{inside.as_posix()}/" if inside.parts else ""

    def epochs(self) -> int:
        return self.params.epochs

    def split_of(self, relpath: str) -> str | None:
        from imgflow_finetune import kit

        if self._masks_prefix and relpath.startswith(self._masks_prefix):
            return None  # a mask, not an image
        if not self.masks.has(relpath):
            return None
        return kit.split_of(relpath, seed=self.context.seed, val_fraction=self.params.val_fraction)

    def targets_of(self, relpath: str, height: int, width: int) -> Targets:
        return self.masks.targets(relpath, height, width)

    def fingerprint(self) -> dict[str, Any]:
        from imgflow import models

        facts: dict[str, Any] = {"classes": list(self.classes.names), "palette": [list(c) for c in self.classes.palette]}
        if self.params.pretrained:
            facts["pretrained"] = models.weights_fingerprint(self.weights_source(), self._known_urls())
        return facts

    def _known_urls(self) -> dict[str, str]:
        from imgflow_finetune import MODELS as BACKBONES
        from imgflow_finetune import registry_name as backbone_name

        urls = {registry_name(m): u for m, (u, _d) in MODELS.items()}
        urls[backbone_name("resnet18")] = BACKBONES["resnet18"][0]
        return urls

    def weights_source(self) -> str | Path:
        from imgflow import models
        from imgflow_finetune import registry_name as backbone_name

        default = backbone_name("resnet18") if self.params.model == FCN18 else registry_name(self.params.model)
        return models.resolve_weights(self.params.weights, default, self.context.resolve)

    # -- setup

    def setup(self, device: torch.device) -> None:
        import torch

        from imgflow_finetune import kit
        from imgflow_segment import networks

        super().setup(device)
        p, recipe = self.params, self.params.recipe()
        net = networks.build_for_classes(p.model, len(self.classes.names))
        if p.pretrained:
            networks.load_pretrained(net, p.model, self.weights_source())
        if p.freeze_backbone:
            for param in networks.trunk(net, p.model).parameters():
                param.requires_grad_(False)
        self.net = net.to(device)
        trained = [t for t in self.net.parameters() if t.requires_grad]
        if p.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(trained, lr=recipe["lr"], weight_decay=recipe["weight_decay"])
        else:
            self.optimizer = torch.optim.SGD(trained, lr=recipe["lr"], momentum=recipe["momentum"],
                                             weight_decay=recipe["weight_decay"])
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=p.epochs)
                          if p.schedule == "cosine" else None)
        self.amp_dtype = kit.amp_dtype(device, p.amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.counters = _fresh_counters(len(self.classes.names))

    def teardown(self) -> None:
        self.net = self.optimizer = self.scheduler = self.scaler = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        from imgflow_segment import networks

        return networks.logits(self.net, self.params.model, x)

    # -- the training protocol

    def start_epoch(self, epoch: int) -> None:
        self.counters = _fresh_counters(len(self.classes.names))
        self._shown = []

    def _inputs(self, batch: Batch, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images and masks; training batches are randomly cropped (one draw per item)."""
        import torch

        from imgflow_segment import networks

        images, masks = [], []
        for item in batch.items:
            if item.targets is None or item.targets.mask is None:
                raise ConfigError(f"stage '{self.id}': {item.source} reached the trainer without a mask (an engine "
                                  "or upstream-stage bug: please report)")
            image, mask = item.image, item.targets.mask.to(item.image.device)
            if train and self.params.crop is not None:
                image, mask = networks.random_crop(image, mask, self.params.crop, item.generator(self.id))
            images.append(image)
            masks.append(mask[0])
        if len({tuple(im.shape[-2:]) for im in images}) > 1:
            raise ConfigError(f"stage '{self.id}': images of different sizes in one batch without 'crop' (fix: set "
                              "crop, add a resize stage before the trainer, or [run] batch_size = 1)")
        mean = torch.tensor(IMAGENET_MEAN, device=images[0].device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images[0].device).view(1, 3, 1, 1)
        x = (torch.stack(images).float() - mean) / std
        return x.to(self.torch_device), torch.stack(masks).to(self.torch_device)

    def _losses(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-pixel cross-entropy averaged over each image's labelled pixels, ``(B,)``."""
        from torch.nn import functional as F

        from imgflow_segment.masks import IGNORE_INDEX

        pixels = F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX, reduction="none")
        counted = (y != IGNORE_INDEX).flatten(1).sum(1).clamp(min=1)
        return pixels.flatten(1).sum(1) / counted

    def consume(self, batch: Batch) -> dict[str, float] | None:
        if self.net is None:
            raise RuntimeError(f"stage '{self.id}' used before setup() (engine bug)")
        if batch.split != "train":
            self._validate(batch)
            return None
        from imgflow_finetune import kit

        self._mode(True)
        x, y = self._inputs(batch, train=True)
        with kit.autocast(self.amp_dtype):
            logits = self.logits(x)
        losses = self._losses(logits, y)
        loss = losses.sum() if self.params.recipe()["reduction"] == "sum" else losses.mean()
        trainer_state.optimizer_step(loss, self.optimizer, self.scaler)
        correct, counted = _pixel_hits(logits.detach(), y)
        c = self.counters
        c["train_seen"] += len(batch)
        c["train_loss_sum"] += float(losses.detach().sum())
        c["train_correct"] += correct
        c["train_pixels"] += counted
        return {"loss": float(losses.detach().mean()), "acc": correct / max(counted, 1)}

    def _mode(self, train: bool) -> None:
        """Train or eval; a frozen trunk's batch norms keep their statistics."""
        from imgflow_segment import networks

        self.net.train(train)
        if train and self.params.freeze_backbone:
            networks.trunk(self.net, self.params.model).eval()

    def _validate(self, batch: Batch) -> None:
        """Whole images (grouped by size), eval mode: loss, confusion matrix, the first previews."""
        import torch

        from imgflow_finetune import kit

        self._mode(False)
        groups: dict[tuple[int, int], list[Any]] = {}
        for item in batch.items:
            groups.setdefault(tuple(item.image.shape[-2:]), []).append(item)
        for items in groups.values():
            x, y = self._inputs(batch.with_items(items), train=False)
            with torch.no_grad(), kit.autocast(self.amp_dtype):
                logits = self.logits(x)
            c = self.counters
            c["val_seen"] += len(items)
            c["val_loss_sum"] += float(self._losses(logits, y).sum())
            predicted = logits.argmax(1)
            c["confusion"] += _confusion(predicted, y, len(self.classes.names)).cpu()
            for item, labels in zip(items, predicted, strict=True):
                if len(self._shown) < self.params.previews:
                    self._shown.append((item.image.detach().cpu(), labels.cpu(), item.targets.mask[0].cpu()))

    def end_epoch(self, epoch: int) -> dict[str, float]:
        c = self.counters
        metrics = {"loss": _ratio(c["train_loss_sum"], c["train_seen"]),
                   "pixel_acc": _ratio(c["train_correct"], c["train_pixels"])}
        if c["val_seen"]:
            scores = scores_of(c["confusion"])
            metrics.update(val_loss=_ratio(c["val_loss_sum"], c["val_seen"]), val_pixel_acc=scores["pixel_acc"],
                           val_miou=scores["miou"])
            self._write_preview(epoch)
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        if self.scheduler is not None:
            self.scheduler.step()
        self.epochs_done = epoch + 1
        return metrics

    def _write_preview(self, epoch: int) -> None:
        """Each shown image twice: the true classes over it, then the predicted ones."""
        from imgflow_finetune import kit
        from imgflow_segment.stage import blend_overlay

        if not self._shown or self.context.output_root is None:
            return
        import torch

        table = torch.tensor(self.classes.palette, dtype=torch.float32) / 255.0
        pictures = []
        for image, predicted, truth in self._shown:
            shown_truth = torch.where(truth == 255, torch.zeros_like(truth), truth)
            pictures += [blend_overlay(image, shown_truth, 0.6, table), blend_overlay(image, predicted, 0.6, table)]
        kit.write_atomic(Path(self.context.output_root), f"previews/epoch_{epoch + 1:03d}.png",
                         kit.png_bytes(kit.tile(pictures, columns=2)))

    # -- resume

    def state_dict(self) -> dict[str, Any]:
        return {**trainer_state.optimization_state(self.net, self.optimizer, self.scheduler, self.scaler),
                "counters": {k: v for k, v in self.counters.items() if k != "confusion"},
                "epochs_done": self.epochs_done, "classes": list(self.classes.names)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state.get("classes", [])) != list(self.classes.names):
            raise ConfigError(f"stage '{self.id}': the training checkpoint was made for classes "
                              f"{state.get('classes')}, now they are {list(self.classes.names)} (fix: rerun with --force)")
        trainer_state.restore_optimization(state, self.net, self.optimizer, self.scheduler, self.scaler)
        self.counters = {**_fresh_counters(len(self.classes.names)), **state.get("counters", {})}
        self.epochs_done = int(state.get("epochs_done", 0))

    # -- the end

    def checkpoint_bytes(self) -> bytes:
        from imgflow_finetune import kit

        doc = {"format": FORMAT, "version": 1, "model": self.params.model, "classes": list(self.classes.names),
               "palette": [list(c) for c in self.classes.palette], "state_dict": self.net.state_dict(),
               "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "epochs": int(self.epochs_done)}
        return kit.checkpoint_bytes(doc)

    def finalize(self) -> list[Artifact]:
        return [Artifact("segmenter.pt", data=self.checkpoint_bytes())]


# ---------------------------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------------------------


def _confusion(predicted: torch.Tensor, truth: torch.Tensor, classes: int) -> torch.Tensor:
    """``(classes, classes)`` counts, rows = truth, columns = prediction; ignored pixels left out."""
    import torch

    keep = truth < classes
    index = truth[keep] * classes + predicted[keep]
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes)


def scores_of(confusion: torch.Tensor) -> dict[str, float]:
    """Pixel accuracy and mean IoU (over the classes that occur in the truth or the predictions)."""
    confusion = confusion.double()
    total = float(confusion.sum())
    hits = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - hits
    present = union > 0
    iou = hits[present] / union[present]
    return {"pixel_acc": float(hits.sum()) / total if total else math.nan,
            "miou": float(iou.mean()) if bool(present.any()) else math.nan}


def _pixel_hits(logits: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    from imgflow_segment.masks import IGNORE_INDEX

    counted = y != IGNORE_INDEX
    return int(((logits.argmax(1) == y) & counted).sum()), int(counted.sum())


def _fresh_counters(classes: int) -> dict[str, Any]:
    import torch

    return {"train_seen": 0, "train_loss_sum": 0.0, "train_correct": 0, "train_pixels": 0, "val_seen": 0,
            "val_loss_sum": 0.0, "confusion": torch.zeros(classes, classes, dtype=torch.int64)}


def _ratio(num: float, den: float) -> float:
    return float(num) / den if den else math.nan

