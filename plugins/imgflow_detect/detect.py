"""The ``detect`` stage: torchvision's COCO object detectors over batches of images of any sizes.

Per batch: the items' images (float (3, H, W) in [0, 1], sizes may differ) go as one list through
the model, whose own transform normalises, resizes (e.g. shorter side 800 for the R-CNNs, 300 x 300
for SSD300) and maps the boxes back to each image's original pixels. The model's internal score
threshold, per-class NMS and detection cap are set from the stage's parameters, and
:func:`select_detections` applies them again (plus the class and size filters) so the result does
not depend on a model's defaults. The classifier is told that COCO's unused "N/A" ids are no
classes (:func:`silence_unused_classes`), so they can never take the model's detection slots.
Outputs (results, annotated image, crops, YOLO, COCO) come from
:mod:`imgflow_detect.outputs`, shared with the ``faces`` stage.

``weights`` may also name a ``detector.pt`` that ``train.detector`` wrote: its architecture (Tiny
SSD or a torchvision detector with a new class head) and its class names replace COCO's, in the
results, the annotations, the crops' folders, the YOLO classes and the COCO categories.

No torch or torchvision import at module import; both are imported in ``setup``/``process``.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from imgflow import Params, Stage, StageContext, StageKind, derive_seed
from imgflow_detect import MODELS, registry_name
from imgflow_detect.categories import COCO, COCO_CATEGORY_NAMES, Taxonomy, resolve_classes, trained
from imgflow_detect.outputs import (
    Detection,
    OutputParams,
    apply_outputs,
    coco_artifacts,
    yolo_classes_artifact,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Artifact, Batch

DetectorName = Literal[
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
    "maskrcnn_resnet50_fpn_v2",
]
RANDOM = "random"
MASK_THRESHOLD = 0.5  # Mask R-CNN's per-pixel probability -> binary mask, as torchvision's references do
NUM_CLASSES = 91  # COCO ids 0..90 including background and the unused "N/A" ids
# Logit given to the COCO ids that name no class ("N/A", and the background in sigmoid heads): every
# probability it yields is exactly 0 in float32 (and float16), below any score threshold.
MASKED_LOGIT = -1.0e4
# How many detections the model itself keeps per image before our filters (torchvision's default is
# 100). More than max_detections, so that boxes our filters drop (degenerate, too small, unwanted
# classes) do not crowd out the ones they keep; more still with a class filter.
CANDIDATES = 100
CANDIDATES_WITH_CLASS_FILTER = 300
_RCNN = ("fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn", "maskrcnn_resnet50_fpn_v2")


class DetectParams(OutputParams):
    model: DetectorName = Field(
        "fasterrcnn_mobilenet_v3_large_fpn",
        description="torchvision detector: fasterrcnn_resnet50_fpn_v2, fasterrcnn_mobilenet_v3_large_fpn, "
        "retinanet_resnet50_fpn_v2, fcos_resnet50_fpn, ssd300_vgg16, ssdlite320_mobilenet_v3_large, or "
        "maskrcnn_resnet50_fpn_v2 (adds instance masks).",
    )
    weights: str | None = Field(
        None,
        description="Checkpoint: unset = the official COCO weights (detect-<model>, downloaded once); a "
        "registered model name, a path (relative to the pipeline file) or a URL of a state dict for "
        "the same architecture with 91 classes; the detector.pt that train.detector wrote (its model "
        "and class names are used); or \"random\" (untrained, for tests).",
    )
    score_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Keep detections scoring at least this.")
    nms_iou: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Per-class non-maximum suppression: of two boxes of one class overlapping more than "
        "this IoU, the lower-scoring one is dropped.",
    )
    classes: list[str | int] | None = Field(
        None,
        description="Only these classes, by name (e.g. [\"person\", \"dog\"]) or id; unset = all (COCO's 80, or "
        "those of a trained detector.pt).",
    )
    max_detections: int = Field(100, ge=1, le=1000, description="At most this many detections per image.")
    min_size: float = Field(0.0, ge=0.0, description="Drop boxes narrower or shorter than this many pixels.")

    @field_validator("classes", mode="before")
    @classmethod
    def _names_or_ids(cls, value: Any) -> Any:
        """true/1.5 are neither a name nor an id: refuse them rather than coerce them."""
        if isinstance(value, list):
            for entry in value:
                if isinstance(entry, bool) or not isinstance(entry, str | int):
                    raise ValueError(f"'classes': {entry!r} is neither a class name nor an id (fix: write names "
                                     "in quotes, e.g. [\"person\", \"dog\"], or integer ids)")
        return value

    @model_validator(mode="after")
    def _check(self) -> DetectParams:
        if self.weights is not None and not self.weights.strip():
            raise ValueError("'weights' is empty (fix: give a registered name, a path or a URL, or remove "
                             "the key to use the COCO weights)")
        if self.classes is not None:
            if not self.classes:
                raise ValueError("'classes' is empty, so nothing would ever be detected (fix: name at least "
                                 "one class, or remove the key for all)")
            if self.weights is None:  # COCO; a trained detector's names are checked in setup
                resolve_classes(self.classes)  # raises with a did-you-mean
        return self


class Detect(Stage):
    name = "detect"
    kind = StageKind.DETECT
    description = "Detect COCO objects with a torchvision detector; boxes, crops, YOLO labels, COCO JSON."
    reads = ("image",)
    writes = ("image",)
    Params: ClassVar[type[Params]] = DetectParams

    def __init__(self, params: Params, context: StageContext) -> None:
        super().__init__(params, context)
        p: DetectParams = self.params  # type: ignore[assignment]
        self.model_name: str = p.model
        self.taxonomy: Taxonomy = COCO
        self.user_classes = resolve_classes(p.classes) if p.classes is not None and p.weights is None else None
        # "N/A" ids and the background are never reported, even by an untrained model
        self.class_ids = self.user_classes or frozenset(cid for cid, _ in COCO.categories)
        self.net: Any = None
        self.weights_id = ""

    def _use_taxonomy(self, taxonomy: Taxonomy) -> None:
        """Report these categories; the ``classes`` filter is resolved against them."""
        from imgflow import ConfigError

        self.taxonomy = taxonomy
        try:
            self.user_classes = resolve_classes(self.params.classes, taxonomy) if self.params.classes else None
        except ValueError as exc:
            raise ConfigError(f"stage '{self.id}' param {exc}") from None
        self.class_ids = self.user_classes or frozenset(cid for cid, _ in taxonomy.categories)

    # -- weights

    def weights_source(self) -> str | Path:
        """What to load: "random", a registry name, a URL, or an absolute local path."""
        from imgflow import models

        return models.resolve_weights(self.params.weights, registry_name(self.params.model),
                                      self.context.resolve, keywords=(RANDOM,))

    def random_seed(self) -> int:
        """The seed of a random initialisation: the same pipeline gives the same untrained net."""
        return derive_seed(self.context.seed, self.id, "random-init", self.params.model)

    def fingerprint(self) -> dict[str, Any]:
        """Which weights produce the boxes (see imgflow.models.weights_fingerprint)."""
        from imgflow import models

        source = self.weights_source()
        if source == RANDOM:
            return models.random_fingerprint(self.random_seed())
        return models.weights_fingerprint(source, {registry_name(m): url for m, (url, _d) in MODELS.items()})

    def preflight(self) -> list[Any]:
        """The weights exist or will be downloaded (checked by validate, before any image)."""
        from imgflow.preflight import Notice, weights_notices

        return [Notice(n.message, "a trained detector.pt comes from train.detector (e.g. imgflow run "
                       "pipelines/train_detector.toml writes one); or point 'weights' at an existing checkpoint or a "
                       "registered model; relative paths are relative to the pipeline file", n.error)
                if n.error and isinstance(self.weights_source(), Path) else n
                for n in weights_notices(self.weights_source(), keywords=(RANDOM,))]

    def trained_checkpoint(self) -> dict[str, Any] | None:
        """The ``detector.pt`` document when ``weights`` names one (read once), else None."""
        if not hasattr(self, "_trained"):
            from imgflow_detect.networks import FORMAT, REQUIRED
            from imgflow_finetune import kit

            self._trained = kit.imgflow_checkpoint(self.weights_source(), FORMAT, REQUIRED)
        return self._trained

    def setup(self, device: torch.device) -> None:
        """Build the detector, load its weights strictly (or seed a random init), move it to ``device``."""
        import torch

        from imgflow import models

        super().setup(device)
        source = self.weights_source()
        doc = self.trained_checkpoint()
        if doc is not None:
            net = self._trained_net(doc)
        elif source == RANDOM:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.random_seed())
                net = self.build()
        else:
            net = self.build()
            expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
            state = models.load_state_dict(source, expected=expected)
            net.load_state_dict(state, strict=True)
        if doc is None:
            silence_unused_classes(net)
        from imgflow.inference import fold_batch_norms

        fold_batch_norms(net.eval())  # after loading: the norms' keys are gone from state_dict()
        self.net = net.to(device)
        if device.type == "cpu":
            # oneDNN's convolutions are faster in NHWC: Faster R-CNN MobileNetV3 458 -> 420 ms/img
            self.net = self.net.to(memory_format=torch.channels_last)
        self.weights_id = models.weights_label(self.fingerprint())

    def _trained_net(self, doc: dict[str, Any]) -> torch.nn.Module:
        """The network of a ``detector.pt``, with its class names; ``model`` must agree if set."""
        from imgflow import ConfigError
        from imgflow_detect import networks

        p: DetectParams = self.params  # type: ignore[assignment]
        trained_model = str(doc["model"])
        if "model" in p.model_fields_set and p.model != trained_model:
            raise ConfigError(f"stage '{self.id}': {self.weights_source()} holds a trained {trained_model}, but "
                              f"model = {p.model!r} (fix: remove 'model'; a detector.pt says its own)")
        self.model_name = trained_model
        self._use_taxonomy(trained([str(c) for c in doc["classes"]]))
        net = networks.detector_for_inference(doc)
        networks.set_thresholds(net, trained_model, p.score_threshold, p.nms_iou, self.candidates())
        if trained_model in networks.SIGMOID_HEADS:
            silence_unused_classes(net, num_classes=len(doc["classes"]) + 1, unused=[])
        return net

    def build(self) -> torch.nn.Module:
        """The torchvision architecture with 91 classes, no weights downloaded, post-processing
        thresholds taken from the parameters."""
        from torchvision.models import detection

        p: DetectParams = self.params  # type: ignore[assignment]
        builder = getattr(detection, p.model)
        return builder(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                       **model_thresholds(p.model, p.score_threshold, p.nms_iou, self.candidates()))

    def candidates(self) -> int:
        """How many detections the model itself keeps per image, before our filters."""
        pool = CANDIDATES_WITH_CLASS_FILTER if self.user_classes else CANDIDATES
        return max(self.params.max_detections, pool)

    def teardown(self) -> None:
        self.net = None

    # -- the batch

    def process(self, batch: Batch) -> Batch:
        """One forward pass over the batch's images (a list: sizes may differ)."""
        import torch

        if self.net is None:
            raise RuntimeError("stage 'detect' used before setup() (engine bug)")
        if not batch.items:
            return batch
        images = [item.image.to(self.torch_device, torch.float32) for item in batch.items]
        if self.torch_device.type == "cpu":
            # torchvision pads a batch to its largest height and width, and a CPU gains nothing
            # from batching: measured 525 ms/img one at a time vs 948 ms/img in mixed batches of
            # 8 (Faster R-CNN MobileNetV3, 640x480 and 480x640). One image per core instead
            # (imgflow.parallel): 600 -> 470 ms/img on 2 cores. A GPU keeps the whole batch.
            from imgflow.parallel import map_per_core

            outputs = map_per_core(lambda image: self.net([image])[0], images)
        else:
            outputs = self.net(images)
        for item, output in zip(batch.items, outputs, strict=True):
            detections = self.detections(output)
            apply_outputs(item, self.id, self.model_name, detections, self.params, self.taxonomy)
            item.results[self.id]["weights"] = self.weights_id
        return batch

    def detections(self, output: dict[str, torch.Tensor]) -> list[Detection]:
        """The model's raw output for one image, filtered, as :class:`Detection` objects (CPU)."""
        p: DetectParams = self.params  # type: ignore[assignment]
        keep = select_detections(output["boxes"], output["scores"], output["labels"],
                                 score_threshold=p.score_threshold, nms_iou=p.nms_iou,
                                 classes=self.class_ids, max_detections=p.max_detections,
                                 min_size=p.min_size)
        boxes = output["boxes"][keep].float().cpu().tolist()
        scores = output["scores"][keep].float().cpu().tolist()
        labels = output["labels"][keep].cpu().tolist()
        masks: list[Any] = [None] * len(boxes)
        if "masks" in output:
            masks = list((output["masks"][keep, 0] > MASK_THRESHOLD).cpu().numpy())
        return [Detection(box=tuple(box), category_id=int(label), label=self.taxonomy.name(int(label)),
                          score=float(score), mask=mask)
                for box, score, label, mask in zip(boxes, scores, labels, masks, strict=True)]

    def export(self, records: Any) -> list[Artifact]:
        """``coco.json`` (when ``coco``) and ``labels/classes.txt`` (when ``yolo``), with the categories
        of the weights (a trained detector.pt's class names, else COCO's)."""
        doc = self.trained_checkpoint()
        taxonomy = trained([str(c) for c in doc["classes"]]) if doc is not None else COCO
        out = []
        if self.params.coco:
            out.extend(coco_artifacts(records, self.id, self.name, taxonomy))
        if self.params.yolo:
            out.append(yolo_classes_artifact(taxonomy))
        return out


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def model_thresholds(model: str, score: float, nms: float, per_image: int) -> dict[str, Any]:
    """Builder keyword arguments that set a detector's own post-processing (names differ by family)."""
    if model in _RCNN:
        return {"box_score_thresh": score, "box_nms_thresh": nms, "box_detections_per_img": per_image}
    return {"score_thresh": score, "nms_thresh": nms, "detections_per_img": per_image}


def silence_unused_classes(net: torch.nn.Module, num_classes: int = NUM_CLASSES,
                           unused: list[int] | None = None) -> int:
    """Make the classifier unable to predict the COCO ids that name no class; return how many
    output channels were changed.

    A checkpoint trained on COCO never scores these ids, but a model keeps only its best
    ``detections_per_img`` boxes BEFORE our class filter runs: an untrained or fine-tuned head
    that favours an "N/A" id would fill every slot with boxes that are then dropped, leaving none.
    Setting those logits' biases to a large negative value removes them at the source.
    Softmax heads (R-CNN, SSD) keep index 0, which is their background; sigmoid heads (RetinaNet,
    FCOS) have no background class, so 0 is silenced too.
    """
    import torch
    from torchvision.models.detection.ssd import SSD

    if unused is None:  # COCO's layout
        unused = [i for i, name in enumerate(COCO_CATEGORY_NAMES) if name == "N/A"]
    roi_heads = getattr(net, "roi_heads", None)
    if roi_heads is not None:
        layers, softmax = [roi_heads.box_predictor.cls_score], True
    else:
        head = net.head.classification_head
        modules = [head.cls_logits] if hasattr(head, "cls_logits") else list(head.module_list)
        layers = [_last_conv(module) for module in modules]  # SSDlite: depthwise block, then 1x1 conv
        softmax = isinstance(net, SSD)
    ids = unused if softmax else [0, *unused]
    changed = 0
    with torch.no_grad():
        for layer in layers:
            anchors = layer.bias.numel() // num_classes  # channel layout: anchor * classes + class
            index = torch.tensor([a * num_classes + i for a in range(anchors) for i in ids], dtype=torch.long)
            if not len(index):
                continue
            layer.bias[index] = MASKED_LOGIT
            changed += index.numel()
    return changed


def _last_conv(module: torch.nn.Module) -> torch.nn.Module:
    """The last Conv2d in a module (the module itself when it is one): a head's logit layer."""
    import torch

    return [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)][-1]


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, *,
                      score_threshold: float = 0.5, nms_iou: float = 0.5,
                      classes: Collection[int] | None = None, max_detections: int = 100,
                      min_size: float = 0.0) -> torch.Tensor:
    """Indices of the detections to keep, best score first.

    Filters in this order: score >= ``score_threshold``; label in ``classes`` (None: any); both box
    sides >= ``min_size`` and > 0 (a box of zero width or height marks nothing); per-class NMS at ``nms_iou`` (torchvision.ops.batched_nms: a box is
    dropped when it overlaps a better box of its own class by IoU > ``nms_iou``); the best
    ``max_detections``. Returned as indices so masks can be selected with the same tensor.
    """
    import torch
    from torchvision.ops import batched_nms

    keep = scores >= score_threshold
    if classes is not None:
        wanted = torch.tensor(sorted(classes), dtype=labels.dtype, device=labels.device)
        keep &= torch.isin(labels, wanted)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep &= (width > 0) & (height > 0) & (width >= min_size) & (height >= min_size)
    index = torch.nonzero(keep).flatten()
    if index.numel() == 0:
        return index
    order = batched_nms(boxes[index].float(), scores[index].float(), labels[index], nms_iou)
    return index[order[:max_detections]]


