"""The stage chain: a pipeline's stages set up on one device and applied to one batch at a time.

A plain object with no threads, no queues and no files: give it decoded inputs, get items or
per-input errors back. The local executor calls it from its main thread, the Ray executor from
inside an actor, the training loop for its upstream stages, and a test with no executor at all.

Per-item isolation lives here, so every executor has it: when a batch raises, its inputs are
retried one by one and only the input that raises again fails (``stage_error``), with the place
in the code that raised. A batch that runs out of GPU memory is halved instead, down to one
image, which then fails as ``gpu_memory`` (:mod:`imgflow.engine.oom`).
"""

from __future__ import annotations

import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgflow.errors import ConfigError, DeviceError, ImgflowError, ItemError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Batch, Item
    from imgflow.io.decode import Decoded
    from imgflow.stage import DecodeHint, Stage


def resolve_device(spec: str | list[str]) -> torch.device:
    """'auto' picks CUDA when present; an explicit device that is absent is a config error.

    A list of devices (several GPUs) is checked whole; the chain takes its first device, and
    :mod:`imgflow.executors.chains` sets up one more chain per other device.
    """
    import torch

    if isinstance(spec, list):
        if not torch.cuda.is_available():
            raise DeviceError(f"[run] device = {spec}, but this machine has no CUDA device (fix: device = \"auto\" "
                              "or \"cpu\", or --device cpu)")
        for one in spec:
            resolve_device(one)
        return resolve_device(spec[0])
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"[run] device = {spec!r}, but this machine has no CUDA device "
                              "(fix: device = \"auto\" or \"cpu\", or --device cpu)")
        index = int(spec.split(":", 1)[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"[run] device = {spec!r}, but only {torch.cuda.device_count()} CUDA "
                              f"device(s) exist (fix: use cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if spec == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("[run] device = 'mps', but MPS is not available (fix: device = \"auto\")")
    return torch.device(spec)


def to_item(decoded: Decoded, relpath: str, seed: int) -> Item:
    """Decoded pixels (H, W, C uint8/uint16) -> an Item in the documented layout.

    8-bit pixels stay 8-bit: the item gets a (C, H, W) view of the decoded buffer (no copy) and
    converts to float32 only when a stage first reads ``item.image`` (:class:`imgflow.batch.Item`).
    16-bit pixels are converted at once into one fresh (C, H, W) float32 buffer; image and alpha
    are views of it (channels are the outer dimension, so both views are contiguous).
    """
    import torch

    from imgflow.batch import Item

    if decoded.tensor is not None:  # decoded on the device already (nvJPEG: imgflow.io.gpu_jpeg)
        return Item(source=relpath, uint8=decoded.tensor, meta=decoded.meta, seed=seed)
    if decoded.encoded is not None:
        raise RuntimeError(f"{relpath}: a JPEG left for the GPU decoder reached the stages undecoded (a bug)")
    pixels = decoded.pixels
    with warnings.catch_warnings():  # read-only pixels (Pillow's, Ray's) are only read
        warnings.simplefilter("ignore", UserWarning)
        if pixels.dtype.itemsize == 1:
            return Item(source=relpath, uint8=torch.from_numpy(pixels).permute(2, 0, 1), meta=decoded.meta,
                        seed=seed)
        source = torch.from_numpy(pixels.astype("int32"))  # torch has no uint16 arithmetic on every build
    height, width, channels = pixels.shape
    planes = torch.empty((channels, height, width), dtype=torch.float32)
    planes.copy_(source.permute(2, 0, 1))  # the vectorised path: 0.5 ms vs 3.9 ms for torch.mul(out=)
    planes.mul_(1.0 / 65535.0)
    image = planes[:3]
    alpha = planes[3:4] if channels == 4 else None
    return Item(source=relpath, image=image, meta=decoded.meta, alpha=alpha, seed=seed)


def place(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of the batch to ``device`` (no copy when already there).

    8-bit pixels travel as they are (a quarter of the bytes of floats); they are converted on
    the device when a stage first needs floats.
    """
    if str(batch.device) == str(device):
        return batch
    for item in batch.items:
        if item.uint8 is not None:
            item.set_uint8(item.uint8.to(device, non_blocking=True))
            continue
        item.image = item.image.to(device, non_blocking=True)
        if item.alpha is not None:
            item.alpha = item.alpha.to(device, non_blocking=True)
    batch.device = device
    return batch


@dataclass
class ChainInput:
    """One decoded input for the chain; ``key`` is the caller's handle, given back as is."""

    key: Any
    relpath: str
    decoded: Decoded


@dataclass
class ChainResult:
    """What became of one input: its items (fan-out gives several), or the error that failed it."""

    input: ChainInput
    items: list[Item]
    error: ItemError | None
    stages_s: float


class StageChain:
    """Stages set up on one device; :meth:`run` applies them to a batch of decoded inputs."""

    def __init__(self, stages: Sequence[Stage], device: str = "auto", seed: int = 0) -> None:
        self.stages = list(stages)
        self.device_spec = device
        self.seed = seed
        self.device: torch.device | None = None
        #: Set once a batch ran out of GPU memory: the most inputs that fitted in one pass since.
        self.max_inputs: int | None = None
        self._ready = False

    # -- what the chain needs, asked before setup (cheap)

    def batch_size(self, requested: int) -> int:
        """The run's batch size, capped by any stage that wants smaller batches."""
        sizes = [s.batch_size for s in self.stages if s.batch_size]
        return min([requested, *sizes]) if sizes else requested

    def decode_hint(self) -> DecodeHint | None:
        """The first stage's smallest useful image size (lets JPEGs decode at reduced scale)."""
        return self.stages[0].decode_hint() if self.stages else None

    # -- lifetime

    def setup(self) -> None:
        """Resolve the device, seed torch, set every stage up; a stage that cannot is a ConfigError.

        Once: a first run sets the chain up before it creates the output folder, and the
        executor's own call then finds it ready.
        """
        if self._ready:
            return
        import torch

        self.device = resolve_device(self.device_spec)
        torch.manual_seed(self.seed)
        for stage in self.stages:
            try:
                stage.setup(self.device_of(stage))
            except ImgflowError:
                raise
            except Exception as exc:
                raise ConfigError(f"stage '{stage.id}' ({stage.name}) failed to set up: "
                                  f"{type(exc).__name__}: {exc}") from exc
        self._ready = True

    def teardown(self) -> None:
        """Release every stage's memory; errors in one stage's teardown are ignored."""
        if not self._ready:
            return
        self._ready = False
        for stage in self.stages:
            try:
                stage.teardown()
            except Exception:  # noqa: BLE001 - teardown must reach every stage
                pass

    def device_of(self, stage: Stage) -> torch.device:
        import torch

        assert self.device is not None, "StageChain.setup() first"
        return torch.device("cpu") if stage.device == "cpu" else self.device

    # -- applying

    def apply(self, batch: Batch, stages: Sequence[Stage] | None = None) -> Batch:
        """Every stage (or ``stages``) under inference mode; with one that optimises, under no_grad.

        Inference tensors cannot join an autograd graph, so when one stage ``needs_grad`` the
        others run under ``no_grad`` (plain tensors) and that stage with autograd on.
        """
        import torch

        chosen = self.stages if stages is None else list(stages)
        if not any(stage.needs_grad for stage in chosen):
            with torch.inference_mode():
                for stage in chosen:
                    batch = stage.process(place(batch, self.device_of(stage)))
            return batch
        for stage in chosen:
            with torch.enable_grad() if stage.needs_grad else torch.no_grad():
                batch = stage.process(place(batch, self.device_of(stage)))
        return batch

    def run(self, inputs: Sequence[ChainInput]) -> list[ChainResult]:
        """Apply the chain to a batch of inputs; if it raises, retry input by input.

        Every input gets exactly one result, in the order given. Out of GPU memory, the batch is
        halved instead (see :mod:`imgflow.engine.oom`).
        """
        from imgflow.batch import Batch
        from imgflow.engine.oom import describe, is_out_of_memory

        if self.max_inputs is not None and len(inputs) > self.max_inputs:
            step = self.max_inputs
            return [result for at in range(0, len(inputs), step) for result in self.run(inputs[at:at + step])]
        started = time.perf_counter()
        out_of_memory = None
        try:
            batch = self.apply(Batch([to_item(i.decoded, i.relpath, self.seed) for i in inputs], device="cpu"))
        except Exception as exc:
            if not is_out_of_memory(exc):
                if len(inputs) == 1:
                    return [ChainResult(inputs[0], [], _stage_error(), time.perf_counter() - started)]
                return [result for single in inputs for result in self.run([single])]
            out_of_memory = describe(exc)  # retried below, once the exception's frames are gone
        if out_of_memory is not None:
            return self._smaller(inputs, out_of_memory, started)
        per_item = (time.perf_counter() - started) / max(1, len(inputs))
        by_source: dict[str, list[Item]] = {}
        for item in batch.items:
            by_source.setdefault(item.source, []).append(item)
        return [ChainResult(i, by_source.get(i.relpath, []), None, per_item) for i in inputs]

    def _smaller(self, inputs: Sequence[ChainInput], why: str, started: float) -> list[ChainResult]:
        """Out of GPU memory: each half on its own, and batches no larger from now on; one input
        alone fails as ``gpu_memory``."""
        from imgflow.engine.oom import free_cached_memory, gpu_memory_error

        free_cached_memory(self.device)
        if len(inputs) == 1:
            only = inputs[0]
            error = gpu_memory_error(only.relpath, only.decoded.meta, self.device, why)
            return [ChainResult(only, [], error, time.perf_counter() - started)]
        half = (len(inputs) + 1) // 2
        self.max_inputs = half if self.max_inputs is None else min(self.max_inputs, half)
        return self.run(inputs[:half]) + self.run(inputs[half:])


def _stage_error() -> ItemError:
    """The exception being handled as ``stage_error``, naming the file and line that raised."""
    exc = sys.exc_info()[1]
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc and exc.__traceback__ else None
    place_ = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    return ItemError("stage_error", f"{type(exc).__name__}: {exc}{place_}")
