"""The ``colorize`` stage: Zhang et al.'s ECCV16 / SIGGRAPH17 colorizers, batched, at full resolution.

Procedure (SPEC §1), per batch:
  1. every item's 8-bit RGB is resized to ``S x S`` with Pillow's bicubic, as the reference does
     (:mod:`.resample8`; aspect ratio ignored), so a batch of any mix of sizes stacks into one
     ``(N, C, S, S)`` tensor and runs in ONE forward;
  2. the network predicts ab at ``S x S`` from the L of the resized image (plus, for SIGGRAPH17,
     the item's point hints);
  3. ab is upsampled bilinearly to each item's own size and joined with the L computed from the
     ORIGINAL-resolution pixels, then Lab -> sRGB and clipped.
So the output keeps the input's exact luminance and resolution; only chroma comes from the model.
RGB inputs are recoloured from their luminance; alpha passes through untouched.

This module imports no torch at import time (listing and validating stages must stay fast);
torch, :mod:`.networks` and :mod:`.lab` are imported in ``setup``/``process``.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from imgflow import ConfigError, ItemError, Params, Stage, StageContext, StageKind, derive_seed

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Batch, Item

MODEL_STRIDE = 8  # both generators downsample by 8 (see networks.MODEL_STRIDE)
AB_NORM = 110.0
HINT_AB_LIMIT = 128.0
# autocast "auto": a reduced precision is used on CUDA only if, on a calibration image, it moves
# the predicted ab by at most this much (ab units; about 1 Delta-E, below what the eye notices).
AUTOCAST_AB_TOLERANCE = 1.0


class ColorizeParams(Params):
    model: Literal["eccv16", "siggraph17"] = Field(
        "siggraph17",
        description="Network: eccv16 (automatic, 313-bin classification) or siggraph17 (regression, "
        "accepts point hints).",
    )
    model_size: int = Field(
        256, ge=64,
        description="Side of the square the image is resized to for the network (the output keeps the "
        "original size). Rounded up to a multiple of 8.",
    )
    mode: Literal["color", "side_by_side"] = Field(
        "color", description="color: the colorized image; side_by_side: [input | colorized] in one image."
    )
    saturation: float = Field(1.0, ge=0.0, description="Multiplies the predicted ab (0 = grey, >1 = more vivid).")
    weights: str | None = Field(
        None,
        description="A checkpoint to use instead of the official colorize-<model> weights, e.g. a "
        "fine-tuned model: a registered model name (imgflow models list), a path (relative to the "
        "pipeline file) or a URL; \"random\": untrained, seeded weights for trying things out "
        "offline (outputs labelled untrained).",
    )
    hints: str | None = Field(
        None,
        description="siggraph17 only: folder of hint files, <hints>/<input path without suffix>.json, "
        'each {"points": [{"x": 10, "y": 20, "rgb": [255, 0, 0]} or {"x": .., "y": .., "ab": [a, b]}]} '
        "in original pixel coordinates. Relative to the pipeline file.",
    )
    hint_radius: int = Field(
        0, ge=0, description="Each hint covers a square of (2r+1)^2 model pixels; 0 = one pixel."
    )
    autocast: Literal["auto", "off"] = Field(
        "auto",
        description="auto: float16/bfloat16 on CUDA, bfloat16 on CPUs that compute it natively "
        "(AVX512-BF16/AMX), each only when it stays within about 1 Delta-E of float32 (checked at "
        "setup). off: always float32.",
    )

    @model_validator(mode="after")
    def _hints_need_siggraph17(self) -> ColorizeParams:
        if self.hints is not None and self.model != "siggraph17":
            raise ValueError(
                f"'hints' needs model = \"siggraph17\", got model = {self.model!r} (fix: set model = "
                '"siggraph17", or remove hints)'
            )
        if self.weights is not None and not self.weights.strip():
            raise ValueError("'weights' is empty (fix: give a checkpoint path or URL, or remove the key)")
        return self


def model_side(model_size: int) -> int:
    """The network input side: ``model_size`` rounded up to a multiple of 8.

    Both generators halve the resolution three times and double it back; only a multiple of 8
    comes back at exactly the input size, so the ab grid lines up with the L it is paired with.
    """
    return int(math.ceil(model_size / MODEL_STRIDE) * MODEL_STRIDE)


def registry_name(model: str) -> str:
    """The shared-registry name of a model's official checkpoint."""
    return f"colorize-{model}"


class Colorize(Stage):
    name = "colorize"
    kind = StageKind.COLORIZE
    description = "Colorize images (Zhang et al. ECCV16 / SIGGRAPH17), keeping the original luminance and size."
    reads = ("image", "alpha")
    writes = ("image", "alpha")
    Params: ClassVar[type[Params]] = ColorizeParams

    def __init__(self, params: Params, context: StageContext) -> None:
        super().__init__(params, context)
        p: ColorizeParams = self.params  # type: ignore[assignment]
        self.side = model_side(p.model_size)
        self.hints_dir = context.resolve(p.hints) if p.hints is not None else None
        self.net: Any = None
        self.weights_id = ""
        self.amp_dtype: Any = None  # a torch dtype when autocast is on

    # -- weights

    def weights_source(self) -> str | Path:
        """What to load: the registry name, a URL, or an absolute local path."""
        from imgflow import models

        return models.resolve_weights(self.params.weights, registry_name(self.params.model), self.context.resolve,
                                      keywords=(models.RANDOM,))

    def random_seed(self) -> int:
        """The seed of ``weights = "random"``: the same pipeline gives the same untrained net."""
        return derive_seed(self.context.seed, self.id, "random-init", self.params.model)

    def fingerprint(self) -> dict[str, Any]:
        """Which weights produce the colours (see imgflow.models.weights_fingerprint)."""
        from imgflow import models
        from imgflow_colorize import MODELS

        if self.weights_source() == models.RANDOM:
            return models.random_fingerprint(self.random_seed())
        return models.weights_fingerprint(self.weights_source(), {k: v[0] for k, v in MODELS.items()})

    def preflight(self) -> list[Any]:
        """The weights exist or will be downloaded; the hints folder exists (checked by validate)."""
        from imgflow import models
        from imgflow.preflight import file_notices, weights_notices

        found = weights_notices(self.weights_source(), keywords=(models.RANDOM,))
        if self.hints_dir is not None:
            found += file_notices(self.hints_dir, "hints folder", "create it, or remove 'hints'", folder=True)
        return found

    def setup(self, device: torch.device) -> None:
        """Build the network, load the weights strictly, and pick the precision for ``device``."""
        import torch

        from imgflow import models
        from imgflow_colorize import networks

        super().setup(device)
        if self.weights_source() == models.RANDOM:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.random_seed())
                net = networks.build(self.params.model)
        else:
            # mapped, not read: the tensors are copied just below (channels_last, or to the GPU)
            state = _strip_module_prefix(models.load_state_dict(self.weights_source(), mmap=True))
            # Built on the meta device and filled by assignment: random initialisation of 34M
            # parameters that the checkpoint overwrites anyway would cost more than the load itself.
            with torch.device("meta"):
                net = networks.build(self.params.model)
            _load_strict(net, state, self._describe_weights(), self.params.model)
        net.eval().to(device)
        # channels_last: oneDNN and cuDNN pick faster convolutions (CPU: 10-18% on these nets)
        net = net.to(memory_format=torch.channels_last)
        if self.weights_source() != models.RANDOM:
            _own_memory(net, state)
        self.net = net
        self.weights_id = models.weights_label(self.fingerprint())
        self.amp_dtype = self._choose_precision(device)

    def teardown(self) -> None:
        self.net = None

    def _describe_weights(self) -> str:
        source = self.weights_source()
        from imgflow import models

        return str(source) if isinstance(source, Path) or models.is_url(source) else f"registry model '{source}'"

    def _choose_precision(self, device: torch.device) -> Any:
        """A reduced precision when a calibration forward stays within tolerance of float32.

        CUDA tries float16, then bfloat16. A CPU tries bfloat16 only when it computes it natively
        (AVX512-BF16 or AMX): there it runs these networks 2.2-2.5x faster (measured on an AMD
        EPYC, 8 x 256^2), while an emulated bfloat16 would be slower than float32.
        """
        import torch

        if self.params.autocast == "off":
            return None
        candidates = precision_candidates(device)
        if not candidates:
            return None
        from imgflow.models.precision import device_facts, remembered_choice

        # The verdict is kept per weights, settings and device (imgflow.models.precision): the
        # two calibration forwards cost ~3 s of every run's start-up on a CPU otherwise.
        facts = {"stage": "colorize", "model": self.params.model, "side": self.side,
                 "weights": self.fingerprint(), "tolerance": AUTOCAST_AB_TOLERANCE,
                 "candidates": [str(d) for d in candidates], "device": device_facts(device)}
        name, _cached = remembered_choice(facts, lambda: self._calibrate(device, candidates))
        return None if name == "float32" else getattr(torch, name)

    def _calibrate(self, device: torch.device, candidates: list[Any]) -> str:
        """The first candidate whose calibration forward stays within tolerance, or "float32"."""
        import torch

        probe = _calibration_input(self.params.model, self.side, device)
        with torch.inference_mode():
            reference = self._forward(probe, None)
            for dtype in candidates:
                trial = self._forward(probe, dtype)
                err = float((trial - reference).abs().max()) * AB_NORM
                if math.isfinite(err) and err <= AUTOCAST_AB_TOLERANCE:
                    return str(dtype).removeprefix("torch.")
        return "float32"

    # -- the batch

    def precision(self) -> str:
        return "float32" if self.amp_dtype is None else str(self.amp_dtype).removeprefix("torch.")

    def process(self, batch: Batch) -> Batch:
        """Colorize every item with one forward pass over the whole batch."""
        if self.net is None:
            raise RuntimeError("stage 'colorize' used before setup() (engine bug)")
        items = batch.items
        if not items:
            return batch
        with work_threads(self.torch_device):
            model_in, hint_counts = self.model_input(items)
        ab_small = self.predict_ab(model_in)
        with work_threads(self.torch_device):
            for item, ab, count in zip(items, ab_small, hint_counts, strict=True):
                self._finish_item(item, ab, count)
        return batch

    def model_input(self, items: list[Item]) -> tuple[torch.Tensor, list[int]]:
        """The stacked network input ``(N, C, S, S)`` and the number of hints used per item.

        Each image is shrunk as the reference procedure does, Pillow's bicubic on its 8-bit
        pixels (:mod:`.resample8`), and the network gets the L of that.
        """
        import torch

        from imgflow_colorize import lab

        device = self.torch_device
        small = torch.stack([model_pixels(item, self.side).to(device) for item in items])
        l_norm = (lab.lightness(small.to(torch.float32).mul_(1.0 / 255.0)) - 50.0) / 100.0
        if self.params.model == "eccv16":
            return l_norm, [0] * len(items)
        planes, counts = [], []
        for item in items:
            hint_ab, mask, count = self.hint_planes(item)
            planes.append(torch.cat([hint_ab, mask]))
            counts.append(count)
        hints = torch.stack(planes).to(device)
        return torch.cat([l_norm, hints], dim=1), counts

    def predict_ab(self, model_in: torch.Tensor) -> torch.Tensor:
        """ab in Lab units at ``S x S``, saturation applied: ``(N, 2, S, S)`` float32."""
        return self._forward(model_in, self.amp_dtype) * (AB_NORM * self.params.saturation)

    def _forward(self, model_in: torch.Tensor, amp_dtype: Any) -> torch.Tensor:
        import torch

        x = model_in.contiguous(memory_format=torch.channels_last)  # faster convs on CUDA and CPU
        if amp_dtype is None:
            return self.net(x).float()
        with torch.autocast(device_type=x.device.type, dtype=amp_dtype):
            return self.net(x).float()

    def colorize_lab(self, item: Item, ab_small: torch.Tensor) -> torch.Tensor:
        """The output in Lab, ``(3, H, W)``: the item's own L, the predicted ab upsampled to H x W.

        L comes from the item's 8-bit pixels by table look-up while it has them (no float copy
        of the image is made), else from its float pixels.
        """
        import torch
        from torch.nn import functional as F

        from imgflow_colorize import lab
        from imgflow_colorize.resample8 import equal_channels

        pixels = item.uint8
        if pixels is not None:
            big_l = lab.lightness_u8(pixels, grey=equal_channels(pixels))
        else:
            big_l = lab.lightness(item.image)
        height, width = big_l.shape[-2:]
        ab = F.interpolate(ab_small.unsqueeze(0).to(big_l.device), size=(height, width),
                           mode="bilinear", align_corners=False)[0]
        return torch.cat([big_l, ab])

    def _finish_item(self, item: Item, ab_small: torch.Tensor, hint_count: int) -> None:
        import torch

        from imgflow_colorize import lab

        colour = lab.lab2rgb(self.colorize_lab(item, ab_small)).to(torch.float32)
        if self.params.mode == "side_by_side":
            original = item.image
            item.image = torch.cat([original.to(torch.float32), colour], dim=-1)
            if item.alpha is not None:
                item.alpha = torch.cat([item.alpha, item.alpha], dim=-1)
        else:
            item.image = colour
        item.results[self.id] = {
            "model": self.params.model,
            "model_size": self.side,
            "hints": hint_count,
            "weights": self.weights_id,
            "precision": self.precision(),
        }

    # -- hints

    def hint_file(self, item: Item) -> Path | None:
        """``<hints>/<source without suffix>.json`` for this item, or None without a hints folder."""
        if self.hints_dir is None:
            return None
        rel = PurePosixPath(item.source)
        if rel.is_absolute() or ".." in rel.parts:
            raise ItemError("stage_error", f"{item.source}: input path leaves the input root; no hints read")
        return self.hints_dir.joinpath(*rel.with_suffix(".json").parts)

    def hint_planes(self, item: Item) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The hint ab (/110, ``(2, S, S)``) and mask (``(1, S, S)``) planes on the CPU, and how many
        points were read; zeros when the item has no hint file."""
        import torch

        side, r = self.side, self.params.hint_radius
        hint_ab = torch.zeros(2, side, side)
        mask = torch.zeros(1, side, side)
        path = self.hint_file(item)
        if path is None or not path.is_file():
            return hint_ab, mask, 0
        height, width = item.image.shape[-2:]
        points = read_hints(path, width, height)
        for x, y, ab in points:
            mx = min(side - 1, int((x + 0.5) * side / width))
            my = min(side - 1, int((y + 0.5) * side / height))
            ys, xs = slice(max(0, my - r), my + r + 1), slice(max(0, mx - r), mx + r + 1)
            hint_ab[:, ys, xs] = torch.tensor(ab).view(2, 1, 1) / AB_NORM
            mask[:, ys, xs] = 1.0
        return hint_ab, mask, len(points)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def model_pixels(item: Item, side: int) -> torch.Tensor:
    """The item's RGB shrunk to ``(3, side, side)`` uint8 as the reference does (Pillow bicubic
    on 8 bits). Float items (16-bit scans, or after a float stage) are rounded to 8 bits first:
    only the network's input is, which is what the network was trained on."""
    import torch

    from imgflow_colorize.resample8 import equal_channels, resize_u8

    pixels = item.uint8
    if pixels is None:
        pixels = item.image.mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)
    pixels = pixels[:3]
    return resize_u8(pixels, side, grey=equal_channels(pixels))


@contextlib.contextmanager
def work_threads(device: torch.device) -> Iterator[None]:
    """One intra-op thread for the per-pixel work around the forward pass on a CPU.

    Resizing, Lab conversions and upsampling are dozens of short element-wise passes. Across
    two OpenMP threads each pass waits for both, and when the decode workers and encoders hold
    the other core that wait dominates: measured on 2 busy cores, Lab -> RGB of a 1024x768
    image took 33 ms on one thread and 230-550 ms on two. The forward pass keeps every thread.
    """
    import torch

    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def precision_candidates(device: torch.device) -> list[Any]:
    """The reduced precisions worth calibrating on ``device``, best first (may be empty)."""
    import torch

    if device.type == "cuda":
        return [torch.float16] + ([torch.bfloat16] if torch.cuda.is_bf16_supported() else [])
    if device.type == "cpu" and cpu_has_native_bf16():
        return [torch.bfloat16]
    return []


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 in hardware (x86 AVX512-BF16 or AMX-BF16 on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def _calibration_input(model: str, side: int, device: torch.device) -> torch.Tensor:
    """A deterministic natural-looking input (gradients plus texture) for the precision check."""
    import torch

    gen = torch.Generator().manual_seed(0)
    ramp = torch.linspace(-0.5, 0.5, side)
    l_norm = (ramp.view(side, 1) * ramp.view(1, side) * 2 + 0.1 * torch.randn(side, side, generator=gen))
    planes = [l_norm.clamp(-0.5, 0.5).view(1, 1, side, side)]
    if model == "siggraph17":
        planes.append(torch.zeros(1, 3, side, side))
    return torch.cat(planes, dim=1).to(device)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_hints(path: Path, width: int, height: int) -> list[tuple[int, int, tuple[float, float]]]:
    """Parse and check a hint file; return ``(x, y, (a, b))`` per point.

    Raises ItemError naming the file, the point and the fix: a broken hint file fails its own
    item (the runner retries the rest of the batch), never the run.
    """
    def bad(problem: str, fix: str) -> ItemError:
        return ItemError("stage_error", f"hint file {path}: {problem} (fix: {fix})")

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"cannot read it as JSON: {exc}", "write valid UTF-8 JSON") from None
    points = doc.get("points") if isinstance(doc, dict) else None
    if not isinstance(points, list):
        raise bad('expected an object with a "points" list', 'write {"points": [{"x": 0, "y": 0, "rgb": [r, g, b]}]}')
    out = []
    for i, point in enumerate(points):
        where = f"points[{i}]"
        if not isinstance(point, dict):
            raise bad(f"{where}: expected an object, got {point!r}", 'use {"x": .., "y": .., "rgb": [..]}')
        x, y = point.get("x"), point.get("y")
        if not (isinstance(x, int) and isinstance(y, int)) or isinstance(x, bool) or isinstance(y, bool):
            raise bad(f"{where}: x and y must be integers, got x={x!r}, y={y!r}", "give pixel coordinates")
        if not (0 <= x < width and 0 <= y < height):
            raise bad(f"{where}: ({x}, {y}) is outside the {width}x{height} image",
                      f"use 0 <= x < {width} and 0 <= y < {height} (original pixel coordinates)")
        out.append((x, y, _hint_ab(point, where, bad)))
    return out


def _hint_ab(point: dict[str, Any], where: str, bad: Any) -> tuple[float, float]:
    """The ab of one hint point, from ``rgb`` (0-255 sRGB, via Lab) or given directly as ``ab``."""
    has_rgb, has_ab = "rgb" in point, "ab" in point
    if has_rgb == has_ab:
        raise bad(f"{where}: give exactly one of 'rgb' and 'ab'", 'e.g. "rgb": [200, 30, 30]')
    if has_ab:
        ab = point["ab"]
        if not (isinstance(ab, list) and len(ab) == 2 and all(_number(v) for v in ab)
                and all(abs(v) <= HINT_AB_LIMIT for v in ab)):
            raise bad(f"{where}: 'ab' must be two numbers in [-128, 128], got {ab!r}", 'e.g. "ab": [40, 20]')
        return float(ab[0]), float(ab[1])
    rgb = point["rgb"]
    if not (isinstance(rgb, list) and len(rgb) == 3 and all(_number(v) and 0 <= v <= 255 for v in rgb)):
        raise bad(f"{where}: 'rgb' must be three numbers in [0, 255], got {rgb!r}", 'e.g. "rgb": [200, 30, 30]')
    import torch

    from imgflow_colorize import lab

    colour = lab.rgb2lab(torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 255.0)
    return float(colour[1, 0, 0]), float(colour[2, 0, 0])


def _own_memory(net: Any, state: dict[str, Any]) -> None:
    """Copy every parameter and buffer that still shares memory with the mapped checkpoint.

    The layout conversion copies most weights off the map; biases, norms and 1x1 kernels that
    are already channels_last would stay views of the file, which a truncation of the file
    mid-run would turn into a SIGBUS. They are a few hundred kB.
    """
    from torch import nn

    mapped = {t.untyped_storage().data_ptr() for t in state.values() if t.device.type == "cpu"}
    for module in net.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.untyped_storage().data_ptr() in mapped:
                module._parameters[name] = nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.untyped_storage().data_ptr() in mapped:
                module._buffers[name] = buffer.clone()


def _strip_module_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints saved from DataParallel/DDP prefix every key with ``module.``; drop it."""
    if state and all(k.startswith("module.") for k in state):
        return {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _load_strict(net: Any, state: dict[str, Any], described: str, model: str) -> None:
    """``load_state_dict(strict=True)`` with a message that says what is wrong and what to do."""
    from imgflow import models

    theirs = set(state)
    if "model_class.0.weight" in theirs and model == "eccv16":
        raise ConfigError(f"{described}: this is a siggraph17 checkpoint, but model = \"eccv16\" "
                          "(fix: set model = \"siggraph17\")")
    if "model_out.weight" in theirs and model == "siggraph17":
        raise ConfigError(f"{described}: this is an eccv16 checkpoint, but model = \"siggraph17\" "
                          "(fix: set model = \"eccv16\")")
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    models.check_keys(state, expected, subject=f"{described} (model = \"{model}\")")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # check_keys covers names and shapes; this is a last resort
        first = str(exc).strip().splitlines()[-1].strip()
        raise ConfigError(f"{described}: tensor shapes do not match the {model} network: {first} "
                          f"(fix: use the official colorize-{model} weights or one fine-tuned from them)") from None
