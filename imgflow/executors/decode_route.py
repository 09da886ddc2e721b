"""``[run] decode``: who decodes a local run's JPEGs, the decode workers or nvJPEG on the GPU.

    cpu   every file is decoded by the decode worker processes (the default).
    gpu   JPEGs nvJPEG decodes as the CPU path does are decoded in batches on the stages' GPU;
          every other file, and any JPEG nvJPEG fails on, by the decode workers. Without a CUDA
          device (or without TorchCodec's nvJPEG) it is a configuration error: exit code 2,
          before any item is recorded.
    auto  once the stages are set up, both decoders are timed on a generated 1024x768 JPEG
          (a fraction of a second) and the faster is used for the rest of the run; the run says
          which it picked and why. Without a CUDA device it picks cpu.

A :class:`DecodeRoute` is shared by the feeder thread's decode pool, which asks :meth:`defer`
as it hands out each file, and the thread running each stage chain, which calls
:meth:`resolve` on a batch before the chain: JPEGs left undecoded are decoded there, on that
chain's device. A file nvJPEG fails on is decoded by a CPU decode worker of its own (started on
first need), so it gets the CPU path's pixels or its reason code: a bad JPEG fails alone.

Worker isolation: files whose header Pillow read cleanly (and that end as a JPEG must) are
decoded by nvJPEG inside the run's process; a file that crashed nvJPEG itself would end the run
(a rerun resumes it). Folders of untrusted files are safest with ``decode = "cpu"``.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from imgflow.errors import ConfigError, ItemError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.engine.chain import ChainInput, ChainResult
    from imgflow.io.decode import DecodeLimits, Decoded
    from imgflow.io.decodepool import DecodePool


class DecodeRoute:
    """One run's choice of JPEG decoder, and the GPU decoding of the batches it routes there."""

    def __init__(self, mode: str, limits: DecodeLimits, timeout_s: float) -> None:
        self.mode = mode
        self.limits = limits
        self.timeout_s = timeout_s
        #: Whether decode workers leave JPEGs for the GPU now. "gpu" starts so (a machine without
        #: CUDA fails at :meth:`settle`, before anything is recorded); "auto" once it measured.
        self.gpu = mode == "gpu"
        self.message: str | None = None
        self._fallback: DecodePool | None = None
        self._lock = threading.Lock()

    def defer(self) -> bool:
        """Asked by the decode pool per file: leave GPU-decodable JPEGs undecoded?"""
        return self.gpu

    # -- the choice

    def settle(self, device: torch.device, workers: int, batch: int, echo: Callable[[str], None]) -> None:
        """Check (``gpu``) or choose (``auto``) once the stages are set up on ``device``."""
        from imgflow.io.gpu_jpeg import measure_rates, nvjpeg_problem

        if self.mode == "cpu":
            return
        problem = nvjpeg_problem(device)
        if self.mode == "gpu":
            if problem is not None:
                raise ConfigError(f'[run] decode = "gpu", but {problem} (fix: decode = "auto", which falls back '
                                  'to the CPU, or decode = "cpu")')
            return
        if problem is not None:
            self.gpu, self.message = False, f"cpu: {problem}"
        else:
            rates = measure_rates(device, workers, batch)
            self.gpu = rates.gpu_wins
            self.message = (f"{'gpu' if self.gpu else 'cpu'}: nvJPEG on {device} {rates.gpu:,.0f} img/s, {workers} "
                            f"CPU decode worker(s) {rates.cpu:,.0f} img/s (measured on a {_probe_size()} JPEG)")
        echo(f'imgflow: decode = "auto" picked {self.message}')

    # -- decoding what was left for the GPU

    def resolve(self, inputs: Sequence[ChainInput], device: torch.device) -> tuple[list[ChainInput], list[ChainResult]]:
        """Decode the batch's JPEGs left for the GPU on ``device``.

        Returns the inputs ready for the chain (in order) and the results of those that failed:
        a file nvJPEG could not decode is decoded by a CPU worker instead, and fails only if that
        fails too (with the CPU decoder's reason code).
        """
        from imgflow.engine.chain import ChainResult
        from imgflow.io.gpu_jpeg import decode_each

        waiting = [i for i in inputs if i.decoded.encoded is not None]
        if not waiting:
            return list(inputs), []
        outcomes = decode_each([_tensor(i.decoded.encoded.data) for i in waiting],
                               [i.decoded.meta.mode == "L" for i in waiting], device)
        failed: dict[int, ChainResult] = {}
        for one, outcome in zip(waiting, outcomes):
            meta = one.decoded.meta
            if not isinstance(outcome, str) and tuple(outcome.shape) == (3, meta.height, meta.width):
                one.decoded.tensor, one.decoded.encoded = outcome, None
                meta.notes.append(f"decoded by nvJPEG on {device}")
                continue
            why = outcome if isinstance(outcome, str) else (
                f"it decoded to {outcome.shape[-1]}x{outcome.shape[-2]}, the header says {meta.width}x{meta.height}")
            redone = self._decode_on_cpu(one.decoded)
            if isinstance(redone, ItemError):
                failed[id(one)] = ChainResult(one, [], redone, 0.0)
                continue
            redone.reservation, one.decoded.reservation = one.decoded.reservation, None
            redone.meta.notes.append(f"nvJPEG could not decode it ({why}); decoded on the CPU")
            one.decoded = redone
        return [i for i in inputs if id(i) not in failed], [failed[id(i)] for i in inputs if id(i) in failed]

    def _decode_on_cpu(self, decoded: Decoded) -> Decoded | ItemError:
        """The file decoded by a CPU decode worker (the run's caps, isolation and reason codes)."""
        from imgflow.io.decodepool import DecodePool

        with self._lock:
            if self._fallback is None:
                self._fallback = DecodePool(workers=1, limits=self.limits, timeout_s=self.timeout_s)
            for _key, outcome, _seconds in self._fallback.imap_unordered([(0, decoded.encoded.path)]):
                return outcome
        raise RuntimeError("the CPU decode worker gave no outcome")  # pragma: no cover - one task, one outcome

    def close(self) -> None:
        """Stop the CPU decode worker, if one was started."""
        with self._lock:
            if self._fallback is not None:
                self._fallback.close()
                self._fallback = None


def _tensor(data: Any) -> Any:
    """A 1-D uint8 tensor over the file's bytes (no copy; they are only read)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only buffers are only read
        return torch.from_numpy(data)


def _probe_size() -> str:
    from imgflow.io.gpu_jpeg import PROBE_SIZE

    return f"{PROBE_SIZE[0]}x{PROBE_SIZE[1]}"
