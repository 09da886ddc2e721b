"""Start-up (issue 17): precision verdicts kept across runs, mapped weights that the stage copies
off the map, and a first batch of one so the first output comes one forward after set-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imgflow import Batch, Params, Stage, StageContext, hookimpl, models, run_pipeline
from imgflow.models import precision
from tests.helpers import write_pipeline


@pytest.fixture
def cache_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "hub" / "imgflow-precision.json"
    monkeypatch.setenv(precision.ENV, str(path))
    return path


def test_verdict_is_computed_once_per_facts(cache_file: Path) -> None:
    calls: list[str] = []

    def choose(name: str):
        return lambda: calls.append(name) or name

    facts = {"weights": {"weights": "/w.pth", "size": 1, "mtime_ns": 2}, "device": {"type": "cpu"}}
    assert precision.remembered_choice(facts, choose("bfloat16")) == ("bfloat16", False)
    assert precision.remembered_choice(facts, choose("float32")) == ("bfloat16", True)  # kept
    other = {**facts, "weights": {"weights": "/w.pth", "size": 1, "mtime_ns": 3}}  # the file changed
    assert precision.remembered_choice(other, choose("float32")) == ("float32", False)
    assert calls == ["bfloat16", "float32"]
    assert len(json.loads(cache_file.read_text())["entries"]) == 2

    cache_file.write_text("{not json")  # a damaged cache is ignored and replaced
    assert precision.remembered_choice(facts, choose("float16")) == ("float16", False)


def test_cache_off_and_unwritable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(precision.ENV, "off")
    assert precision.remembered_choice({"a": 1}, lambda: "float32") == ("float32", False)
    assert precision.remembered_choice({"a": 1}, lambda: "bfloat16") == ("bfloat16", False)
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(precision.ENV, str(blocker / "sub" / "cache.json"))  # below a file: cannot be made
    assert precision.remembered_choice({"a": 1}, lambda: "float32") == ("float32", False)


def test_colorize_calibrates_once_and_leaves_no_mapping(cache_file: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two set-ups of the same stage calibrate once (when this CPU has a precision to try), and
    the weights, loaded mapped, are copied off the file: it is not mapped once setup returns."""
    from imgflow_colorize import networks
    from imgflow_colorize.stage import Colorize, ColorizeParams, precision_candidates

    torch.manual_seed(0)
    torch.save(networks.build("eccv16").state_dict(), tmp_path / "w.pth")
    calls: list[int] = []
    original = Colorize._calibrate
    monkeypatch.setattr(Colorize, "_calibrate", lambda self, *a: calls.append(1) or original(self, *a))
    for _ in range(2):
        stage = Colorize(ColorizeParams(model="eccv16", model_size=64, weights="w.pth"),
                         StageContext("colorize", pipeline_dir=tmp_path))
        stage.setup(torch.device("cpu"))
        maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
        assert str(tmp_path / "w.pth") not in maps
    assert len(calls) == (1 if precision_candidates(torch.device("cpu")) else 0)


def test_mapped_load_reads_legacy_files_too(tmp_path: Path) -> None:
    state = {"w": torch.arange(6.0).view(2, 3)}
    torch.save(state, tmp_path / "zip.pth")
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for name in ("zip.pth", "legacy.pth"):
        assert torch.equal(models.load_state_dict(tmp_path / name, mmap=True)["w"], state["w"])


class BatchSizes(Stage):
    name = "batch_sizes"
    description = "records the size of the batch each item came in (test stage)"

    class Params(Params):
        pass

    def process(self, batch: Batch) -> Batch:
        for item in batch.items:
            item.results[self.id] = {"batch": len(batch.items)}
        return batch


class _Plugin:
    @hookimpl
    def register_stages(self, register):
        register(BatchSizes)


def test_first_batch_is_one_item(tmp_path: Path, image_folder: Path, imgflow_register) -> None:
    imgflow_register(_Plugin(), name="imgflow-test-batches")
    pipeline = write_pipeline(tmp_path / "p.toml", input=image_folder, output=tmp_path / "out",
                              stages=[{"use": "batch_sizes"}], run={"device": "cpu", "batch_size": 4})
    assert run_pipeline(pipeline).counts["done"] == 6
    sizes = sorted(json.loads(line)["results"]["batch_sizes"]["batch"]
                   for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines())
    assert sizes[0] == 1 and max(sizes) == 4  # one item first, then full batches
