"""The sections of a pipeline file as pydantic models: every key, its type, default and meaning.

Unknown keys are rejected (``extra="forbid"``); the validator in :mod:`imgflow.config.validate`
turns pydantic's errors into problems that name the file, the key and the fix.
"""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from imgflow.config.devices import DECODE_CHOICES, check_device_list
from imgflow.config.executor import RaySection
from imgflow.io.naming import DEFAULT_TEMPLATE
from imgflow.io.source import DEFAULT_INCLUDE
from imgflow.scalars import ScalarRules

DEFAULT_NAMING = DEFAULT_TEMPLATE
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
#: The smallest [run] worker_memory_mb accepted: below it a decode worker cannot even start.
MIN_WORKER_MEMORY_MB = 256


SEED_MAX = 2**63 - 1  # what SQLite, numpy and torch all take as a seed
# Upper bounds far beyond any real use, below what the OS's timers and sizes overflow at.
DAY_S = 86_400.0
TIB_IN_MB = 1024.0 * 1024.0


def _default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2)))


class _Section(ScalarRules):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PipelineSection(_Section):
    name: str | None = Field(None, description="Name shown in logs and the manifest; defaults to the file name.")
    description: str = Field("", description="What the pipeline is for.")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="Alias of [run] seed.")


class InputSection(_Section):
    path: str = Field(..., description="Folder of images to read (relative to the pipeline file).")
    include: list[str] = Field(default_factory=lambda: list(DEFAULT_INCLUDE),
                               description="Glob patterns (** for any folders), case-insensitive.")
    exclude: list[str] = Field(default_factory=list, description="Glob patterns to leave out.")
    recursive: bool = Field(True, description="Walk sub-folders.")


class OutputSection(_Section):
    path: str = Field(..., description="Output root (relative to the pipeline file).")
    format: Literal["jpeg", "png", "webp", "tiff", "same"] = Field(
        "same", description="Image format of outputs; 'same' keeps the input's format.")
    quality: int = Field(92, ge=1, le=100, description="JPEG/WebP quality.")
    naming: str = Field(DEFAULT_NAMING, description="Output file name template in the mirrored folder.")
    overwrite: Literal["replace", "never"] = Field(
        "replace", description="'never' refuses to replace a file imgflow did not write for that item.")
    bit_depth: Literal[8, 16, "same"] = Field(
        8, description="8, 16 (PNG/TIFF), or 'same' to keep 16-bit inputs 16-bit.")
    manifest: bool = Field(True, description="Write manifest.jsonl and run-summary.json.")
    report: bool = Field(False, description="Write the HTML run report, report/index.html, after each run.")

    @model_validator(mode="after")
    def _bit_depth_fits_format(self) -> OutputSection:
        """JPEG and WebP hold 8 bits per channel: asking for 16 there would be silently ignored."""
        if self.bit_depth == 16 and self.format in ("jpeg", "webp"):
            raise ValueError(
                f"bit_depth = 16 with format = {self.format!r}: {self.format.upper()} holds 8 bits per "
                'channel only (fix: format = "png" or "tiff" for 16-bit outputs, or bit_depth = 8)')
        return self


class RunSection(_Section):
    device: str | list[str] = Field(
        "auto", description="auto, cpu, cuda (every visible GPU), cuda:N, or a list such as [\"cuda:0\", \"cuda:1\"].")
    decode: DECODE_CHOICES = Field(
        "cpu", description="JPEG decoding: cpu (worker processes), gpu (nvJPEG on the stages' GPU, per-file CPU "
                           "fallback) or auto (measured at start).")
    batch_size: int = Field(8, ge=1, le=4096, description="Images per batch on the device.")
    workers: int = Field(default_factory=_default_workers, ge=1, le=256,
                         description="Decode worker processes (and encode threads).")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed for every random draw (per item, reproducible).")
    max_pixels: int = Field(100_000_000, ge=1, description="Refuse images with more pixels (decompression bombs).")
    max_file_mb: float = Field(512, gt=0, le=TIB_IN_MB, description="Refuse files larger than this many MiB.")
    worker_memory_mb: int | None = Field(
        4096, le=2**40, description=f"Address-space cap per decode worker (at least {MIN_WORKER_MEMORY_MB}).")
    decode_timeout_s: float = Field(120.0, gt=0, le=DAY_S,
                                    description="Kill a decode worker stuck this long on one file (at most a day).")
    prefetch_mb: float = Field(256, gt=0, le=TIB_IN_MB, description="Decoded pixels held ahead of the stages (MiB).")
    max_memory_mb: int | None = Field(
        None, ge=16, le=2**40, description="Memory for image data across the run's processes (MiB); default: 640 "
                                           "per CPU core, at least 1024, at most a quarter of the machine's memory.")
    decode_downscale: bool = Field(
        True, description="Decode JPEGs at 1/2, 1/4 or 1/8 scale when the first stage shrinks them anyway.")
    checkpoint_every: int = Field(
        200, ge=0, description="Training runs: checkpoint every this many steps, besides every epoch end (0: epoch ends only).")
    executor: Literal["local", "ray"] = Field(
        "local", description="Where the run executes: this machine, or a Ray cluster ([run.ray]).")
    ray: RaySection = Field(default_factory=RaySection, description="[run.ray]: the Ray executor's settings.")

    @field_validator("device")
    @classmethod
    def _device_list(cls, value: str | list[str]) -> str | list[str]:
        """A list names distinct CUDA devices (cuda:N); a single name is checked by DEVICE_RE."""
        return check_device_list(value) if isinstance(value, list) else value

    @field_validator("worker_memory_mb")
    @classmethod
    def _worker_can_start(cls, value: int | None) -> int | None:
        """A cap under what a decode worker needs before it decodes anything fails every file."""
        if value is not None and value < MIN_WORKER_MEMORY_MB:
            raise ValueError(
                f"expected at least {MIN_WORKER_MEMORY_MB}, got {value}: a decode worker uses about 200 MB "
                "of address space before it decodes anything, so no image could be decoded (fix: set "
                "worker_memory_mb to 1024 or more for large images, or remove it for the default 4096)")
        return value


SECTION_MODELS: dict[str, type[_Section]] = {
    "pipeline": PipelineSection,
    "input": InputSection,
    "output": OutputSection,
    "run": RunSection,
}
TOP_LEVEL_KEYS = [*SECTION_MODELS, "stages"]
