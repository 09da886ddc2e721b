"""A batch that does not fit in GPU memory: what the stage chain does about it.

A CUDA out-of-memory error depends on how many images share a forward pass, so it is not the
images' fault until one alone fails. :class:`imgflow.engine.chain.StageChain` halves the batch
and retries each half, down to one image; an image that does not fit alone fails with the reason
code ``gpu_memory`` (its input is never written as its output), and the run goes on. The chain
then keeps its batches at the size that fitted for the rest of the run, so every later batch
does not pay for a failed forward pass.

Recognised: ``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError`` is the same class), which
the CUDA caching allocator raises. The retry happens outside the ``except`` block, once the
exception and its traceback (which hold the failed pass's tensors) are gone, and after the
allocator's cached blocks are handed back, so the halves start from a clean slate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgflow.errors import ItemError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import ImageMeta

#: The reason code of an image that does not fit in GPU memory even alone.
GPU_MEMORY = "gpu_memory"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the allocator saying the device is out of memory."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError)


def describe(exc: BaseException) -> str:
    """The error's first line, short enough for a manifest message."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def free_cached_memory(device: torch.device | None) -> None:
    """Give the caching allocator's free blocks back, so a retry does not trip over them."""
    import torch

    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def gpu_memory_error(relpath: str, meta: ImageMeta, device: torch.device | None, why: str) -> ItemError:
    """``gpu_memory``: this image alone does not fit; say how big it is and what to change."""
    where = str(device) if device is not None else "the device"
    return ItemError(
        GPU_MEMORY,
        f"{relpath}: the stages ran out of memory on {where} with this {meta.width}x{meta.height} image alone "
        f"({why}) (fix: lower the stage's working size (e.g. model_size), refuse such images with a lower "
        "[run] max_pixels, free the GPU of other processes, or run this file with --device cpu)")
