"""``train.colorizer``: fine-tune Zhang et al.'s colorizers on your own colour photos.

An archive of one region, era or photographer is colorized better by a network that has seen
colour photos like it. The method is the papers' (SPEC §1 "Training facts"):

  eccv16      predicts a distribution over 313 quantised ab bins on a 1/4-resolution grid; the
              loss is the cross-entropy against soft-encoded true ab (Gaussian σ = 5 over the 5
              nearest bins), each pixel weighted by its nearest bin's rebalancing weight
              (λ = 0.5; prior from the bins file, or re-estimated on your images with
              ``prior = "data"``), see :mod:`.bins` and :mod:`.losses`;
  siggraph17  regresses ab directly; smooth-L1 loss, with simulated user hints drawn per image
              (:mod:`.hints`) so the fine-tuned network still takes hints.

Per batch, every image is resized to ``model_size``² exactly as ``colorize`` resizes it (bicubic,
antialiased, aspect ratio ignored) and converted to Lab with the same torch conversion
(:mod:`.lab`); the network sees (L - 50) / 100. Greyscale photos (mean chroma under 2 ab units)
teach nothing about colour and are left out of the loss and the metrics (counted as
``grey_skipped``). Augmentations (flips, random resized crops) come from upstream stages.

Splits: ``train/`` and ``val/`` (or ``valid/``, ``validation/``, ``test/``) top folders when the
input has a ``train/`` folder; otherwise ``val_fraction`` of the files, chosen by a stable hash
of the path and the seed (the rule ``train.classifier`` uses).

The engine (imgflow.training) owns the loop, the checkpoints and the resume after a kill, and the
metric files. Per epoch this stage reports loss, val_loss, val_ab_error (mean ab distance in Lab
units), val_colourfulness (Hasler & Süsstrunk) with the same measure of the true colours beside
it, and for siggraph17 val_ab_error_hints (with fixed simulated hints per validation image); and
it writes ``previews/<stage id>/epoch_NNN.png``: grey / predicted / truth for the first validation images.
At the end ``finalize`` returns ``output_name``: a plain state dict with the official key layout,
which ``colorize`` loads strictly with ``weights = <that file>``.

No torch at import: torch and the tensor modules are imported in ``setup`` and after.
"""

from __future__ import annotations

import io
import math
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from imgflow import Artifact, ConfigError, Params, Stage, StageContext, StageKind, derive_seed
from imgflow.stage import DecodeHint
from imgflow.training import trainer_state
from imgflow_colorize.stage import model_side, registry_name

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Batch, Item

RANDOM = "random"
AB_NORM = 110.0
GREY_CHROMA = 2.0  # mean ab distance from grey (Lab units) under which a photo counts as greyscale
PREVIEWS_FOLDER = "previews"  # previews/<stage id>/: where the HTML report looks for them
DECODING_TOLERANCE = 0.5  # ab units: how far a checkpoint's model_out may be from the bin centres
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "val"}
BLOCKS = {"eccv16": 8, "siggraph17": 11}  # see trainable.BLOCKS (kept here: no torch at import)
ECCV16_ONLY = ("prior", "rebalance", "sigma", "neighbours", "temperature")
SIGGRAPH17_ONLY = ("hint_p", "hint_patch")


class TrainColorizerParams(Params):
    model: Literal["eccv16", "siggraph17"] = Field(
        "eccv16", description="eccv16 (313-bin classification, rebalanced) or siggraph17 (regression; keeps "
        "taking point hints).")
    weights: str | None = Field(
        None, description="Starting weights: unset for the official colorize-<model> checkpoint; a registered "
        "name, a path (relative to the pipeline file) or a URL; \"random\" to train from scratch.")
    model_size: int = Field(
        256, ge=16, le=4096, description="Side of the square every image is resized to for the network (as "
        "colorize resizes it); rounded up to a multiple of 8.")
    epochs: int = Field(5, ge=1, le=100_000, description="Passes over the training images.")
    lr: float = Field(3e-5, gt=0, description="Adam learning rate (the ECCV16 paper's initial rate, 3e-5).")
    weight_decay: float = Field(1e-3, ge=0, description="L2 weight decay (the paper's 1e-3); Adam betas 0.9, 0.99.")
    train_layers: Literal["all", "decoder"] | int = Field(
        "decoder", description="Which blocks train: all, decoder (eccv16: model8; siggraph17: the three "
        "decoder stages and model_out), or an integer k: the last k blocks (eccv16 has 8, siggraph17 11). "
        "Frozen blocks keep their batch-norm statistics.")
    prior: Literal["file", "data"] = Field(
        "file", description="eccv16: the colour prior for rebalancing: file (ImageNet's, shipped with the bins) "
        "or data (counted on your training images in one extra first pass that trains nothing).")
    rebalance: float = Field(
        0.5, ge=0, le=1, description="eccv16: λ of the rebalancing weights ((1-λ)·prior + λ/313)^-1; 1 turns "
        "rebalancing off, 0 weights by the inverse prior.")
    sigma: float = Field(5.0, gt=0, description="eccv16: σ of the soft encoding over the nearest bins (ab units).")
    neighbours: int = Field(5, ge=1, le=313, description="eccv16: how many nearest bins share a pixel's target (5).")
    temperature: float = Field(
        0.38, gt=0, le=1, description="eccv16: the annealed-mean temperature T the trained network decodes "
        "with: the loss sees softmax(T·logits), colorize decodes softmax(logits) (the paper's 0.38; 1: none).")
    hint_p: float = Field(
        0.125, gt=0, le=1, description="siggraph17: simulated hints per image are geometric with this p: none "
        "with probability p, 1/p - 1 on average (1/8).")
    hint_patch: int = Field(9, ge=1, le=64, description="siggraph17: hint patches are squares of side 1..hint_patch.")
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="Without train/ and val/ folders: the fraction of images kept for "
        "validation, chosen by a stable hash of the path and the seed.")
    strip_images: int = Field(
        4, ge=0, le=32, description="Validation images shown in previews/<stage id>/epoch_NNN.png (grey / predicted / "
        "truth) after every epoch; 0 writes none.")
    output_name: str = Field(
        "colorizer.pth", description="The fine-tuned network (official key layout), relative to the output "
        "folder; colorize loads it with weights = <path>.")
    amp: bool = Field(True, description="bfloat16 autocast on CUDA GPUs that support it; ignored on the CPU.")

    @field_validator("output_name")
    @classmethod
    def _relative_pth(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or path.suffix not in (".pth", ".pt") or not path.stem:
            raise ValueError(f"'output_name' must be a relative file name ending in .pth or .pt inside the "
                             f"output folder, got {value!r} (fix: e.g. output_name = \"archive-1950s.pth\")")
        return value

    @field_validator("weights")
    @classmethod
    def _weights_given(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("'weights' is empty (fix: remove it for the official weights, or give a path, "
                             "a URL or \"random\")")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainColorizerParams:
        blocks = BLOCKS[self.model]
        if isinstance(self.train_layers, int) and not 1 <= self.train_layers <= blocks:
            raise ValueError(f"'train_layers' = {self.train_layers}: {self.model} has {blocks} blocks (fix: a "
                             f"number from 1 to {blocks}, \"decoder\" or \"all\")")
        other = SIGGRAPH17_ONLY if self.model == "eccv16" else ECCV16_ONLY
        misplaced = sorted(set(other) & self.model_fields_set)
        if misplaced:
            owner = "siggraph17" if self.model == "eccv16" else "eccv16"
            raise ValueError(f"{', '.join(map(repr, misplaced))} only apply to model = \"{owner}\", but model = "
                             f"\"{self.model}\" (fix: remove them, or set model = \"{owner}\")")
        return self


class TrainColorizer(Stage):
    name = "train.colorizer"
    kind = StageKind.TRAIN
    description = "Fine-tune Zhang et al.'s ECCV16 / SIGGRAPH17 colorizer on colour photos, for colorize to load."
    reads = ("image",)
    writes = ()
    consumes = True
    Params: ClassVar[type[Params]] = TrainColorizerParams

    def __init__(self, params: Params, context: StageContext) -> None:
        super().__init__(params, context)
        p: TrainColorizerParams = self.params  # type: ignore[assignment]
        self.side = model_side(p.model_size)
        self.net: Any = None
        self.optimizer: Any = None
        self.centres: Any = None
        self.class_weights: Any = None  # eccv16: per-bin loss weights (None while counting the prior)
        self.prior_counts: Any = None  # eccv16 with prior = "data": nearest-bin pixel counts
        self.trained: list[str] = []
        self.trainable_parameters = 0
        self.amp_dtype: Any = None
        self.steps = 0
        self.sums = _fresh_sums()
        self.strip: Any = None  # this epoch's ValidationStrip (set up in setup)
        self.last_strip_png: bytes | None = None

    # -- configuration

    def counting_pass(self) -> bool:
        """eccv16 with prior = "data" spends its first epoch counting colours, not training."""
        return self.params.model == "eccv16" and self.params.prior == "data"

    def epochs(self) -> int:
        return self.params.epochs + (1 if self.counting_pass() else 0)

    def decode_hint(self) -> DecodeHint:
        """Each image is resized to model_size² ignoring its aspect ratio: JPEGs may be decoded
        smaller as long as the shorter edge keeps that many pixels."""
        return DecodeHint(edge="shorter", size=self.side)

    @cached_property
    def split_folders(self) -> bool:
        """True when the input has a ``train/`` folder: the top folder then says the split."""
        root = self.context.input_root
        return root is not None and (Path(root) / "train").is_dir()

    def split_of(self, relpath: str) -> str | None:
        if self.split_folders:
            top = relpath.split("/", 1)[0] if "/" in relpath else ""
            return SPLIT_FOLDERS.get(top)
        fraction = derive_seed("val-split", self.context.seed, relpath) / float(1 << 63)
        return "val" if fraction < self.params.val_fraction else "train"

    def weights_source(self) -> str | Path:
        from imgflow import models

        return models.resolve_weights(self.params.weights, registry_name(self.params.model), self.context.resolve,
                                      keywords=(RANDOM,))

    def fingerprint(self) -> dict[str, Any]:
        """The starting weights change what training produces."""
        from imgflow import models
        from imgflow_colorize import MODELS

        source = self.weights_source()
        if source == RANDOM:
            return {"weights": RANDOM}
        return models.weights_fingerprint(source, {k: v[0] for k, v in MODELS.items()})

    # -- setup

    def setup(self, device: torch.device) -> None:
        """The network (official, given or random weights), the frozen blocks, Adam, the bins."""
        import torch

        from imgflow_colorize import bins, trainable
        from imgflow_colorize.strip import ValidationStrip

        super().setup(device)
        p: TrainColorizerParams = self.params  # type: ignore[assignment]
        table = bins.load_bins()
        self.centres = table.centres.float().to(device)
        net = self._network(table.centres)
        self.trained = trainable.trained_modules(p.model, p.train_layers)
        self.trainable_parameters = trainable.freeze_except(net, self.trained)
        self.net = net.to(device)
        params = [t for t in self.net.parameters() if t.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=p.lr, betas=(0.9, 0.99), weight_decay=p.weight_decay)
        self.amp_dtype = torch.bfloat16 if (p.amp and device.type == "cuda" and torch.cuda.is_bf16_supported()) \
            else None
        self.prior_counts = torch.zeros(bins.BIN_COUNT, dtype=torch.float64) if self.counting_pass() else None
        self.class_weights = None if self.counting_pass() else self._weights_from(table.prior)
        self.steps = 0
        self.sums = _fresh_sums()
        self.strip = ValidationStrip(p.strip_images)

    def _network(self, centres: torch.Tensor) -> Any:
        """Random (torch's initialisation, seeded by the engine) or loaded strictly; for eccv16 the
        decoding conv must hold the bin centres the loss is defined on."""
        import torch

        from imgflow import models
        from imgflow_colorize import networks, trainable
        from imgflow_colorize.stage import _load_strict, _strip_module_prefix

        model = self.params.model
        source = self.weights_source()
        if source == RANDOM:
            net = networks.build(model)
            if model == "eccv16":
                with torch.no_grad():
                    net.model_out.weight.copy_(trainable.decoding_weight(centres))
            return net
        state = _strip_module_prefix(models.load_state_dict(source))
        with torch.device("meta"):
            net = networks.build(model)
        described = str(source) if isinstance(source, Path) or models.is_url(source) else f"registry model '{source}'"
        _load_strict(net, state, described, model)
        if model == "eccv16":
            off = float((net.model_out.weight.detach() - trainable.decoding_weight(centres)).abs().max()) * AB_NORM
            if off > DECODING_TOLERANCE:
                raise ConfigError(
                    f"{described}: its model_out (the 1x1 conv that decodes the 313-bin distribution) is {off:.1f} "
                    "ab units away from the bin centres this trainer's loss is defined on, so fine-tuning would "
                    "teach classes the network does not decode (fix: start from colorize-eccv16, a checkpoint "
                    "train.colorizer wrote, or weights = \"random\")")
        return net

    def _weights_from(self, prior: torch.Tensor) -> torch.Tensor:
        from imgflow_colorize import bins

        return bins.rebalance_weights(prior, self.params.rebalance).float().to(self.torch_device)

    def teardown(self) -> None:
        self.net = self.optimizer = self.strip = None

    # -- batches

    def prepare(self, items: list[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Model-size sRGB ``(N, 3, S, S)``, its Lab, and which images have colour ``(N,)`` bool."""
        import torch

        from imgflow_colorize import lab
        from imgflow_colorize.stage import model_pixels

        side = self.side  # the network input exactly as colorize makes it: Pillow's bicubic on 8 bits
        small = torch.stack([model_pixels(item, side) for item in items]).to(self.torch_device)
        small = small.to(torch.float32).mul_(1.0 / 255.0)
        lab_small = lab.rgb2lab(small)
        chroma = lab_small[:, 1:].square().sum(dim=1).sqrt().flatten(1).mean(dim=1)
        return small, lab_small, chroma >= GREY_CHROMA

    def model_input(self, lab_small: torch.Tensor,
                    hints: list[tuple[torch.Tensor, torch.Tensor]] | None) -> torch.Tensor:
        """(L - 50) / 100, plus the hint ab and mask planes for siggraph17 (zeros without hints)."""
        import torch

        l_norm = (lab_small[:, :1] - 50.0) / 100.0
        if self.params.model == "eccv16":
            return l_norm
        if hints is None:
            planes = torch.zeros(l_norm.shape[0], 3, *l_norm.shape[-2:], device=l_norm.device, dtype=l_norm.dtype)
        else:
            planes = torch.stack([torch.cat([ab, mask]) for ab, mask in hints])
        return torch.cat([l_norm, planes], dim=1)

    def training_hints(self, items: list[Item], lab_small: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Simulated hints per training image, from the item's own generator (epoch-dependent)."""
        from imgflow_colorize.hints import simulate_hints

        p = self.params
        out = []
        for item, lab_image in zip(items, lab_small, strict=True):
            ab, mask, _ = simulate_hints(lab_image[1:], item.generator(self.id), p=p.hint_p, max_patch=p.hint_patch)
            out.append((ab, mask))
        return out

    def validation_hints(self, items: list[Item], lab_small: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed hints per validation image (the same every epoch), at least one point each."""
        import torch

        from imgflow_colorize.hints import simulate_hints

        p = self.params
        out = []
        for item, lab_image in zip(items, lab_small, strict=True):
            gen = torch.Generator().manual_seed(derive_seed(item.seed, self.id, item.key, "validation-hints"))
            ab, mask, _ = simulate_hints(lab_image[1:], gen, p=p.hint_p, max_patch=p.hint_patch, min_points=1)
            out.append((ab, mask))
        return out

    def _autocast(self) -> Any:
        import contextlib

        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def losses(self, x: torch.Tensor, lab_small: torch.Tensor, *,
               predict: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-image losses ``(N,)`` and, with ``predict``, the predicted ab in Lab units
        ``(N, 2, S, S)``. eccv16's loss is on its logits; decoding them is only for the metrics."""
        from imgflow_colorize import losses, trainable

        p = self.params
        true_ab = lab_small[:, 1:]
        if p.model == "siggraph17":
            with self._autocast():
                pred = self.net(x)
            pred = pred.float() * AB_NORM
            return losses.regression_loss(pred, true_ab), pred
        with self._autocast():
            logits = trainable.eccv16_logits(self.net, x)
            decoded = trainable.eccv16_decode(self.net, logits) if predict else None
        pred = decoded.float() * AB_NORM if decoded is not None else None
        if self.class_weights is None:  # still counting the colour prior: no loss yet
            return true_ab.new_full((x.shape[0],), math.nan), pred
        per_image = losses.classification_loss(logits, losses.cell_means(true_ab), self.centres, self.class_weights,
                                               neighbours=p.neighbours, sigma=p.sigma, temperature=p.temperature)
        return per_image, pred

    def consume(self, batch: Batch) -> dict[str, float] | None:
        """One Adam step on a training batch (or, in the counting pass, its colours counted);
        validation batches are measured and the first ones kept for the strip."""
        if self.net is None:
            raise RuntimeError(f"stage '{self.id}' used before setup() (engine bug)")
        if batch.split != "train":
            self.validate(batch)
            return None
        _, lab_small, colour = self.prepare(batch.items)
        items = [item for item, keep in zip(batch.items, colour.tolist(), strict=True) if keep]
        self.sums["grey_skipped"] += len(batch.items) - len(items)
        if not items:
            return {"grey_skipped": float(len(batch.items))}
        lab_small = lab_small[colour]
        if self.class_weights is None:
            self._count_colours(lab_small)
            return None
        from imgflow_colorize import trainable

        trainable.set_mode(self.net, self.trained, train=True)
        hints = self.training_hints(items, lab_small) if self.params.model == "siggraph17" else None
        per_image, _ = self.losses(self.model_input(lab_small, hints), lab_small, predict=False)
        loss = per_image.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        value = float(loss.detach())
        self.sums["train_loss"] += value
        self.sums["train_steps"] += 1
        return {"loss": value}

    def _count_colours(self, lab_small: torch.Tensor) -> None:
        from imgflow_colorize import bins, losses

        ab = losses.cell_means(lab_small[:, 1:]).permute(0, 2, 3, 1).reshape(-1, 2)
        index, _ = bins.soft_encode(ab, self.centres, neighbours=1)
        self.prior_counts += bins.nearest_bin_counts(index)

    def validate(self, batch: Batch) -> None:
        """Validation metrics (no gradients, every block in eval mode), summed per image."""
        import torch

        from imgflow_colorize import lab, losses, trainable

        small, lab_small, colour = self.prepare(batch.items)
        items = [item for item, keep in zip(batch.items, colour.tolist(), strict=True) if keep]
        self.sums["grey_skipped_val"] += len(batch.items) - len(items)
        if not items:
            return
        small, lab_small = small[colour], lab_small[colour]
        trainable.set_mode(self.net, self.trained, train=False)
        with torch.no_grad():
            per_image, pred = self.losses(self.model_input(lab_small, None), lab_small)
            predicted_rgb = lab.lab2rgb(torch.cat([lab_small[:, :1], pred], dim=1))
            s = self.sums
            s["val_images"] += len(items)
            s["val_loss"] += float(per_image.sum())
            s["val_ab_error"] += float(losses.ab_error(pred, lab_small[:, 1:]).sum())
            s["val_colourfulness"] += float(losses.colourfulness(predicted_rgb).sum())
            s["val_colourfulness_truth"] += float(losses.colourfulness(small).sum())
            if self.params.model == "siggraph17":
                x = self.model_input(lab_small, self.validation_hints(items, lab_small))
                _, hinted = self.losses(x, lab_small)
                s["val_ab_error_hints"] += float(losses.ab_error(hinted, lab_small[:, 1:]).sum())
        self.strip.add(lab_small, predicted_rgb, small)

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """The epoch's means (validation ones when there was validation), then the strip PNG."""
        s = self.sums
        if not s["train_steps"] and s["grey_skipped"] and self.class_weights is not None:
            raise ConfigError(f"stage '{self.id}': all {int(s['grey_skipped'])} training pictures of epoch "
                              f"{epoch + 1} are greyscale (mean chroma under {GREY_CHROMA:g} ab units): there is no "
                              "colour to learn (fix: point [input] path at colour photos)")
        metrics: dict[str, float] = {}
        if s["train_steps"]:
            metrics["loss"] = s["train_loss"] / s["train_steps"]
        if s["val_images"]:
            keys = ["val_loss", "val_ab_error", "val_colourfulness", "val_colourfulness_truth"]
            if self.params.model == "siggraph17":
                keys.append("val_ab_error_hints")
            for key in keys:
                metrics[key] = s[key] / s["val_images"]
            if self.class_weights is None:
                del metrics["val_loss"]
        if self.class_weights is None and self.prior_counts is not None:
            metrics["prior_bins_seen"] = float((self.prior_counts > 0).sum())
            self._prior_from_counts()
        for key in ("grey_skipped", "grey_skipped_val"):
            if s[key]:
                metrics[key] = s[key]
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        self._write_strip(epoch)
        self.sums = _fresh_sums()
        return metrics

    def start_epoch(self, epoch: int) -> None:
        self.sums = _fresh_sums()
        self.strip.clear()

    def _prior_from_counts(self) -> None:
        from imgflow_colorize import bins

        try:
            prior = bins.smooth_prior(self.prior_counts, self.centres.cpu(), self.params.sigma)
        except ValueError as exc:
            raise ConfigError(f"stage '{self.id}' prior = \"data\": {exc} (fix: train on colour photos, or use "
                              "prior = \"file\")") from None
        self.class_weights = self._weights_from(prior)

    # -- the validation strip

    def _write_strip(self, epoch: int) -> None:
        """``previews/<stage id>/epoch_NNN.png`` under the output root (the HTML report shows them) (see :mod:`.strip`)."""
        from imgflow.io.atomic import atomic_write

        self.last_strip_png = self.strip.png() if self.strip is not None else None
        root = self.context.output_root
        if self.last_strip_png is not None and root is not None:
            # the engine's atomic writer: never half a file, and a killed run's temp file is swept
            atomic_write(Path(root), f"{PREVIEWS_FOLDER}/{self.id}/epoch_{epoch + 1:03d}.png", self.last_strip_png)

    # -- resuming and the result

    def state_dict(self) -> dict[str, Any]:
        """Network, optimiser, counters and (eccv16) the colour prior's counts and weights."""
        import torch

        return {
            "model": trainer_state.network_state(self.net),
            "optimizer": trainer_state.to_cpu(self.optimizer.state_dict()),
            "steps": self.steps,
            "sums": dict(self.sums),
            "prior_counts": self.prior_counts.clone() if self.prior_counts is not None else torch.zeros(0),
            "class_weights": self.class_weights.cpu() if self.class_weights is not None else torch.zeros(0),
            "model_name": self.params.model,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("model_name") != self.params.model:
            raise ConfigError(f"stage '{self.id}': the training checkpoint is for model {state.get('model_name')!r}, "
                              f"not {self.params.model!r} (fix: rerun with --force to start over)")
        self.net.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
        self.sums = {**_fresh_sums(), **{k: float(v) for k, v in state["sums"].items()}}
        counts, weights = state["prior_counts"], state["class_weights"]
        self.prior_counts = counts.clone() if counts.numel() else self.prior_counts
        self.class_weights = weights.to(self.torch_device) if weights.numel() else None

    def checkpoint_bytes(self) -> bytes:
        """The network as a plain state dict, official keys, float32 CPU tensors."""
        import torch

        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}, buffer)
        return buffer.getvalue()

    def finalize(self) -> list[Artifact]:
        return [Artifact(self.params.output_name, data=self.checkpoint_bytes())]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _fresh_sums() -> dict[str, float]:
    keys = ("train_loss", "train_steps", "grey_skipped", "val_images", "val_loss", "val_ab_error",
            "val_colourfulness", "val_colourfulness_truth", "val_ab_error_hints", "grey_skipped_val")
    return dict.fromkeys(keys, 0.0)
