"""Image-level parallelism for CPU stages whose models scale poorly across cores.

torch parallelises *inside* each operator (intra-op threads). That pays for big convolutions,
but a detector runs hundreds of small operators (box decoding, NMS, RoI pooling, a small
backbone) on one image at a time, and those barely use a second core. Running one image per
core instead, each with a single intra-op thread, keeps every core busy. Measured on 2 cores,
one 640x480 image per call: Faster R-CNN MobileNetV3 600 -> 470 ms/img, SSDlite 55-89 ->
33-36 ms/img; a colorizer's large convolutions gain only 5%, so it does not use this.

Results do not depend on it: every image is computed on its own, as in the sequential loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_per_core(fn: Callable[[T], R], inputs: Sequence[T]) -> list[R]:
    """``[fn(x) for x in inputs]``, one input per core, each with one intra-op thread.

    The process's intra-op thread count is process-wide in torch, so it is set to 1 for the
    duration and restored after (only one thread runs stages). Grad and inference
    modes are thread-local: the caller's are re-entered in every worker thread.
    """
    import torch

    cores = torch.get_num_threads()
    if cores <= 1 or len(inputs) <= 1:
        return [fn(x) for x in inputs]
    inference = torch.is_inference_mode_enabled()
    grad = torch.is_grad_enabled()

    def call(x: T) -> R:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(x)

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=min(cores, len(inputs)), thread_name_prefix="imgflow-core") as pool:
            return list(pool.map(call, inputs))
    finally:
        torch.set_num_threads(cores)
