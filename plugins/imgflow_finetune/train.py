"""``train.classifier``: d2l.ai's fine-tuning recipe as an imgflow trainer (SPEC.md section 6).

The recipe: a torchvision backbone with ImageNet weights, the output layer replaced by a fresh
Linear for our classes (Xavier-uniform), SGD with weight decay 1e-3, a base learning rate of
5e-5 for the pretrained layers and 10x that for the new head, per-image losses SUMMED over the
batch as the book's training loop does, 5 epochs; training images get RandomResizedCrop(224) and
a horizontal flip, validation images Resize(256) + CenterCrop(224); ImageNet normalisation.

From scratch (``pretrained = false``) the book trains every layer with one learning rate of
5e-4; unless you set ``lr`` or ``head_lr_mult``, that is what this stage does too.

The engine (imgflow.training) owns the loop: it feeds training batches in a seeded order, then
validation batches, calls ``end_epoch`` and writes a checkpoint of ``state_dict()`` after every
epoch (and every ``[run] checkpoint_every`` steps), so a killed run resumes exactly. At the end
``finalize()`` returns ``model.pt`` (see :mod:`imgflow_finetune.checkpoint`).

No torch or torchvision at import time.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from imgflow import Artifact, ConfigError, Params, Stage, StageContext, StageKind, derive_seed
from imgflow.training import trainer_state
from imgflow_finetune import MODELS, registry_name
from imgflow_finetune.networks import ALIASES, IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Batch
    from imgflow.training.labels import LabelledFolder

#: The book's learning rates: fine-tuning (base, head x10) and training from scratch (one group).
BOOK_LR_PRETRAINED = 5e-5
BOOK_LR_SCRATCH = 5e-4
BOOK_HEAD_MULT = 10.0


def _alias(value: Any) -> Any:
    """Accept the short architecture names of the issue text ("mobilenet_v3", "efficientnet")."""
    return ALIASES.get(value, value) if isinstance(value, str) else value


ModelName = Annotated[Literal["resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0"],
                      BeforeValidator(_alias)]


class TrainClassifierParams(Params):
    model: ModelName = Field(
        "resnet18",
        description="Backbone (torchvision): resnet18, resnet50, mobilenet_v3_large (mobilenet_v3) or "
        "efficientnet_b0 (efficientnet).",
    )
    pretrained: bool = Field(
        True, description="Start from the ImageNet weights (finetune-<model> in imgflow models list); false "
        "trains from scratch with torchvision's initialisation.",
    )
    weights: str | None = Field(
        None, description="Backbone checkpoint instead of finetune-<model>: a registered name, a path "
        "(relative to the pipeline file) or a URL of an ImageNet state dict for the same architecture; "
        "\"random\": a seeded random backbone with the fine-tuning recipe, for trying things out offline.",
    )
    epochs: int = Field(5, ge=1, le=100_000, description="Passes over the training images.")
    lr: float | None = Field(
        None, gt=0, description="Base learning rate; default 5e-5 when pretrained, 5e-4 from scratch "
        "(the book's values, meant for summed losses: see loss_reduction).",
    )
    head_lr_mult: float | None = Field(
        None, gt=0, description="Learning rate of the new output layer as a multiple of lr; default 10 "
        "when pretrained, 1 from scratch (one learning rate, as the book trains from scratch).",
    )
    weight_decay: float = Field(1e-3, ge=0, description="L2 weight decay on every trained parameter.")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd (the recipe) or adamw.")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum (the book uses plain SGD: 0).")
    schedule: Literal["none", "cosine", "step"] = Field(
        "none", description="Learning-rate schedule over epochs: none, cosine (to 0 at the last epoch) "
        "or step (times step_gamma every step_epochs).",
    )
    step_epochs: int = Field(2, ge=1, description="For schedule = step: epochs between decays.")
    step_gamma: float = Field(0.1, gt=0, le=1, description="For schedule = step: the decay factor.")
    freeze: list[str] | int = Field(
        default_factory=list,
        description="Backbone layers kept fixed (no updates, batch-norm statistics frozen): the first "
        "N blocks (ResNet: stem, layer1..layer4; MobileNet/EfficientNet: features.0, ...), or a list "
        "of module names such as [\"conv1\", \"bn1\", \"layer1\"].",
    )
    image_size: int = Field(224, ge=16, le=4096, description="Side of the square the network sees.")
    resize: int = Field(256, ge=16, le=8192,
                        description="Validation: shorter edge resized to this before the centre crop.")
    crop_scale: tuple[float, float] = Field(
        (0.08, 1.0), description="Training crop area as a fraction of the image, [min, max] (RandomResizedCrop)."
    )
    crop_ratio: tuple[float, float] = Field(
        (3 / 4, 4 / 3), description="Training crop aspect ratio (width / height), [min, max], log-uniform."
    )
    flip: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip in training.")
    interpolation: Literal["bilinear", "bicubic"] = Field(
        "bilinear", description="Resampling of the crops and resizes (antialiased)."
    )
    loss_reduction: Literal["sum", "mean"] = Field(
        "sum", description="sum: per-image losses summed over the batch, as the book's loop does, which its "
        "learning rates assume; mean: the PyTorch default (then scale lr up by the batch size).",
    )
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="With root/<class>/ folders (no val/ or test/ folder): the fraction of "
        "images kept for validation, chosen by a stable hash of the path and the seed.",
    )
    labels: str | None = Field(
        None, description="A CSV with columns path,label[,split] (paths relative to the input folder) "
        "instead of the folder layout; relative to the pipeline file.",
    )
    amp: bool = Field(True, description="Mixed precision on CUDA (bfloat16, else float16 with loss "
                                        "scaling); ignored on the CPU.")

    @field_validator("crop_scale")
    @classmethod
    def _scale_valid(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"expected 0 < min <= max <= 1, got {list(v)} (fix: e.g. [0.08, 1.0])")
        return v

    @field_validator("crop_ratio")
    @classmethod
    def _ratio_valid(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"expected 0 < min <= max, got {list(v)} (fix: e.g. [0.75, 1.3333])")
        return v

    @field_validator("freeze")
    @classmethod
    def _freeze_valid(cls, v: list[str] | int) -> list[str] | int:
        if isinstance(v, int) and v < 0:
            raise ValueError(f"expected a number of blocks >= 0 or a list of module names, got {v} "
                             "(fix: freeze = 0 trains every layer; freeze = 2 keeps the first two blocks fixed; "
                             "or name modules, e.g. [\"conv1\", \"layer1\"])")
        if isinstance(v, list) and any(not name.strip() for name in v):
            raise ValueError("a module name in the list is empty (fix: e.g. [\"conv1\", \"layer1\"])")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainClassifierParams:
        if self.resize < self.image_size:
            raise ValueError(f"resize ({self.resize}) is smaller than image_size ({self.image_size}): the "
                             "centre crop would be padded (fix: resize >= image_size, the recipe uses 256/224)")
        if not self.pretrained and self.weights is not None:
            raise ValueError("'weights' is set but pretrained = false (fix: remove one of them)")
        return self

    def base_lr(self) -> float:
        """The learning rate of the backbone (see ``lr``)."""
        if self.lr is not None:
            return self.lr
        return BOOK_LR_PRETRAINED if self.pretrained else BOOK_LR_SCRATCH

    def head_mult(self) -> float:
        """The head's learning-rate multiple (see ``head_lr_mult``)."""
        if self.head_lr_mult is not None:
            return self.head_lr_mult
        return BOOK_HEAD_MULT if self.pretrained else 1.0


class TrainClassifier(Stage):
    name = "train.classifier"
    kind = StageKind.TRAIN
    description = "Fine-tune (or train from scratch) an image classifier on a labelled folder; writes model.pt."
    reads = ("image",)
    writes = ()
    consumes = True
    Params: ClassVar[type[Params]] = TrainClassifierParams

    def __init__(self, params: Params, context: StageContext) -> None:
        super().__init__(params, context)
        self.net: Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.scaler: Any = None
        self.classes: list[str] = []
        self.counters = _fresh_counters()
        self.epochs_done = 0
        self.frozen: list[str] = []

    # -- the data

    def labels_path(self) -> Path | None:
        """The labels CSV, made absolute against the pipeline file."""
        return self.context.resolve(self.params.labels) if self.params.labels else None

    @cached_property
    def folder(self) -> LabelledFolder:
        """The input's classes and splits, scanned once (also before setup: the engine asks split_of first)."""
        from imgflow.training.labels import LabelledFolder

        root = self.context.input_root
        if root is None:
            raise ConfigError(f"stage '{self.id}': no input folder to read classes from (fix: set [input] path)")
        skip = [self.context.output_root] if self.context.output_root is not None else []
        return LabelledFolder.scan(Path(root), labels_csv=self.labels_path(),
                                   val_fraction=self.params.val_fraction, seed=self.context.seed, skip=skip)

    def epochs(self) -> int:
        return self.params.epochs

    def split_of(self, relpath: str) -> str | None:
        return self.folder.split_of(relpath)

    def fingerprint(self) -> dict[str, Any]:
        """What changes the trained model beyond the parameters: the backbone weights and the CSV."""
        from imgflow import models

        facts: dict[str, Any] = {}
        if self.params.pretrained and self.weights_source() == models.RANDOM:
            facts["backbone"] = models.random_fingerprint(self.random_seed())
        elif self.params.pretrained:
            facts["backbone"] = models.weights_fingerprint(
                self.weights_source(), {registry_name(m): url for m, (url, _d) in MODELS.items()})
        labels = self.labels_path()
        if labels is not None:
            facts["labels"] = models.weights_fingerprint(labels)
        return facts

    def preflight(self) -> list[Any]:
        """The backbone weights exist or will be downloaded; the labels CSV exists (checked by validate)."""
        from imgflow import models
        from imgflow.preflight import file_notices, weights_notices

        found = weights_notices(self.weights_source(), keywords=(models.RANDOM,)) if self.params.pretrained else []
        labels = self.labels_path()
        if labels is not None:
            found += file_notices(labels, "labels CSV", "check 'labels' (relative to the pipeline file)")
        return found

    def weights_source(self) -> str | Path:
        """The backbone checkpoint: finetune-<model>, or what ``weights`` names."""
        from imgflow import models

        return models.resolve_weights(self.params.weights, registry_name(self.params.model), self.context.resolve,
                                      keywords=(models.RANDOM,))

    def random_seed(self) -> int:
        """The seed of ``weights = "random"``: the same pipeline starts from the same backbone."""
        return derive_seed(self.context.seed, self.id, "random-init", self.params.model)

    # -- setup

    def setup(self, device: torch.device) -> None:
        """Build the network for the input's classes, then the optimiser and the schedule."""
        import torch

        from imgflow_finetune import networks

        super().setup(device)
        self.classes = list(self.folder.classes)
        p = self.params
        net = self._pretrained_backbone() if p.pretrained else networks.build(p.model)
        net = networks.replace_head(net, p.model, len(self.classes))
        self.frozen = self._freeze(net)
        self.channels_last = device.type == "cuda"
        net = net.to(device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler()
        self.amp_dtype = self._amp_dtype(device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.counters = _fresh_counters()
        self.epochs_done = 0

    def _pretrained_backbone(self) -> Any:
        """The ImageNet network, built on the meta device and filled strictly from the checkpoint."""
        import torch

        from imgflow import models
        from imgflow_finetune import networks

        if self.weights_source() == models.RANDOM:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.random_seed())
                return networks.build(self.params.model)
        with torch.device("meta"):
            net = networks.build(self.params.model)
        state = models.load_state_dict(self.weights_source(), expected=networks.expected_shapes(net))
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        net.load_state_dict(state, strict=True, assign=True)
        return net

    def _freeze(self, net: Any) -> list[str]:
        """Turn off gradients for the frozen prefixes; return them (their BN layers stay in eval)."""
        from imgflow_finetune import networks

        p = self.params
        if isinstance(p.freeze, int):
            available = networks.blocks(net, p.model)
            if p.freeze > len(available):
                raise ConfigError(f"stage '{self.id}' param 'freeze': {p.model} has {len(available)} backbone "
                                  f"blocks, got {p.freeze} (fix: a number from 0 to {len(available)})")
            prefixes = [name for block in available[: p.freeze] for name in block]
        else:
            prefixes = list(p.freeze)
        names = [name for name, _ in net.named_parameters()]
        head = networks.head_name(p.model)
        for prefix in prefixes:
            if networks.matches(head, [prefix]) or prefix.startswith(head + "."):
                raise ConfigError(f"stage '{self.id}' param 'freeze': {prefix!r} would freeze the new output "
                                  f"layer {head!r} (fix: freeze backbone layers only)")
            if not any(networks.matches(n, [prefix]) for n in names):
                raise ConfigError(f"stage '{self.id}' param 'freeze': {p.model} has no layer {prefix!r} (fix: "
                                  f"use names under {', '.join(networks.top_level_names(net))})")
        for name, param in net.named_parameters():
            if networks.matches(name, prefixes):
                param.requires_grad_(False)
        return prefixes

    def _make_optimizer(self) -> Any:
        """Two parameter groups, "backbone" at lr and "head" at lr x head_lr_mult (the recipe)."""
        import torch

        from imgflow_finetune import networks

        p = self.params
        head = networks.head_name(p.model)
        backbone = [t for n, t in self.net.named_parameters() if t.requires_grad and not networks.matches(n, [head])]
        head_params = [t for n, t in self.net.named_parameters() if networks.matches(n, [head])]
        lr = p.base_lr()
        groups = [{"params": head_params, "lr": lr * p.head_mult(), "name": "head"}]
        if backbone:
            groups.insert(0, {"params": backbone, "lr": lr, "name": "backbone"})
        if p.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=lr, weight_decay=p.weight_decay)
        return torch.optim.SGD(groups, lr=lr, momentum=p.momentum, weight_decay=p.weight_decay)

    def _make_scheduler(self) -> Any:
        """An epoch-stepped schedule (stepped in end_epoch), or None."""
        import torch

        p = self.params
        if p.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=p.epochs)
        if p.schedule == "step":
            return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=p.step_epochs, gamma=p.step_gamma)
        return None

    def _amp_dtype(self, device: torch.device) -> Any:
        """bfloat16 where CUDA has it, float16 otherwise; None on the CPU or with amp = false."""
        import torch

        if not self.params.amp or device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _autocast(self) -> Any:
        import contextlib

        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def teardown(self) -> None:
        self.net = self.optimizer = self.scheduler = self.scaler = None

    # -- the training protocol

    def start_epoch(self, epoch: int) -> None:
        self.counters = _fresh_counters()

    def _mode(self, train: bool) -> None:
        """Train or eval mode; frozen layers always stay in eval so their BN statistics do not move."""
        from imgflow_finetune import networks

        self.net.train(train)
        if train and self.frozen:
            for name, module in self.net.named_modules():
                if name and networks.matches(name, self.frozen):
                    module.eval()

    def _inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Network input ``(N, 3, S, S)`` and targets for a batch (train or test transform)."""
        import torch

        from imgflow_finetune import transforms

        pre, aug = self.preprocess, self.augment
        targets = []
        views = []
        for item in batch.items:
            label = self.folder.label_of(item.source)
            if label is None:
                raise ConfigError(f"stage '{self.id}': {item.source} has no class label (fix: put it in a class "
                                  "folder or list it in the labels CSV)")
            targets.append(label)
            if batch.split == "train":
                views.append(transforms.train_view(item.image, item.generator(self.id), pre, aug))
            else:
                views.append(transforms.test_view(item.image, pre))
        x = transforms.normalise(views, pre, self.channels_last)
        return x, torch.tensor(targets, dtype=torch.long, device=x.device)

    def consume(self, batch: Batch) -> dict[str, float] | None:
        """One optimisation step on a training batch; accumulate loss/accuracy on a validation batch."""
        if self.net is None:
            raise RuntimeError(f"stage '{self.id}' used before setup() (engine bug)")
        if batch.split != "train":
            self._evaluate(batch)
            return None
        import torch
        from torch.nn import functional as F

        self._mode(True)
        x, y = self._inputs(batch)
        with self._autocast():
            logits = self.net(x)
        losses = F.cross_entropy(logits.float(), y, reduction="none")
        loss = losses.sum() if self.params.loss_reduction == "sum" else losses.mean()
        trainer_state.optimizer_step(loss, self.optimizer, self.scaler)
        with torch.no_grad():
            total = float(losses.detach().sum())
            correct = int((logits.detach().argmax(1) == y).sum())
        c = self.counters
        c["train_seen"] += len(y)
        c["train_correct"] += correct
        c["train_loss_sum"] += total
        c["steps"] += 1
        return {"loss": total / len(y), "acc": correct / len(y)}

    def _evaluate(self, batch: Batch) -> None:
        """Validation: the test transform, eval mode, no gradients; only counters change."""
        import torch
        from torch.nn import functional as F

        self._mode(False)
        with torch.no_grad():
            x, y = self._inputs(batch)
            with self._autocast():
                logits = self.net(x)
            losses = F.cross_entropy(logits.float(), y, reduction="none")
            c = self.counters
            c["val_seen"] += len(y)
            c["val_correct"] += int((logits.argmax(1) == y).sum())
            c["val_loss_sum"] += float(losses.sum())

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """The epoch's means; then the schedule steps. Validation keys only when there was validation."""
        c = self.counters
        metrics = {"loss": _ratio(c["train_loss_sum"], c["train_seen"]),
                   "train_acc": _ratio(c["train_correct"], c["train_seen"])}
        if c["val_seen"]:
            metrics["val_loss"] = _ratio(c["val_loss_sum"], c["val_seen"])
            metrics["val_acc"] = _ratio(c["val_correct"], c["val_seen"])
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        if self.scheduler is not None:
            self.scheduler.step()
        self.epochs_done = epoch + 1
        return metrics

    @cached_property
    def preprocess(self) -> Any:
        from imgflow_finetune.transforms import Preprocess

        p = self.params
        return Preprocess(resize=p.resize, image_size=p.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                          interpolation=p.interpolation)

    @cached_property
    def augment(self) -> Any:
        from imgflow_finetune.transforms import Augment

        p = self.params
        return Augment(scale=tuple(p.crop_scale), ratio=tuple(p.crop_ratio), flip=p.flip)

    # -- resume

    def state_dict(self) -> dict[str, Any]:
        """Model, optimiser, schedule, loss scaler and counters; tensors moved to the CPU."""
        return {
            **trainer_state.optimization_state(self.net, self.optimizer, self.scheduler, self.scaler),
            "counters": dict(self.counters),
            "epochs_done": self.epochs_done,
            "classes": list(self.classes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses a checkpoint made for other classes."""
        if list(state.get("classes", [])) != self.classes:
            raise ConfigError(f"stage '{self.id}': the training checkpoint was made for classes "
                              f"{state.get('classes')}, the input has {self.classes} (fix: rerun with --force "
                              "to start the training over)")
        trainer_state.restore_optimization(state, self.net, self.optimizer, self.scheduler, self.scaler)
        self.counters = {**_fresh_counters(), **state.get("counters", {})}
        self.epochs_done = int(state.get("epochs_done", 0))

    # -- the end

    def checkpoint_bytes(self) -> bytes:
        """``model.pt`` as bytes (see :mod:`imgflow_finetune.checkpoint`)."""
        from imgflow_finetune import checkpoint

        return checkpoint.to_bytes(self.params.model, self.classes, self.net.state_dict(),
                                   self.preprocess.to_dict(), self.epochs_done)

    def finalize(self) -> list[Artifact]:
        return [Artifact("model.pt", data=self.checkpoint_bytes())]


def _fresh_counters() -> dict[str, float]:
    return {"train_seen": 0, "train_correct": 0, "train_loss_sum": 0.0, "val_seen": 0, "val_correct": 0,
            "val_loss_sum": 0.0, "steps": 0}


def _ratio(num: float, den: float) -> float:
    return float(num) / den if den else math.nan
