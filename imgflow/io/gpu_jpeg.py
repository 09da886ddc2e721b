"""JPEG decoding on a GPU with TorchCodec's nvJPEG decoder, one batch per call, each file on its own.

The decode workers leave the JPEGs nvJPEG can decode undecoded (:mod:`imgflow.io.jpeg_route`);
the run's process decodes a batch of them here, straight into uint8 ``(3, H, W)`` tensors on the
stages' device. TorchCodec's batched call decodes the whole list in one nvJPEG call, fastest,
but gives no partial results: one bad file fails the call. So a batch that fails is decoded again
file by file, and every file gets its own outcome: a tensor, or why nvJPEG could not decode it
(the caller then has a CPU worker decode that file: a bad JPEG fails alone, with the CPU
decoder's reason).

Grey JPEGs are decoded as their luma plane (exactly the CPU decoder's grey) and repeated into
three equal channels, as the CPU path does; colour JPEGs to RGB. nvJPEG applies the EXIF
orientation itself; a result whose size differs from the upright size the header gave is
refused (and decoded on the CPU).

torch and torchcodec are imported inside the functions: this module is imported by the engine,
which must stay importable without them.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: A batch decoder: (encoded 1-D uint8 tensors, mode "RGB" or "GRAY", device) -> (C, H, W) tensors.
BatchDecode = Callable[[list[Any], str, Any], list[Any]]

#: Size of the JPEG ``decode = "auto"`` times both decoders on (a 0.8-megapixel photo).
PROBE_SIZE = (1024, 768)


def torchcodec_decode(encoded: list[Any], mode: str, device: Any) -> list[Any]:
    """TorchCodec's decode_jpeg on a list: one nvJPEG call on CUDA (libjpeg-turbo on a CPU)."""
    from torchcodec.decoders import decode_jpeg

    return list(decode_jpeg(list(encoded), mode=mode, device=device))


def decode_each(encoded: Sequence[Any], grey: Sequence[bool], device: Any,
                decode: BatchDecode | None = None) -> list[Any]:
    """Decode a batch; each file gets a uint8 (3, H, W) tensor on ``device``, or a string saying
    why it could not be decoded. One file's failure never costs the others theirs."""
    decode = decode or torchcodec_decode
    outcomes: list[Any] = [None] * len(encoded)
    for want_grey in (False, True):
        group = [i for i, is_grey in enumerate(grey) if is_grey == want_grey]
        if not group:
            continue
        mode = "GRAY" if want_grey else "RGB"
        try:
            decoded = decode([encoded[i] for i in group], mode, device)
        except Exception:  # noqa: BLE001 - the batch call gives no partial results: go file by file
            decoded = [_one(decode, encoded[i], mode, device) for i in group]
        for index, tensor in zip(group, decoded):
            outcomes[index] = tensor.repeat(3, 1, 1) if want_grey and not isinstance(tensor, str) else tensor
    return outcomes


def _one(decode: BatchDecode, data: Any, mode: str, device: Any) -> Any:
    """One file alone: its tensor, or the decoder's complaint (its first line) as a string."""
    try:
        return decode([data], mode, device)[0]
    except Exception as exc:  # noqa: BLE001 - any failure sends this one file to the CPU decoder
        text = str(exc).strip().splitlines()
        detail = text[-1] if text else ""
        return f"{type(exc).__name__}: {detail[:160]}" if detail else type(exc).__name__


def nvjpeg_problem(device: torch.device) -> str | None:
    """Why JPEGs cannot be decoded on ``device`` with nvJPEG (None when they can, tried on a
    small test JPEG): a device that is not CUDA, TorchCodec missing, or built without nvJPEG."""
    import torch

    if device.type != "cuda":
        return (f"the stages run on {device}, not on a CUDA device" if torch.cuda.is_available() else
                f"this machine has no CUDA device (the stages run on {device})")
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a library that does not load
        return (f"TorchCodec is not usable ({type(exc).__name__}: {exc}; install it with `uv sync --extra gpu` "
                "or `pip install 'imgflow[gpu]'`)")
    try:
        out = torchcodec_decode([_as_tensor(probe_jpeg((64, 48)))], "RGB", device)[0]
    except Exception as exc:  # noqa: BLE001 - e.g. a CPU-only TorchCodec build
        return f"TorchCodec could not decode a test JPEG on {device} ({type(exc).__name__}: {str(exc)[:200]})"
    if tuple(out.shape) != (3, 48, 64):
        return f"TorchCodec decoded a 64x48 test JPEG to shape {tuple(out.shape)} on {device}"
    return None


@dataclass(frozen=True)
class DecodeRates:
    """Images per second of each decoder on the probe JPEG, as ``decode = "auto"`` measured them."""

    gpu: float  # one nvJPEG batch call at a time
    cpu: float  # ``workers`` decode workers, each decoding as fast as one does here

    @property
    def gpu_wins(self) -> bool:
        return self.gpu > self.cpu


def measure_rates(device: torch.device, workers: int, batch: int, reps: int = 3) -> DecodeRates:
    """Time imgflow's CPU decoder and nvJPEG on the same generated JPEG (about 0.1-0.3 s).

    The CPU side is what a decode worker does per file (hash and decode with Pillow), times the
    workers; the GPU side is a batched call of ``batch`` copies, synchronised.
    """
    import torch

    from imgflow.io.decode import DecodeLimits, decode_bytes

    data = probe_jpeg(PROBE_SIZE)
    limits = DecodeLimits(memory_mb=None)
    decode_bytes(data, limits)
    cpu_s = statistics.median(_timed(lambda: decode_bytes(data, limits)) for _ in range(reps))
    encoded = [_as_tensor(data)] * max(1, batch)
    torchcodec_decode(encoded[:1], "RGB", device)  # warm: the decoder's handles and buffers
    torch.cuda.synchronize(device)

    def gpu_batch() -> None:
        torchcodec_decode(encoded, "RGB", device)
        torch.cuda.synchronize(device)

    gpu_s = statistics.median(_timed(gpu_batch) for _ in range(reps))
    return DecodeRates(gpu=len(encoded) / max(gpu_s, 1e-9), cpu=max(1, workers) / max(cpu_s, 1e-9))


def _timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _as_tensor(data: bytes) -> Any:
    import torch

    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def probe_jpeg(size: tuple[int, int]) -> bytes:
    """A photo-like JPEG (q90, 4:2:0) of ``size``: gradients, an edge and mild noise."""
    import numpy as np
    from PIL import Image

    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    noise = np.random.default_rng(0).normal(0.0, 4.0, (height, width, 3)).astype(np.float32)
    pixels = np.stack([255 * x / width, 255 * y / height, 128 + 60 * np.sin(x / 37.0) * (x > width / 2)], axis=2)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
