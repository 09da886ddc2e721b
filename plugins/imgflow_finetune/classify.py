"""``classify``: label images with a ``model.pt`` written by ``train.classifier``.

Each image gets the checkpoint's own test transform (shorter edge to ``resize``, centre crop to
``image_size``, ImageNet normalisation), the same one validation used during training, so the
labels here agree with the validation accuracy the trainer reported. A batch is one forward pass.
One difference is allowed for speed: JPEGs much larger than ``resize`` are decoded at 1/2, 1/4 or
1/8 scale (the engine's ``decode_downscale``), which can move a borderline score slightly;
``[run] decode_downscale = false`` feeds exactly the pixels validation saw.

Results per item (``item.results[stage id]``, so in the manifest)::

    {"label": "grass", "score": 0.93, "top_k": [{"label": "grass", "score": 0.93}, ...],
     "weights": "/path/to/model.pt"}

``weights = "random"`` labels with an untrained resnet18 instead (class names from ``classes``),
so a pipeline can be tried offline; its results say ``"weights": "random@<seed> (untrained)"``.

The stage writes no image of its own (labels are the output, as ``detect`` with annotate = false).
With ``sort_into_folders = true`` a copy of each input goes to ``<class>/<input path>`` under the
output root: the input file's own bytes, untouched (fan-out copies from an upstream augmenter,
which have no file of their own, are written as PNG: ``<class>/<path without suffix><variant>.png``).

No torch or torchvision at import time.
"""

from __future__ import annotations

import threading
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator, model_validator

from imgflow import Artifact, Params, Stage, StageContext, StageKind, derive_seed
from imgflow.stage import DecodeHint

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Batch, Item


RANDOM = "random"
RANDOM_MODEL = "resnet18"  # the architecture of weights = "random" (train.classifier's default)


class ClassifyParams(Params):
    weights: str = Field(
        ..., description="The model.pt that train.classifier wrote (a path, relative to the pipeline file); "
        "\"random\": an untrained resnet18 for trying things out offline (labels mean nothing and are "
        "marked untrained).",
    )
    classes: list[str] | None = Field(
        None, description="Only with weights = \"random\": the class names of the untrained classifier "
        "(default [\"class_0\", \"class_1\"]); a model.pt brings its own.",
    )
    top_k: int = Field(5, ge=1, le=1000, description="How many best classes (with probabilities) to record.")
    sort_into_folders: bool = Field(
        False, description="Copy each input to <class>/<input path> under the output root."
    )

    @field_validator("weights")
    @classmethod
    def _weights_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("'weights' is empty (fix: give the path of a model.pt from train.classifier)")
        return value

    @model_validator(mode="after")
    def _classes_only_for_random(self) -> ClassifyParams:
        if self.classes is not None and self.weights != RANDOM:
            raise ValueError("'classes' is only used with weights = \"random\" (fix: remove it; a model.pt "
                             "carries its own class names)")
        if self.classes is not None and (len(self.classes) < 2 or len(set(self.classes)) != len(self.classes)):
            raise ValueError(f"'classes' needs at least two different names, got {self.classes!r} "
                             "(fix: e.g. classes = [\"cat\", \"dog\"])")
        return self


def safe_folder(label: str) -> str:
    """A class name usable as one folder name (CSV labels may hold '/' or be '..')."""
    cleaned = label.replace("/", "_").replace("\\", "_").strip()
    return "_" if cleaned in ("", ".", "..") else cleaned


class Classify(Stage):
    name = "classify"
    kind = StageKind.OTHER
    description = "Label images with a train.classifier checkpoint: top-k classes in the manifest, optional sorting."
    reads = ("image",)
    writes = ()
    Params: ClassVar[type[Params]] = ClassifyParams

    def __init__(self, params: Params, context: StageContext) -> None:
        super().__init__(params, context)
        self.net: Any = None
        self.weights_id = ""
        self._doc: dict[str, Any] | None = None
        self._doc_lock = threading.Lock()

    def weights_path(self) -> Path:
        return self.context.resolve(self.params.weights)

    @property
    def random(self) -> bool:
        return self.params.weights == RANDOM

    def random_seed(self) -> int:
        """The seed of ``weights = "random"``: the same pipeline gives the same untrained net."""
        return derive_seed(self.context.seed, self.id, "random-init", RANDOM_MODEL)

    def fingerprint(self) -> dict[str, Any]:
        """A replaced checkpoint (new size or mtime) labels every image again."""
        from imgflow import models

        if self.random:
            return {**models.random_fingerprint(self.random_seed()), "classes": self.random_classes()}
        return models.weights_fingerprint(self.weights_path())

    def preflight(self) -> list[Any]:
        """The model.pt exists (checked by validate, before any image)."""
        from imgflow.preflight import file_notices

        if self.random:
            return []
        return file_notices(self.weights_path(), "classifier weights", "point 'weights' at the model.pt that "
                            "train.classifier wrote (e.g. run pipelines/finetune_classifier.toml first)")

    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint, read once (decode_hint may ask before setup, from the feeder thread)."""
        from imgflow_finetune import checkpoint

        with self._doc_lock:
            if self._doc is None:
                self._doc = self._random_checkpoint() if self.random else checkpoint.load(self.weights_path())
            return self._doc

    def random_classes(self) -> list[str]:
        return list(self.params.classes or ["class_0", "class_1"])

    def _random_checkpoint(self) -> dict[str, Any]:
        """What train.classifier would write, for an untrained resnet18 with the default transform."""
        import torch

        from imgflow_finetune import checkpoint, networks
        from imgflow_finetune.train import TrainClassifierParams
        from imgflow_finetune.transforms import Preprocess

        classes = self.random_classes()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_seed())
            net = networks.replace_head(networks.build(RANDOM_MODEL), RANDOM_MODEL, len(classes))
        defaults = TrainClassifierParams()
        preprocess = Preprocess(resize=defaults.resize, image_size=defaults.image_size,
                                mean=networks.IMAGENET_MEAN, std=networks.IMAGENET_STD,
                                interpolation=defaults.interpolation)
        return {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "model": RANDOM_MODEL,
                "classes": classes, "state_dict": net.state_dict(), "preprocess": preprocess.to_dict(), "epochs": 0}

    def decode_hint(self) -> DecodeHint | None:
        """The shorter edge the checkpoint resizes to, so JPEGs may decode at a reduced scale.

        A missing or broken file answers None here; setup reports it properly.
        """
        from imgflow import ImgflowError

        try:
            return DecodeHint(edge="shorter", size=int(self.checkpoint()["preprocess"]["resize"]))
        except (ImgflowError, KeyError, TypeError, ValueError):
            return None

    def setup(self, device: torch.device) -> None:
        """Rebuild the architecture for the checkpoint's classes and load it strictly."""
        import torch

        from imgflow import ConfigError, models
        from imgflow.models import check_keys
        from imgflow_finetune import networks
        from imgflow_finetune.transforms import Preprocess

        super().setup(device)
        doc = self.checkpoint()
        path = self.weights_path()
        model = doc["model"]
        if model not in networks.ARCHITECTURES:
            raise ConfigError(f"classifier weights {path}: unknown architecture {model!r} (fix: use a model.pt "
                              f"written by train.classifier; known: {', '.join(networks.ARCHITECTURES)})")
        self.classes = [str(c) for c in doc["classes"]]
        self.preprocess = Preprocess.from_dict(doc["preprocess"])
        with torch.device("meta"):
            net = networks.build(model, num_classes=len(self.classes))
        check_keys(doc["state_dict"], networks.expected_shapes(net), subject=f"classifier weights {path}")
        net.load_state_dict(doc["state_dict"], strict=True, assign=True)
        self.channels_last = device.type == "cuda"
        net = net.eval().to(device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.model_name = model
        self.weights_id = models.weights_label(self.fingerprint())
        with self._doc_lock:  # the tensors now live in the network
            self._doc = {k: v for k, v in doc.items() if k != "state_dict"}

    def teardown(self) -> None:
        self.net = None

    def process(self, batch: Batch) -> Batch:
        """One forward pass for the batch, then each item's top-k and, maybe, its sorted copy."""
        import torch

        from imgflow_finetune import transforms

        if self.net is None:
            raise RuntimeError("stage 'classify' used before setup() (engine bug)")
        if not len(batch):
            return batch
        views = [transforms.test_view(item.image, self.preprocess) for item in batch.items]
        with torch.inference_mode():
            x = transforms.normalise(views, self.preprocess, self.channels_last)
            probs = torch.softmax(self.net(x).float(), dim=1).cpu()
        k = min(self.params.top_k, len(self.classes))
        scores, indices = probs.topk(k, dim=1)
        for item, row_scores, row_idx in zip(batch.items, scores.tolist(), indices.tolist(), strict=True):
            top = [{"label": self.classes[i], "score": round(s, 6)} for s, i in zip(row_scores, row_idx, strict=True)]
            item.results[self.id] = {"label": top[0]["label"], "score": top[0]["score"], "top_k": top,
                                     "weights": self.weights_id}
            item.write_image = False
            if self.params.sort_into_folders:
                item.artifacts.append(self.sorted_copy(item, top[0]["label"]))
        return batch

    def sorted_copy(self, item: Item, label: str) -> Artifact:
        """The item under ``<class>/``: the input file's bytes, or a PNG for fan-out copies."""
        folder = safe_folder(label)
        root = self.context.input_root
        if not item.variant and root is not None:
            source = Path(root) / item.source
            try:
                return Artifact(f"{folder}/{item.source}", data=source.read_bytes())
            except OSError:
                pass  # gone since it was decoded: fall back to the decoded pixels
        stem = PurePosixPath(item.source).with_suffix("").as_posix()
        return Artifact(f"{folder}/{stem}{item.variant}.png", image=item.image.detach().cpu(), format="png")
