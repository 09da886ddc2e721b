"""The ``segment`` stage: Pascal VOC semantic segmentation with torchvision's pretrained models.

Per batch:
  1. each image's shorter side is resized to ``resize`` (bilinear, antialiased) and normalised
     with the ImageNet mean/std, as torchvision's ``SemanticSegmentation`` transform does;
  2. items whose resized sizes agree share one forward pass (a batch may mix sizes);
  3. the 21 class logits are upsampled bilinearly to the ORIGINAL size, in strips of rows so a
     large photo never needs all 21 full-size planes at once, and the argmax is the label;
  4. outputs: the label mask as a VOC palette PNG artifact ``masks/<input without suffix>.png``,
     the overlay (labels blended over the photo) as the main image, and per-class pixel
     fractions in ``item.results[stage id]``.

``weights`` may also name the ``segmenter.pt`` that ``train.segmenter`` wrote: its network (d2l's
FCN or a torchvision segmenter with new classes), class names and palette replace VOC's, and
images go through at their own size unless ``resize`` is set.

No torch or torchvision at import: both are imported in ``setup``/``process``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from imgflow import Artifact, Params, Stage, StageContext, StageKind
from imgflow_segment import MODELS, registry_name
from imgflow_segment.voc import VOC_CLASSES, class_fractions, encode_mask_png, voc_colormap

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Batch, Item

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM = "random"
RANDOM_SEED = 0  # weights = "random": the same untrained network every time
# Upper bound on logits elements held at full resolution at once (21 classes x rows x width):
# 2**24 floats = 64 MiB per strip, whatever the photo's size.
STRIP_ELEMENTS = 1 << 24

ModelName = Literal["fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large",
                    "lraspp_mobilenet_v3_large"]


class SegmentParams(Params):
    model: ModelName = Field(
        "lraspp_mobilenet_v3_large",
        description="Network (torchvision, Pascal VOC labels): fcn_resnet50, deeplabv3_resnet50, "
        "deeplabv3_mobilenet_v3_large, or lraspp_mobilenet_v3_large (fastest).",
    )
    weights: str | None = Field(
        None,
        description="Checkpoint instead of the official segment-<model> weights: a registered model "
        "name (imgflow models list), a path (relative to the pipeline file) or a URL; the segmenter.pt "
        "that train.segmenter wrote (its model, classes and palette are used); \"random\" "
        "initialises the network randomly (tests, no download).",
    )
    resize: int = Field(
        520, ge=32,
        description="The image's shorter side is resized to this for the network (torchvision's "
        "evaluation size is 520); labels come back at the original size. With a trained "
        "segmenter.pt, unset means the image's own size (what it was trained at).",
    )
    mask: bool = Field(True, description="Write the label mask as a VOC palette PNG to masks/<input>.png.")
    overlay: bool = Field(
        True, description="Write the labels blended over the image as the output image; false writes no image."
    )
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Overlay opacity of the class colours (0-1).")

    @field_validator("weights")
    @classmethod
    def _weights_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("'weights' is empty (fix: give a registered name, a path or a URL, or remove the key)")
        return value


def network_size(height: int, width: int, short: int | None) -> tuple[int, int]:
    """The (H, W) the network sees: shorter side ``short``, aspect kept, the longer side
    truncated as torchvision's ``resize`` does (so results match its reference transform);
    ``short = None`` keeps the image's own size."""
    if short is None:
        return height, width
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def mask_relpath(item: Item) -> str:
    """``masks/<input path without suffix><variant>.png``: beside the outputs, mirroring the input
    tree; the variant keeps fan-out copies (augmentations) from overwriting each other."""
    stem = PurePosixPath(item.source).with_suffix("").as_posix()
    return f"masks/{stem}{item.variant}.png"


class Segment(Stage):
    name = "segment"
    kind = StageKind.SEGMENT
    description = "Semantic segmentation into the 21 Pascal VOC classes: mask PNG, overlay, class fractions."
    reads = ("image",)
    writes = ("image",)
    Params: ClassVar[type[Params]] = SegmentParams

    def __init__(self, params: Params, context: StageContext) -> None:
        super().__init__(params, context)
        self.net: Any = None
        self.weights_id = ""
        self.model_name: str = self.params.model
        self.class_names: tuple[str, ...] = VOC_CLASSES
        self.palette: list[tuple[int, int, int]] | None = None  # None: the VOC colour map
        self.short: int | None = self.params.resize

    # -- weights

    def weights_source(self) -> str | Path:
        """What to load: "random", a registry name, a URL, or an absolute local path."""
        from imgflow import models

        return models.resolve_weights(self.params.weights, registry_name(self.params.model),
                                      self.context.resolve, keywords=(RANDOM,))

    def fingerprint(self) -> dict[str, Any]:
        """Which weights produce the labels (see imgflow.models.weights_fingerprint)."""
        from imgflow import models

        source = self.weights_source()
        if source == RANDOM:
            return models.random_fingerprint(RANDOM_SEED)
        return models.weights_fingerprint(source, {registry_name(m): url for m, (url, _d) in MODELS.items()})

    def preflight(self) -> list[Any]:
        """The weights exist or will be downloaded (checked by validate, before any image)."""
        from imgflow.preflight import Notice, weights_notices

        return [Notice(n.message, "a trained segmenter.pt comes from train.segmenter (e.g. imgflow run "
                       "pipelines/train_segmenter.toml writes one); or point 'weights' at an existing checkpoint or a "
                       "registered model; relative paths are relative to the pipeline file", n.error)
                if n.error and isinstance(self.weights_source(), Path) else n
                for n in weights_notices(self.weights_source(), keywords=(RANDOM,))]

    def trained_checkpoint(self) -> dict[str, Any] | None:
        """The ``segmenter.pt`` document when ``weights`` names one, else None."""
        from imgflow_finetune import kit
        from imgflow_segment.networks import FORMAT, REQUIRED

        return kit.imgflow_checkpoint(self.weights_source(), FORMAT, REQUIRED)

    def setup(self, device: torch.device) -> None:
        """Build the network, load the weights strictly (or initialise it randomly), eval mode."""
        super().setup(device)
        doc = self.trained_checkpoint()
        if doc is not None:
            net = self._trained_net(doc)
        else:
            net = self._random_net() if self.weights_source() == RANDOM else self._loaded_net()
        # The auxiliary head only helps training; the strict load needed it, inference does not.
        if getattr(net, "aux_classifier", None) is not None:
            net.aux_classifier = None
        from imgflow.inference import fold_batch_norms

        # Same outputs, one pass less per layer: DeepLabV3 MobileNetV3 224 -> 189 ms per 640x480
        # image on 2 CPU cores (LR-ASPP about the same, 139 -> 136).
        fold_batch_norms(net.eval())
        self.net = net.to(device)
        from imgflow import models

        self.weights_id = models.weights_label(self.fingerprint())

    def _trained_net(self, doc: dict[str, Any]) -> Any:
        """The network of a ``segmenter.pt``, with its classes and palette; ``model`` must agree if set."""
        from imgflow import ConfigError
        from imgflow_segment import networks

        trained_model = str(doc["model"])
        if "model" in self.params.model_fields_set and self.params.model != trained_model:
            raise ConfigError(f"stage '{self.id}': {self.weights_source()} holds a trained {trained_model}, but "
                              f"model = {self.params.model!r} (fix: remove 'model'; a segmenter.pt says its own)")
        self.model_name = trained_model
        self.class_names = tuple(str(c) for c in doc["classes"])
        self.palette = [(int(r), int(g), int(b)) for r, g, b in doc["palette"]]
        if "resize" not in self.params.model_fields_set:
            self.short = None
        return networks.segmenter_for_inference(doc)

    def _random_net(self) -> Any:
        """A randomly initialised network, the same every time (seed 0, global RNG untouched), so
        tests with ``weights = "random"`` are reproducible."""
        import torch

        from imgflow_segment import networks

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            return networks.build(self.params.model)

    def _loaded_net(self) -> Any:
        """The network filled from the checkpoint: key names and shapes checked first, so a wrong
        file fails with a list of what differs, then loaded with strict=True."""
        import torch

        from imgflow import ConfigError, models
        from imgflow_segment import networks

        # Built on the meta device and filled by assignment: no random init that the file replaces.
        with torch.device("meta"):
            net = networks.build(self.params.model)
        state = models.load_state_dict(self.weights_source(), expected=networks.expected_shapes(net))
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        try:
            net.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:  # check_keys covers names and shapes; this is a last resort
            last = str(exc).strip().splitlines()[-1].strip()
            raise ConfigError(f"stage 'segment': {self.weights_source()} does not fit {self.params.model}: "
                              f"{last} (fix: use the segment-{self.params.model} weights or a checkpoint "
                              "fine-tuned from them)") from None
        return net

    def teardown(self) -> None:
        self.net = None

    # -- the batch

    def process(self, batch: Batch) -> Batch:
        """Segment every item; items whose network input sizes agree share one forward pass."""
        import torch

        if self.net is None:
            raise RuntimeError("stage 'segment' used before setup() (engine bug)")
        groups: dict[tuple[int, int], list[Item]] = {}
        for item in batch.items:
            h, w = item.image.shape[-2:]
            groups.setdefault(network_size(int(h), int(w), self.short), []).append(item)
        with torch.inference_mode():
            for size, items in groups.items():
                logits = self.predict(items, size)
                for item, item_logits in zip(items, logits, strict=True):
                    self._finish_item(item, item_logits)
        return batch

    def network_input(self, items: list[Item], size: tuple[int, int]) -> torch.Tensor:
        """``(N, 3, h, w)``: resized (bilinear, antialiased) and ImageNet-normalised."""
        import torch
        from torch.nn import functional as F

        device = self.torch_device
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        resized = []
        for item in items:
            x = item.image.to(device=device, dtype=torch.float32).unsqueeze(0)
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
            resized.append(x)
        return (torch.cat(resized) - mean) / std

    def predict(self, items: list[Item], size: tuple[int, int]) -> torch.Tensor:
        """The class logits at the network's size, ``(N, 21, h, w)``."""
        return self.net(self.network_input(items, size))["out"].float()

    def _finish_item(self, item: Item, logits: torch.Tensor) -> None:
        """Labels at the original size, then the mask artifact, the overlay and the fractions."""
        import torch

        height, width = (int(s) for s in item.image.shape[-2:])
        labels = upsample_argmax(logits, height, width)
        count = len(self.class_names)
        counts = torch.bincount(labels.flatten(), minlength=count)[:count]
        item.results[self.id] = {"model": self.model_name, "weights": self.weights_id,
                                 "classes": class_fractions([int(c) for c in counts.tolist()], self.class_names)}
        if self.params.mask:
            data = encode_mask_png(labels.to("cpu", torch.uint8).numpy(), self.palette)
            item.artifacts.append(Artifact(mask_relpath(item), data=data))
        if self.params.overlay:
            table = None if self.palette is None else torch.tensor(self.palette, dtype=torch.float32) / 255.0
            item.image = blend_overlay(item.image, labels.to(item.image.device), self.params.alpha, table)
        else:
            item.write_image = False


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def upsample_argmax(logits: torch.Tensor, height: int, width: int,
                    max_elements: int = STRIP_ELEMENTS) -> torch.Tensor:
    """The ``(height, width)`` int64 labels of bilinearly upsampled ``(C, h, w)`` logits.

    Equal to ``F.interpolate(logits, (height, width), mode="bilinear").argmax(0)`` but computed
    in strips of output rows: each strip blends its two source rows (PyTorch's half-pixel
    rule, align_corners=False), then stretches the width, so at most ``max_elements`` logits
    exist at full resolution at a time instead of 21 x H x W (about 1 GB for a 12 MP photo).
    """
    import torch
    from torch.nn import functional as F

    channels, src_h, _ = logits.shape
    rows_per_strip = max(1, max_elements // max(1, channels * width))
    scale = src_h / height
    labels = torch.empty(height, width, dtype=torch.int64, device=logits.device)
    for top in range(0, height, rows_per_strip):
        rows = torch.arange(top, min(height, top + rows_per_strip), device=logits.device)
        src = ((rows.double() + 0.5) * scale - 0.5).clamp(min=0)
        low = src.floor().long().clamp(max=src_h - 1)
        high = (low + 1).clamp(max=src_h - 1)
        frac = (src - low.double()).float().view(1, -1, 1)
        strip = logits[:, low] * (1 - frac) + logits[:, high] * frac  # (C, rows, w)
        strip = F.interpolate(strip.unsqueeze(0), size=(len(rows), width), mode="bilinear",
                              align_corners=False)[0]
        labels[top:top + len(rows)] = strip.argmax(0)
    return labels


def blend_overlay(image: torch.Tensor, labels: torch.Tensor, alpha: float,
                  table: torch.Tensor | None = None) -> torch.Tensor:
    """The class colours (``table``, (classes, 3) in [0, 1]; default the VOC colour map) blended
    over ``image`` with opacity ``alpha``.

    Background pixels keep the photo as it is: blending them with the background's black would
    only darken the picture and hide what the mask says.
    """
    import torch

    if table is None:
        table = torch.tensor(voc_colormap(256), dtype=torch.float32) / 255.0
    colours = table.to(image.device)[labels].permute(2, 0, 1)  # (3, H, W)
    base = image.to(torch.float32)
    blended = base * (1.0 - alpha) + colours * alpha
    return torch.where((labels > 0).unsqueeze(0), blended, base).clamp(0, 1)


