"""``train.detector``: train an object detector on your own boxes; writes ``detector.pt``.

Two families (``model``):

  tiny_ssd     d2l.ai's Tiny SSD from scratch, the book's recipe (SPEC.md section 4): every image
               squashed to ``image_size`` squared (256), pixel values 0..255, anchors labelled by the
               book's assignment rule, loss = cross-entropy over classes + L1 over the masked
               offsets, SGD lr 0.2, weight decay 5e-4, 20 epochs;
  torchvision  a COCO detector fine-tuned as torchvision's tutorial does: the COCO weights
               (detect-<model>), a fresh class head for your classes, SGD lr 0.005, momentum 0.9,
               weight decay 5e-4; the model's own transform resizes and normalises. The backbone's
               batch norms keep their COCO statistics (torchvision freezes them too);
               ``freeze_backbone`` also stops its weights. Mixed precision on CUDA.

Labels come from a COCO JSON, YOLO files or a CSV (:mod:`imgflow_detect.labels`); they reach the
items as ``item.targets`` (``targets_of``) before the upstream stages, so a ``flip_horizontal`` or
``random_resized_crop`` before this stage moves the boxes with the pixels. Validation (after each
epoch's training images): mAP@0.5 and mAP@[.5:.95] with pycocotools, and a preview PNG of the
first validation images with their boxes (``previews/epoch_NNN.png``).

The engine (imgflow.training) owns the loop, the checkpoints and the resume; :meth:`finalize`
returns ``detector.pt`` (:mod:`imgflow_detect.networks`), which ``detect`` loads with
``weights = "<output>/detector.pt"``. No torch at import.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from imgflow import Artifact, ConfigError, Params, Stage, StageContext, StageKind
from imgflow.training import trainer_state
from imgflow_detect import MODELS, registry_name
from imgflow_detect.networks import FORMAT, TINY_SSD

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Batch, Targets
    from imgflow_detect.labels import BoxLabels

BOOK_TINY_SSD = {"lr": 0.2, "momentum": 0.0}  # SPEC section 4
TUTORIAL_TORCHVISION = {"lr": 0.005, "momentum": 0.9}  # torchvision's detection fine-tuning tutorial
TrainableModel = Literal["tiny_ssd", "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn_v2",
                         "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn", "ssd300_vgg16",
                         "ssdlite320_mobilenet_v3_large"]


class TrainDetectorParams(Params):
    model: TrainableModel = Field(
        "tiny_ssd", description="tiny_ssd (d2l.ai's, from scratch) or a torchvision detector fine-tuned from its "
        "COCO weights: fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn_v2, retinanet_resnet50_fpn_v2, "
        "fcos_resnet50_fpn, ssd300_vgg16, ssdlite320_mobilenet_v3_large.")
    labels: str | None = Field(
        None, description="The boxes: a COCO JSON, a CSV (path,label,x1,y1,x2,y2) or a YOLO folder (classes.txt "
        "+ <image>.txt), relative to the pipeline file; unset = coco.json, labels.csv or labels/ in the input.")
    classes: list[str] | None = Field(
        None, description="Train only these classes, in this order; unset = every class of the labels.")
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="Without train/ and val/ folders (or a CSV split column): the fraction of "
        "images kept for validation, chosen by a stable hash of the path and the seed.")
    epochs: int = Field(20, ge=1, le=100_000, description="Passes over the training images (the book: 20).")
    lr: float | None = Field(None, gt=0, description="Learning rate; default 0.2 for tiny_ssd (the book), "
                             "0.005 for torchvision detectors (torchvision's tutorial).")
    momentum: float | None = Field(None, ge=0, lt=1, description="SGD momentum; default 0 for tiny_ssd, 0.9 "
                                   "for torchvision detectors.")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay (5e-4 in both recipes).")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd (both recipes) or adamw.")
    schedule: Literal["none", "cosine"] = Field("none", description="Learning rate over epochs: constant or "
                                                "cosine to 0.")
    image_size: int = Field(256, ge=64, le=4096, description="tiny_ssd: the square every image is resized to "
                            "(the book's 256: 5,444 anchors). torchvision detectors resize on their own.")
    pretrained: bool = Field(True, description="torchvision detectors: start from the COCO weights "
                             "(detect-<model>); false trains from scratch.")
    weights: str | None = Field(None, description="torchvision detectors: the COCO checkpoint instead of "
                                "detect-<model> (a registered name, a path or a URL).")
    freeze_backbone: bool = Field(False, description="torchvision detectors: keep the backbone's weights "
                                  "fixed (only the heads learn).")
    amp: bool = Field(True, description="Mixed precision on CUDA; ignored on the CPU.")
    previews: int = Field(4, ge=0, le=64, description="Validation images drawn with their boxes in "
                          "previews/epoch_NNN.png after each epoch (0: none).")
    preview_threshold: float = Field(0.3, ge=0, le=1, description="Score from which a detection is drawn.")

    @model_validator(mode="after")
    def _consistent(self) -> TrainDetectorParams:
        if self.model == TINY_SSD and (self.weights is not None or "pretrained" in self.model_fields_set):
            raise ValueError("tiny_ssd trains from scratch, as the book does: 'weights' and 'pretrained' are "
                             "for torchvision detectors (fix: remove them, or choose a torchvision model)")
        if self.weights is not None and not self.weights.strip():
            raise ValueError("'weights' is empty (fix: give a registered name, a path or a URL, or remove it)")
        if not self.pretrained and self.weights is not None:
            raise ValueError("'weights' is set but pretrained = false (fix: remove one of them)")
        if self.classes is not None and (not self.classes or len(set(self.classes)) != len(self.classes)):
            raise ValueError("'classes' must name at least one class, each once (fix: e.g. [\"banana\"])")
        return self

    def recipe(self) -> dict[str, float]:
        """The learning rate and momentum: the parameters, or the recipe's."""
        base = BOOK_TINY_SSD if self.model == TINY_SSD else TUTORIAL_TORCHVISION
        return {"lr": self.lr if self.lr is not None else base["lr"],
                "momentum": self.momentum if self.momentum is not None else base["momentum"]}


class TrainDetector(Stage):
    name = "train.detector"
    kind = StageKind.TRAIN
    description = "Train an object detector (d2l.ai's Tiny SSD, or fine-tune a torchvision one) on your boxes; writes detector.pt."
    reads = ("image",)
    writes = ()
    consumes = True
    Params: ClassVar[type[Params]] = TrainDetectorParams

    def __init__(self, params: Params, context: StageContext) -> None:
        super().__init__(params, context)
        self.net: Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.scaler: Any = None
        self.counters = _fresh_counters()
        self.epochs_done = 0
        self._val: Any = None
        self._shown: list[Any] = []

    # -- the data

    @cached_property
    def labels(self) -> BoxLabels:
        """The label file, read once (the engine asks split_of before setup)."""
        from imgflow_detect.labels import BoxLabels

        p = self.params
        if p.labels is not None:
            return BoxLabels.read(self.context.resolve(p.labels), p.classes)
        if self.context.input_root is None:
            raise ConfigError(f"stage '{self.id}': no input folder (fix: set [input] path)")
        return BoxLabels.find(Path(self.context.input_root), p.classes)

    @property
    def classes(self) -> list[str]:
        return self.labels.classes

    def epochs(self) -> int:
        return self.params.epochs

    def split_of(self, relpath: str) -> str | None:
        from imgflow_finetune import kit

        if self.labels.key_of(relpath) is None:
            return None
        return kit.split_of(relpath, seed=self.context.seed, val_fraction=self.params.val_fraction,
                            fixed=self.labels.split(relpath))

    def targets_of(self, relpath: str, height: int, width: int) -> Targets:
        return self.labels.targets(relpath, height, width)

    def fingerprint(self) -> dict[str, Any]:
        """The label file (its size and time) and, for fine-tuning, the COCO weights."""
        from imgflow import models

        facts: dict[str, Any] = {"labels": models.weights_fingerprint(self.labels.source)}
        if self.params.model != TINY_SSD and self.params.pretrained:
            facts["coco"] = models.weights_fingerprint(self.weights_source(),
                                                       {registry_name(m): u for m, (u, _d) in MODELS.items()})
        return facts

    def weights_source(self) -> str | Path:
        from imgflow import models

        return models.resolve_weights(self.params.weights, registry_name(self.params.model), self.context.resolve)

    # -- setup

    def setup(self, device: torch.device) -> None:
        """The network for the labels' classes (COCO weights but the head, when fine-tuning), the
        optimiser and the schedule. The global RNG is seeded by the engine: same pipeline, same init."""
        import torch

        from imgflow_detect import networks
        from imgflow_finetune import kit

        super().setup(device)
        p = self.params
        net = networks.build(p.model, len(self.classes))
        if p.model != TINY_SSD and p.pretrained:
            from imgflow import models

            source = self.weights_source()
            networks.load_except_head(net, p.model, models.load_state_dict(source), str(source))
        if p.freeze_backbone and p.model != TINY_SSD:
            for param in net.backbone.parameters():
                param.requires_grad_(False)
        self.net = net.to(device)
        recipe = p.recipe()
        trained = [t for t in self.net.parameters() if t.requires_grad]
        if p.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(trained, lr=recipe["lr"], weight_decay=p.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(trained, lr=recipe["lr"], momentum=recipe["momentum"],
                                             weight_decay=p.weight_decay)
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=p.epochs)
                          if p.schedule == "cosine" else None)
        self.amp_dtype = kit.amp_dtype(device, p.amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.counters = _fresh_counters()
        self._fresh_validation()

    def teardown(self) -> None:
        self.net = self.optimizer = self.scheduler = self.scaler = None

    def _mode(self, train: bool) -> None:
        """Train or eval; a fine-tuned backbone's batch norms keep their COCO statistics."""
        self.net.train(train)
        if train and self.params.model != TINY_SSD:
            from torch import nn

            for module in self.net.backbone.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()

    # -- the training protocol

    def start_epoch(self, epoch: int) -> None:
        self.counters = _fresh_counters()
        self._fresh_validation()

    def _fresh_validation(self) -> None:
        """Empty mAP and preview collections (every epoch, and after setup: a resumed run may
        start mid-epoch, without start_epoch)."""
        from imgflow_detect.evaluate import MapAccumulator

        self._val = MapAccumulator(self.classes)
        self._shown = []

    def consume(self, batch: Batch) -> dict[str, float] | None:
        """One optimisation step on a training batch; predictions for mAP on a validation batch."""
        if self.net is None:
            raise RuntimeError(f"stage '{self.id}' used before setup() (engine bug)")
        if batch.split != "train":
            self._validate(batch)
            return None
        self._mode(True)
        loss, metrics = self._tiny_ssd_loss(batch) if self.params.model == TINY_SSD else self._torchvision_loss(batch)
        trainer_state.optimizer_step(loss, self.optimizer, self.scaler)
        c = self.counters
        c["train_seen"] += len(batch)
        c["train_loss_sum"] += metrics["loss"] * len(batch)
        return metrics

    def _targets(self, batch: Batch) -> list[Targets]:
        missing = [item.source for item in batch.items if item.targets is None or item.targets.boxes is None]
        if missing:
            raise ConfigError(f"stage '{self.id}': {missing[0]} reached the trainer without boxes (an engine or "
                              "upstream-stage bug: please report)")
        return [item.targets for item in batch.items]  # type: ignore[misc]

    def _tiny_ssd_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The book's step: anchors labelled, CE + masked L1 per image, averaged over the batch."""
        import torch

        from imgflow_detect import anchors as A
        from imgflow_detect import tiny_ssd

        targets = self._targets(batch)
        x = tiny_ssd.network_input([item.image for item in batch.items], self.params.image_size)
        boxes = [tiny_ssd.normalised_boxes(t.boxes.to(x.device), *item.image.shape[-2:])
                 for t, item in zip(targets, batch.items, strict=True)]
        with kit_autocast(self.amp_dtype):
            anchors, cls_preds, bbox_preds = self.net(x)
        bbox_labels, bbox_masks, cls_labels = A.multibox_target(anchors, boxes, [t.labels for t in targets])
        per_image = tiny_ssd.calc_loss(cls_preds.float(), cls_labels, bbox_preds.float(), bbox_labels, bbox_masks)
        with torch.no_grad():
            c = self.counters
            c["anchors"] += cls_labels.numel()
            c["anchor_errors"] += int((cls_preds.argmax(dim=-1) != cls_labels).sum())
            c["offsets"] += bbox_labels.numel()
            c["offset_abs_sum"] += float(((bbox_labels - bbox_preds.float()) * bbox_masks).abs().sum())
        loss = per_image.mean()
        return loss, {"loss": float(loss.detach())}

    def _torchvision_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """torchvision's training forward: the model's transform, its losses summed."""
        device = self.torch_device
        images = [item.image.to(device) for item in batch.items]
        targets = [{"boxes": t.boxes.to(device), "labels": t.labels.to(device) + 1} for t in self._targets(batch)]
        with kit_autocast(self.amp_dtype):
            losses = self.net(images, targets)
        loss = sum(v.float() for v in losses.values())
        metrics = {"loss": float(loss.detach())}
        metrics.update({key: float(value.detach()) for key, value in losses.items()})
        return loss, metrics

    def _validate(self, batch: Batch) -> None:
        """Eval mode: detections for mAP (and the tiny_ssd loss), the first images kept for the preview."""
        import torch

        from imgflow_detect import tiny_ssd

        self._mode(False)
        targets = self._targets(batch)
        images = [item.image for item in batch.items]
        with torch.no_grad(), kit_autocast(self.amp_dtype):
            if self.params.model == TINY_SSD:
                x = tiny_ssd.network_input(images, self.params.image_size)
                sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
                outputs = tiny_ssd.detections(self.net, x, sizes)
            else:
                outputs = self.net([im.to(self.torch_device) for im in images])
        for item, target, out in zip(batch.items, targets, outputs, strict=True):
            height, width = (int(s) for s in item.image.shape[-2:])
            boxes, scores, labels = (out[k].detach().float().cpu() for k in ("boxes", "scores", "labels"))
            self._val.add(height, width, target.boxes.cpu(), target.labels.cpu(), boxes, scores, labels.long())
            if len(self._shown) < self.params.previews:
                keep = scores >= self.params.preview_threshold
                self._shown.append((item.image.detach().cpu(), target.boxes.cpu(), boxes[keep], scores[keep],
                                    labels[keep].long()))
        self.counters["val_seen"] += len(batch)

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """The epoch's loss (tiny_ssd: and the book's class error and offset MAE), validation mAP."""
        c = self.counters
        metrics = {"loss": _ratio(c["train_loss_sum"], c["train_seen"])}
        if self.params.model == TINY_SSD:
            metrics["class_err"] = _ratio(c["anchor_errors"], c["anchors"])
            metrics["bbox_mae"] = _ratio(c["offset_abs_sum"], c["offsets"])
        if c["val_seen"] and self._val is not None:
            found = self._val.result()
            metrics["val_map50"], metrics["val_map"] = found["map50"], found["map"]
            self._write_preview(epoch)
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        if self.scheduler is not None:
            self.scheduler.step()
        self.epochs_done = epoch + 1
        return metrics

    def _write_preview(self, epoch: int) -> None:
        from imgflow_detect.evaluate import preview
        from imgflow_finetune import kit

        if not self._shown or self.context.output_root is None:
            return
        drawn = [preview(image, gt, boxes, scores, labels, self.classes) for image, gt, boxes, scores, labels in self._shown]
        kit.write_atomic(Path(self.context.output_root), f"previews/epoch_{epoch + 1:03d}.png",
                         kit.png_bytes(kit.tile(drawn)))

    # -- resume

    def state_dict(self) -> dict[str, Any]:
        return {**trainer_state.optimization_state(self.net, self.optimizer, self.scheduler, self.scaler),
                "counters": dict(self.counters), "epochs_done": self.epochs_done, "classes": list(self.classes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses a checkpoint made for other classes."""
        if list(state.get("classes", [])) != self.classes:
            raise ConfigError(f"stage '{self.id}': the training checkpoint was made for classes "
                              f"{state.get('classes')}, the labels have {self.classes} (fix: rerun with --force)")
        trainer_state.restore_optimization(state, self.net, self.optimizer, self.scheduler, self.scaler)
        self.counters = {**_fresh_counters(), **state.get("counters", {})}
        self.epochs_done = int(state.get("epochs_done", 0))

    # -- the end

    def checkpoint_bytes(self) -> bytes:
        """``detector.pt``: architecture, class names, weights (see :mod:`imgflow_detect.networks`)."""
        from imgflow_finetune import kit

        doc = {"format": FORMAT, "version": 1, "model": self.params.model, "classes": list(self.classes),
               "state_dict": self.net.state_dict(), "epochs": int(self.epochs_done)}
        if self.params.model == TINY_SSD:
            doc["image_size"] = int(self.params.image_size)
        return kit.checkpoint_bytes(doc)

    def finalize(self) -> list[Artifact]:
        return [Artifact("detector.pt", data=self.checkpoint_bytes())]


def kit_autocast(dtype: Any) -> Any:
    from imgflow_finetune import kit

    return kit.autocast(dtype)


def _fresh_counters() -> dict[str, float]:
    return {"train_seen": 0, "train_loss_sum": 0.0, "anchors": 0, "anchor_errors": 0, "offsets": 0,
            "offset_abs_sum": 0.0, "val_seen": 0}


def _ratio(num: float, den: float) -> float:
    return float(num) / den if den else math.nan
