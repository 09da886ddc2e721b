"""The ``colorize.ddcolor`` stage: DDColor over whole batches, at every image's full resolution.

Procedure (SPEC §7), per batch:
  1. every item is resized to ``S x S`` (bilinear, antialiased; aspect ratio ignored), its L taken
     and turned back into a grey RGB image (Lab with a = b = 0), so a batch of any mix of sizes
     stacks into one ``(N, 3, S, S)`` tensor;
  2. the network predicts ab at ``S x S`` in Lab units, in as few forward passes as memory allows
     (all of the batch at once on a CPU; as many as fit on a GPU, halving on out-of-memory);
  3. ab is brought back to each item's own size (bilinear, or the release's nearest-neighbour)
     and joined with the L of the ORIGINAL pixels; Lab -> sRGB, clipped.
The output has the input's exact luminance and size; only chroma comes from the model. Colour
inputs are recoloured from their luminance; alpha passes through untouched.

Why a stage of its own rather than ``colorize`` with ``model = "ddcolor"``: the two share the Lab
procedure (:mod:`imgflow_colorize.lab`) but little else. DDColor has sizes, its own weights, a
512 px model input, a choice of ab upsampling and GPU batching; Zhang's networks have hints.
Separate parameter sets keep every key meaningful for the model it configures, and
``imgflow stages show colorize.ddcolor`` documents exactly what applies.

No torch at import time: listing and validating stages must stay fast.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from imgflow import ItemError, Params, Stage, StageContext, StageKind
from imgflow_colorize.ddcolor import DEFAULT_WEIGHTS, PUBLISHED

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Batch, Item

MODEL_STRIDE = 32  # the encoder's deepest map is 1/32 of the input
#: autocast "auto" keeps a reduced precision only if, on a calibration image, it moves the
#: predicted ab by at most this much (Lab units; about 1 Delta-E), as the ``colorize`` stage does.
AUTOCAST_AB_TOLERANCE = 1.0
#: On CUDA a batch is split into forward passes of at most this share of the free memory, measured
#: per image at setup (activations only; the weights are already resident).
GPU_MEMORY_SHARE = 0.7


class DDColorParams(Params):
    size: Literal["tiny", "large"] | None = Field(
        None,
        description='tiny (ConvNeXt-T, 55 M parameters, usable on a CPU) or large (ConvNeXt-L, 228 M, '
        "for GPUs). Default: the size of the named weights, else tiny.",
    )
    weights: str | None = Field(
        None,
        description="ddcolor-paper-tiny (tiny's default), ddcolor-modelscope (large's default), "
        "ddcolor-paper, ddcolor-artistic; or a checkpoint path (relative to the pipeline file) or URL.",
    )
    model_size: int = Field(
        512, ge=64, le=2048,
        description="Side of the square the image is resized to for the network (the output keeps the "
        "original size). Rounded up to a multiple of 32. The release uses 512.",
    )
    ab_upsample: Literal["bilinear", "nearest"] = Field(
        "bilinear",
        description="How the predicted colour returns to full size: bilinear (smooth colour edges) or "
        "nearest (what the release does; blocky on large scans, for comparisons).",
    )
    saturation: float = Field(1.0, ge=0.0, description="Multiplies the predicted ab (0 = grey, >1 = more vivid).")
    mode: Literal["color", "side_by_side"] = Field(
        "color", description="color: the colorized image; side_by_side: [input | colorized] in one image."
    )
    autocast: Literal["auto", "off"] = Field(
        "auto",
        description="auto: float16/bfloat16 on CUDA, bfloat16 on CPUs that compute it natively, each only "
        "when it stays within about 1 Delta-E of float32 (checked at setup). off: always float32.",
    )
    max_batch: int | None = Field(
        None, ge=1,
        description="Most images per forward pass. Default: one on a CPU (batching is slower there); on "
        "CUDA as many as the free GPU memory holds (measured at setup), halved after an out-of-memory error.",
    )

    @model_validator(mode="after")
    def _weights_match_size(self) -> DDColorParams:
        if self.weights is not None and not self.weights.strip():
            raise ValueError("'weights' is empty (fix: name a DDColor weight set, a path or a URL, or remove the key)")
        published = PUBLISHED.get(self.weights or "")
        if published is not None and self.size is not None and published.size != self.size:
            raise ValueError(
                f"weights {self.weights!r} are for the {published.size} model, but size = {self.size!r} "
                f"(fix: set size = {published.size!r}, or use weights = "
                f"{DEFAULT_WEIGHTS[self.size]!r})")
        return self


def model_side(model_size: int) -> int:
    """``model_size`` rounded up to a multiple of 32, so every decoder scale lines up with the
    encoder map it joins."""
    return int(math.ceil(model_size / MODEL_STRIDE) * MODEL_STRIDE)


class ColorizeDDColor(Stage):
    name = "colorize.ddcolor"
    kind = StageKind.COLORIZE
    description = "Colorize images with DDColor (tiny or large), batched, keeping the original luminance and size."
    reads = ("image", "alpha")
    writes = ("image", "alpha")
    Params: ClassVar[type[Params]] = DDColorParams

    def __init__(self, params: Params, context: StageContext) -> None:
        super().__init__(params, context)
        p: DDColorParams = self.params  # type: ignore[assignment]
        named = PUBLISHED.get(p.weights or "")
        self.size: str = p.size or (named.size if named else "tiny")
        self.side = model_side(p.model_size)
        self.net: Any = None
        self.weights_id = ""
        self.amp_dtype: Any = None  # a torch dtype when autocast is on
        self.chunk = 0  # images per forward pass; set in setup

    # -- weights

    def weights_source(self) -> str | Path:
        """What to load: a registry name, a URL, or an absolute local path."""
        from imgflow import models

        return models.resolve_weights(self.params.weights, DEFAULT_WEIGHTS[self.size], self.context.resolve)

    def fingerprint(self) -> dict[str, Any]:
        """Which weights produce the colours (see imgflow.models.weights_fingerprint)."""
        from imgflow import models

        return models.weights_fingerprint(self.weights_source(), {n: w.url for n, w in PUBLISHED.items()})

    def _describe_weights(self) -> str:
        from imgflow import models

        source = self.weights_source()
        return str(source) if isinstance(source, Path) or models.is_url(source) else f"registry model '{source}'"

    def setup(self, device: torch.device) -> None:
        """Load the weights strictly, rewrite for inference, pick the precision and the chunk size."""
        import torch

        from imgflow import models
        from imgflow_colorize.ddcolor import model, weights

        super().setup(device)
        if device.type == "cpu" and self.size == "large":
            print(f"imgflow: warning: stage '{self.id}': size = \"large\" (ConvNeXt-L, 228 M parameters) "
                  "is meant for a GPU; on a CPU it is about 4x slower than size = \"tiny\"",
                  file=sys.stderr)
        state = models.load_state_dict(self.weights_source())
        with torch.device("meta"):  # no random init of 55-228 M parameters the checkpoint overwrites
            net = model.build(self.size)
        weights.load_into(net, state, self._describe_weights())
        net = weights.prepare_for_inference(net).to(device)
        self.net = net.to(memory_format=torch.channels_last)  # faster convs with oneDNN and cuDNN
        self.weights_id = self.fingerprint()["weights"]
        probe = calibration_input(self.side, device)
        self.amp_dtype = self._choose_precision(device, probe)
        self.chunk = self._initial_chunk(device, probe)

    def teardown(self) -> None:
        self.net = None

    def _choose_precision(self, device: torch.device, probe: torch.Tensor) -> Any:
        """A reduced precision when a calibration forward stays within tolerance of float32.

        CUDA tries float16, then bfloat16; a CPU tries bfloat16 only where it computes it natively
        (emulated bfloat16 is slower than float32).
        """
        import torch

        from imgflow.models.precision import device_facts, remembered_choice
        from imgflow_colorize.stage import precision_candidates

        if self.params.autocast == "off":
            return None
        candidates = precision_candidates(device)
        if not candidates:
            return None

        def calibrate() -> str:
            with torch.inference_mode():
                reference = self._forward(probe, None)
                for dtype in candidates:
                    err = float((self._forward(probe, dtype) - reference).abs().max())
                    if math.isfinite(err) and err <= AUTOCAST_AB_TOLERANCE:
                        return str(dtype).removeprefix("torch.")
            return "float32"

        # kept per weights, settings and device across runs (imgflow.models.precision)
        facts = {"stage": "colorize.ddcolor", "size": self.size, "side": self.side, "weights": self.fingerprint(),
                 "tolerance": AUTOCAST_AB_TOLERANCE, "candidates": [str(d) for d in candidates],
                 "device": device_facts(device)}
        name, _cached = remembered_choice(facts, calibrate)
        return None if name == "float32" else getattr(torch, name)

    def _initial_chunk(self, device: torch.device, probe: torch.Tensor) -> int:
        """Images per forward pass: ``max_batch``, else one on a CPU, else what the GPU's free
        memory holds at the measured per-image peak.

        On a CPU a batched pass costs more per image than one image at a time (DDColor-tiny at
        512², 2 cores: 2.1 s per image in passes of 8, 1.35-1.8 s one by one): the decoder's
        attention and the larger working set outgrow the caches, and there is no idle hardware
        for a batch to fill.
        """
        import torch

        limit = self.params.max_batch
        if device.type != "cuda":
            return limit or 1
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            self._forward(probe, self.amp_dtype)
        per_image = max(1, torch.cuda.max_memory_allocated(device) - before)
        free, _total = torch.cuda.mem_get_info(device)
        fits = max(1, int(free * GPU_MEMORY_SHARE // per_image))
        return min(fits, limit) if limit else fits

    # -- the batch

    def precision(self) -> str:
        return "float32" if self.amp_dtype is None else str(self.amp_dtype).removeprefix("torch.")

    def process(self, batch: Batch) -> Batch:
        """Colorize every item; the network sees the whole batch in as few passes as fit."""
        if self.net is None:
            raise RuntimeError(f"stage '{self.name}' used before setup() (engine bug)")
        if not batch.items:
            return batch
        ab_small = self.predict_ab(self.model_input(batch.items))
        for item, ab in zip(batch.items, ab_small, strict=True):
            self._finish_item(item, ab)
        return batch

    def model_input(self, items: list[Item]) -> torch.Tensor:
        """The grey RGB the network reads, ``(N, 3, S, S)``: each item's L at ``S x S`` with a = b = 0."""
        import torch

        from imgflow_colorize import lab

        device = self.torch_device
        small = torch.cat([resize_square(item.image.to(device), self.side) for item in items])
        big_l = lab.rgb2lab(small)[:, :1]
        return lab.lab2rgb(torch.cat([big_l, torch.zeros_like(big_l), torch.zeros_like(big_l)], dim=1))

    def predict_ab(self, grey: torch.Tensor) -> torch.Tensor:
        """ab in Lab units at ``S x S`` with saturation applied, ``(N, 2, S, S)`` float32.

        Forward passes of ``self.chunk`` images. On out-of-memory the chunk is halved (for the
        rest of the run) and the pass retried; if one image does not fit, the items fail with the
        fix. A failed item is never written as its own input.
        """
        import torch

        outputs, start = [], 0
        while start < grey.shape[0]:
            count = min(self.chunk, grey.shape[0] - start)
            try:
                outputs.append(self._forward(grey[start:start + count], self.amp_dtype))
            except torch.OutOfMemoryError:
                if grey.is_cuda:
                    torch.cuda.empty_cache()
                if count == 1:
                    raise ItemError("stage_error", self._out_of_memory_message()) from None
                self.chunk = count // 2
                continue
            start += count
        return torch.cat(outputs) * self.params.saturation

    def _out_of_memory_message(self) -> str:
        smaller = "" if self.size == "tiny" else ', size = "tiny"'
        return (f"stage '{self.id}': out of memory for even one image at model_size {self.side} on "
                f"{self.torch_device} (fix: lower model_size{smaller}, or free the device's memory)")

    def _forward(self, grey: torch.Tensor, amp_dtype: Any) -> torch.Tensor:
        import torch

        x = grey.contiguous(memory_format=torch.channels_last)
        if amp_dtype is None:
            return self.net(x).float()
        with torch.autocast(device_type=x.device.type, dtype=amp_dtype):
            return self.net(x).float()

    def colorize_lab(self, item: Item, ab_small: torch.Tensor) -> torch.Tensor:
        """The output in Lab, ``(3, H, W)``: the item's own L, the predicted ab brought to H x W."""
        import torch
        from torch.nn import functional as F

        from imgflow_colorize import lab

        image = item.image
        height, width = image.shape[-2:]
        how = self.params.ab_upsample
        ab = F.interpolate(ab_small.unsqueeze(0).to(image.device), size=(height, width), mode=how,
                           align_corners=False if how == "bilinear" else None)[0]
        return torch.cat([lab.rgb2lab(image)[:1], ab])

    def _finish_item(self, item: Item, ab_small: torch.Tensor) -> None:
        import torch

        from imgflow_colorize import lab

        original = item.image
        colour = lab.lab2rgb(self.colorize_lab(item, ab_small)).to(torch.float32)
        if self.params.mode == "side_by_side":
            item.image = torch.cat([original.to(torch.float32), colour], dim=-1)
            if item.alpha is not None:
                item.alpha = torch.cat([item.alpha, item.alpha], dim=-1)
        else:
            item.image = colour
        item.results[self.id] = {
            "model": "ddcolor",
            "size": self.size,
            "model_size": self.side,
            "ab_upsample": self.params.ab_upsample,
            "weights": self.weights_id,
            "precision": self.precision(),
        }


def resize_square(image: torch.Tensor, side: int) -> torch.Tensor:
    """``(3, H, W)`` -> ``(1, 3, side, side)``, bilinear with antialiasing when shrinking.

    The release resizes with OpenCV's bilinear, which samples without a low-pass filter; a large
    scan shrunk to 512 px that way aliases fine texture into the model's input.
    """
    from torch.nn import functional as F

    x = image.unsqueeze(0).float()
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def calibration_input(side: int, device: torch.device) -> torch.Tensor:
    """A deterministic natural-looking grey image (gradients plus texture), ``(1, 3, side, side)``."""
    import torch

    gen = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0.0, 1.0, side)
    plane = 0.15 + 0.7 * ramp.view(side, 1) * ramp.view(1, side) + 0.08 * torch.randn(side, side, generator=gen)
    return plane.clamp(0, 1).expand(1, 3, side, side).contiguous().to(device)
