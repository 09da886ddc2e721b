"""``[run] device`` lists and ``[run] decode``: what a pipeline asks of GPUs, checked without torch.

``imgflow validate`` runs anywhere, so nothing here imports torch or asks whether a GPU exists:
what can be judged from the file alone is judged here (a device list of distinct CUDA devices,
GPU decoding with CPU stages, with Ray or with a training run). Whether the machine has the GPUs
is the run's question, asked when the stages are set up (exit code 2 there too).

Neither key enters the pipeline fingerprint: like ``device``, they change where pixels are
computed, not what the pipeline asks for (see README, "GPUs").
"""

from __future__ import annotations

import re
from typing import Any, Literal

from imgflow.errors import Problem

#: ``[run] decode``: who decodes JPEGs.
DECODE_CHOICES = Literal["cpu", "gpu", "auto"]

_CUDA_N = re.compile(r"^cuda:\d+$")


def check_device_list(devices: list[str]) -> list[str]:
    """A device list: at least one, each ``cuda:N``, none twice (pydantic reports the ValueError)."""
    if not devices:
        raise ValueError('expected at least one device (fix: device = ["cuda:0", "cuda:1"], or device = "cuda" '
                         "for every visible GPU)")
    bad = [d for d in devices if not (isinstance(d, str) and _CUDA_N.match(d))]
    if bad:
        raise ValueError(f"a device list holds CUDA devices written cuda:N, got {bad[0]!r} (fix: e.g. "
                         'device = ["cuda:0", "cuda:1"]; for one device write it as a string: device = "cpu")')
    twice = sorted({d for d in devices if devices.count(d) > 1})
    if twice:
        raise ValueError(f"{twice[0]} is listed twice (fix: name each GPU once)")
    return devices


def split_device_option(value: str) -> str | list[str]:
    """``--device cuda:0,cuda:1`` is the list ``["cuda:0", "cuda:1"]``; anything else stays a string."""
    if "," not in value:
        return value
    return [part.strip() for part in value.split(",") if part.strip()]


def device_problems(where: str, run: Any, stages: list[Any]) -> list[Problem]:
    """What ``decode`` and a device list cannot do with this pipeline, judged from the file alone."""
    if run is None:
        return []
    problems: list[Problem] = []
    device = run.device
    if run.decode == "gpu" and isinstance(device, str) and device in ("cpu", "mps"):
        problems.append(Problem(
            f"{where} [run] decode",
            f'decode = "gpu" decodes JPEGs on the stages\' CUDA device, but device = {device!r}',
            'set decode = "cpu" (or "auto"), or device = "cuda"'))
    if run.executor == "ray":
        if isinstance(device, list):
            problems.append(Problem(
                f"{where} [run] device", "a device list is for the local executor: on Ray, each stage actor "
                "gets its own GPUs", 'set device = "auto" and [run.ray] num_gpus (GPUs per stage actor)'))
        if run.decode == "gpu":
            problems.append(Problem(
                f"{where} [run] decode", 'decode = "gpu" is for the local executor: Ray\'s decode actors '
                "decode on CPUs", 'set decode = "cpu" (or "auto", which picks cpu on Ray)'))
    trainer = next((s for s in stages if s.cls is not None and s.cls.consumes), None)
    if trainer is not None and run.decode == "gpu":
        problems.append(Problem(
            f"{where} [run] decode", f"training runs ({trainer.use}) decode on the CPU, in their own order",
            'set decode = "cpu" (or "auto", which picks cpu for training runs)'))
    return problems
