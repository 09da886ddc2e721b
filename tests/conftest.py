"""Shared fixtures: a small in-process test plugin and a pipeline-file writer.

The test plugin's stages are deliberately simple so engine tests exercise the engine, not a
stage: ``invert`` (deterministic), ``fail_on`` (raises for chosen items, to test isolation),
``tag`` (records a result per item), ``split`` (fans out 1 -> 2) and ``collect`` (a consuming
stage that writes a summary artefact).
"""

from __future__ import annotations

import json
import os

# As the CLI does: idle OpenMP threads otherwise spin on the cores other processes need (the
# suite runs subprocesses and decode workers beside in-process torch). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Precision verdicts are calibrated afresh in tests, never read from or written to the user's cache.
os.environ.setdefault("IMGFLOW_PRECISION_CACHE", "off")
from typing import Any

import pytest
from pydantic import Field

from imgflow import Artifact, Batch, Params, Stage, StageKind, hookimpl


class Invert(Stage):
    name = "invert"
    kind = StageKind.OTHER
    description = "1 - pixel (test stage)"

    def process(self, batch: Batch) -> Batch:
        for item in batch.items:
            item.image = 1.0 - item.image
        return batch


class FailOn(Stage):
    name = "fail_on"
    description = "raises for items whose path contains a marker (test stage)"

    class Params(Params):
        marker: str = Field("boom", description="substring of the input path that fails")

    def process(self, batch: Batch) -> Batch:
        for item in batch.items:
            if self.params.marker in item.source:
                raise RuntimeError(f"refusing {item.source}")
        return batch


class Tag(Stage):
    name = "tag"
    description = "records mean brightness and a per-item random number (test stage)"

    class Params(Params):
        label: str = Field("x", description="a label copied into results")

    def process(self, batch: Batch) -> Batch:
        import torch

        for item in batch.items:
            draw = torch.rand(1, generator=item.generator(self.id)).item()
            item.results[self.id] = {"label": self.params.label, "mean": round(float(item.image.mean()), 6),
                                     "draw": draw}
        return batch


class Split(Stage):
    name = "split"
    description = "fans each item out into a left and a right half (test stage)"
    fans_out = True

    def process(self, batch: Batch) -> Batch:
        out = []
        for item in batch.items:
            w = item.image.shape[-1]
            out.append(item.derive(item.image[:, :, : w // 2].contiguous(), "_left"))
            out.append(item.derive(item.image[:, :, w // 2 :].contiguous(), "_right"))
        return batch.with_items(out)


class Collect(Stage):
    name = "collect"
    kind = StageKind.TRAIN
    description = "consumes the stream and writes a list of what it saw (test stage)"
    consumes = True

    def setup(self, device: Any) -> None:
        self.seen: list[str] = []

    def consume(self, batch: Batch) -> None:
        self.seen.extend(item.source for item in batch.items)

    def finalize(self) -> list[Artifact]:
        return [Artifact("collect/seen.json", data=json.dumps(sorted(self.seen)).encode())]


class CountExport(Stage):
    name = "count_export"
    description = "writes a run-level JSON listing every done input and its tag (test stage)"

    def process(self, batch: Batch) -> Batch:
        for item in batch.items:
            item.results[self.id] = {"h": int(item.image.shape[-2])}
        return batch

    def export(self, records):
        listed = {r["input"]: r["results"][self.id]["h"] for r in records}
        return [Artifact("exports/heights.json", data=json.dumps(listed, sort_keys=True).encode())]


class GradHalf(Stage):
    name = "grad_half"
    description = "replaces the image by d(sum(x^2)/4)/dx = x/2, computed by autograd (test stage)"
    needs_grad = True

    def process(self, batch: Batch) -> Batch:
        import torch

        for item in batch.items:
            x = item.image.clone().requires_grad_(True)
            (x.square().sum() / 4).backward()
            item.image = x.grad.detach()
            item.results[self.id] = {"grad_enabled": torch.is_grad_enabled(),
                                     "inference_mode": torch.is_inference_mode_enabled()}
        return batch


class TestPlugin:
    @hookimpl
    def register_stages(self, register):
        for cls in (Invert, FailOn, Tag, Split, Collect, CountExport, GradHalf):
            register(cls)


@pytest.fixture
def test_plugin(imgflow_register):
    imgflow_register(TestPlugin(), name="imgflow-tests")
    return TestPlugin
