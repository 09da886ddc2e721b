"""The run's memory budget and 8-bit pixels (issue 10, item 3).

The budget: a bounded prefetch queue, reservations that bound what a whole run holds, an image
whose own working set cannot fit failing alone with ``memory_budget``, and no deadlock when the
budget admits one image at a time. 8-bit pixels: kept uint8 until a stage needs floats, the
geometric augmenters working on them within 1/255 of the float path, and the writer encoding
them to the same bytes.
"""

from __future__ import annotations

import io
import json
import queue
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from imgflow import memory
from imgflow.batch import Batch, ImageMeta, Item
from imgflow.cli import cli
from imgflow.engine.footprint import item_peak_bytes
from imgflow.io import modes
from imgflow.io.decode import decode_cost
from imgflow.io.encode import encode_image, encode_uint8
from imgflow.io.prefetch import ByteBoundedQueue
from imgflow.memory import ImageShape, MemoryBudget
from imgflow.stage import StageContext
from imgflow.testing import write_images
from tests.helpers import write_pipeline

MIB = 1024 * 1024


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


class _Pixels:
    def __init__(self, nbytes: int) -> None:
        self.pixels = np.empty(nbytes, np.uint8)


# --------------------------------------------------------------------------- the budget itself


def test_the_prefetch_queue_never_holds_a_second_image_over_its_bound():
    q = ByteBoundedQueue(max_bytes=100)
    q.put(("a", _Pixels(300), 0.0))  # larger than the whole bound: let in while the queue is empty
    with pytest.raises(queue.Full):
        q.put(("b", _Pixels(300), 0.0), timeout=0.05)
    q.get()
    q.put(("b", _Pixels(300), 0.0), timeout=0.05)


def test_reservations_take_shrink_and_give_back():
    budget = MemoryBudget(100)
    first = budget.try_reserve(70)
    assert first is not None and budget.try_reserve(40) is None
    first.resize(50)
    second = budget.try_reserve(40)
    assert second is not None and budget.held == 90 and budget.peak == 110 - 20
    first.release()
    second.release()
    first.release()  # idempotent
    assert budget.held == 0 and not budget.fits(101)


def test_the_default_budget_is_derived_from_the_machine(monkeypatch):
    monkeypatch.setattr(memory.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    monkeypatch.setattr(memory, "machine_memory_bytes", lambda: 64 * 1024 * MIB)
    assert memory.default_max_memory_mb() == 4 * memory.PER_CORE_MB
    monkeypatch.setattr(memory, "machine_memory_bytes", lambda: 2 * 1024 * MIB)  # a small box
    assert memory.default_max_memory_mb() == 512
    assert memory.budget_mb(300) == 300 and memory.budget_mb(None) == 512


def _stage(name: str, **params):
    from imgflow.plugins import stage_registry

    cls = stage_registry()[name].cls
    return cls(cls.Params(**params), StageContext(stage_id=name))


def test_an_item_footprint_follows_its_pixels_through_the_stages():
    bomb = ImageShape(height=10_000, width=10_000, channels=3, itemsize=1)
    shrink = _stage("resize", size=1024, edge="longer")
    jitter = _stage("color_jitter", brightness=0.3)
    uint8_only = item_peak_bytes([shrink], bomb)
    assert bomb.nbytes <= uint8_only < 1.1 * bomb.nbytes  # the pixels, plus a small output
    # a float stage after the resize converts only the small image; before it, the whole bomb
    assert item_peak_bytes([shrink, jitter], bomb) < 1.25 * bomb.nbytes
    assert item_peak_bytes([jitter, shrink], bomb) > 4 * 4 * bomb.nbytes
    assert item_peak_bytes([_stage("augment", copies=4, ops=[{"op": "flip_horizontal"}])], bomb) >= 4 * bomb.nbytes


def test_the_header_gives_the_cost_without_decoding_the_pixels(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGBA", (3000, 2000), (1, 2, 3, 4)).save(path)
    with Image.open(path) as im:
        cost = decode_cost(im)
        assert im.tile, "decode_cost must not load the pixels"
    assert cost.shape == ImageShape(height=2000, width=3000, channels=4, itemsize=1)
    assert cost.worker_bytes >= 3000 * 2000 * (4 + 2 * 4)


# --------------------------------------------------------------------------- runs under a budget


def _bomb(path: Path, side: int) -> None:
    Image.new("RGB", (side, side), (200, 120, 40)).save(path)


def test_an_image_that_cannot_fit_the_budget_fails_alone_and_runs_again_when_raised(tmp_path, test_plugin):
    images = tmp_path / "in"
    write_images(images, 2, size=(40, 60), fmt="PNG")
    _bomb(images / "bomb.png", 3000)  # 62 KB on disk, 27 MB of pixels, 108 MB as floats
    out = tmp_path / "out"

    def pipeline(budget_mb: int) -> Path:
        return write_pipeline(tmp_path / "p.toml", input=images, output=out, stages=[{"use": "invert"}],
                              out={"format": "png"}, run={"workers": 1, "max_memory_mb": budget_mb})

    code, text = invoke("run", pipeline(64))
    assert code == 1 and "2 done, 1 failed" in text, text
    records = {r["input"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    error = records["bomb.png"]["error"]
    assert error["code"] == "memory_budget", error
    assert "3000x3000" in error["message"] and "max_memory_mb = 64" not in error["message"]
    assert "more than the 64 MB one image may use" in error["message"]
    assert "fix: raise [run] max_memory_mb" in error["message"]
    code, text = invoke("run", pipeline(1024))  # the limit behind the failure changed: it alone reruns
    assert code == 0 and "1 done, 0 failed, 2 skipped" in text, text


def test_with_the_default_budget_an_image_larger_than_it_runs_alone(tmp_path, test_plugin, monkeypatch):
    # The default bounds what is in flight; it is not a cap on one image (a configured value is):
    # an image over it waits until nothing else holds memory and runs alone, up to half the RAM.
    import imgflow.memory as memory

    monkeypatch.setattr(memory, "default_max_memory_mb", lambda: 64)
    budget = memory.run_budget(None)
    assert budget.capacity == 64 * memory.MIB and budget.ceiling >= 64 * memory.MIB
    assert memory.run_budget(64).ceiling == 64 * memory.MIB  # configured: a hard limit
    big = budget.ceiling - 1
    held = budget.try_reserve(32 * memory.MIB)
    assert held is not None and budget.fits(big) and budget.try_reserve(big) is None  # waits...
    held.release()
    alone = budget.try_reserve(big)  # ...then runs alone
    assert alone is not None and budget.try_reserve(1) is None
    alone.release()

    images = tmp_path / "in"
    write_images(images, 2, size=(40, 60), fmt="PNG")
    _bomb(images / "bomb.png", 3000)  # 108 MB as floats: over the 64 MB default here
    out = tmp_path / "out"
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=out, stages=[{"use": "invert"}],
                          out={"format": "png"}, run={"workers": 1})
    code, text = invoke("run", pipe)
    assert code == 0 and "3 done, 0 failed" in text, text


def test_a_budget_for_one_image_at_a_time_still_finishes_every_batch(tmp_path, test_plugin, monkeypatch):
    budgets: list[MemoryBudget] = []
    original = MemoryBudget.__init__

    def spy(self, capacity_bytes: int) -> None:
        original(self, capacity_bytes)
        budgets.append(self)

    monkeypatch.setattr(MemoryBudget, "__init__", spy)
    images = tmp_path / "in"
    write_images(images, 5, size=(640, 800), fmt="PNG")
    need = item_peak_bytes([_stage("invert")], ImageShape(640, 800, 3, 1))
    budget_mb = -(-need * 3 // 2 // MIB)  # one image's peak fits; two never do
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out", stages=[{"use": "invert"}],
                          out={"format": "png"}, run={"workers": 2, "batch_size": 4, "max_memory_mb": budget_mb})
    code, text = invoke("run", pipe)
    assert code == 0 and "5 done, 0 failed" in text, text
    (budget,) = budgets
    assert budget.peak <= budget.capacity, "the run held more than its budget"
    assert budget.held == 0, "every reservation is given back once its item is recorded"


# --------------------------------------------------------------------------- 8-bit pixels


def _pixels(height: int, width: int, channels: int, seed: int = 0) -> torch.Tensor:
    """Random uint8 (C, H, W) pixels as the decoder hands them over: a channels-last view."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (height, width, channels), dtype=np.uint8)).permute(2, 0, 1)


def _items(pixels: torch.Tensor) -> tuple[Item, Item]:
    meta = ImageMeta(width=pixels.shape[2], height=pixels.shape[1], mode="RGB", format="PNG")
    as_float = pixels.float() / 255
    floats = Item(source="a.png", image=as_float[:3].contiguous(), meta=meta,
                  alpha=as_float[3:4].contiguous() if pixels.shape[0] == 4 else None)
    return Item(source="a.png", uint8=pixels, meta=meta), floats


def test_an_8bit_item_converts_once_on_first_float_access():
    pixels = _pixels(5, 7, 4)
    item, floats = _items(pixels)
    assert item.size == (5, 7) and item.uint8 is pixels
    assert torch.allclose(item.image, floats.image, atol=1e-6) and torch.allclose(item.alpha, floats.alpha, atol=1e-6)
    assert item.uint8 is None and item.image.dtype == torch.float32
    replaced, _ = _items(pixels)
    replaced.image = torch.zeros(3, 5, 7)  # a stage that writes without reading keeps the alpha
    assert torch.allclose(replaced.alpha, floats.alpha, atol=1e-6)


GEOMETRIC = [
    ("flip_horizontal", {"p": 1.0}, 0),
    ("flip_vertical", {"p": 1.0}, 0),
    ("center_crop", {"size": [40, 90]}, 0),
    ("resize", {"size": 23, "edge": "longer"}, 1),
    ("resize", {"size": [50, 70]}, 1),
    ("resize", {"size": 20, "interpolation": "nearest"}, 0),
    ("random_resized_crop", {"size": [24, 24]}, 1),
    ("augment", {"copies": 2, "ops": [{"op": "flip_horizontal"}, {"op": "random_resized_crop", "size": 16}]}, 1),
]


@pytest.mark.parametrize(("name", "params", "tolerance"), GEOMETRIC, ids=[g[0] + str(i) for i, g in enumerate(GEOMETRIC)])
@pytest.mark.parametrize("channels", [3, 4])
def test_geometric_stages_on_8bit_pixels_match_the_float_path(name, params, tolerance, channels):
    stage = _stage(name, **params)
    assert stage.works_on_uint8
    assert not _stage("resize", size=20, interpolation="bicubic").works_on_uint8  # > 1 level off: floats
    as_uint8, as_float = _items(_pixels(48, 64, channels, seed=channels))
    out8 = stage.process(Batch([as_uint8]))
    outf = stage.process(Batch([as_float]))
    assert len(out8.items) == len(outf.items)
    for a, b in zip(out8.items, outf.items, strict=True):
        assert a.uint8 is not None and a.uint8.dtype == torch.uint8, "no float copy was made"
        reference = torch.cat([b.image, b.alpha]) if channels == 4 else b.image
        levels = (reference.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        assert a.uint8.shape == levels.shape
        assert int((a.uint8.int() - levels.int()).abs().max()) <= tolerance, name


@pytest.mark.parametrize(("fmt", "depth"), [("png", 8), ("png", 16), ("tiff", 8), ("tiff", 16), ("webp", 8), ("jpeg", 8)])
def test_the_writer_encodes_8bit_pixels_to_the_bytes_of_the_float_path(fmt, depth):
    for channels in (3, 4):
        item, floats = _items(_pixels(12, 10, channels, seed=channels))
        data = encode_uint8(item.uint8, fmt, 90, depth)
        if fmt == "jpeg" and channels == 4:
            assert data is None  # flattening onto white needs arithmetic: the float path does it
            continue
        assert data == encode_image(floats.image, floats.alpha, fmt, 90, depth), (fmt, depth, channels)


def test_a_resize_run_writes_what_the_float_path_wrote_within_one_level(tmp_path):
    images = tmp_path / "in"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (90, 120, 4), dtype=np.uint8)).save(images.mkdir() or images / "a.png")
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out",
                          stages=[{"use": "resize", "size": 50}], out={"format": "png"}, run={"workers": 1})
    code, text = invoke("run", pipe)
    assert code == 0, text
    written = np.asarray(Image.open(tmp_path / "out" / "a.png")).astype(int)
    _, floats = _items(torch.from_numpy(np.array(Image.open(images / "a.png"))).permute(2, 0, 1))
    reference = _stage("resize", size=50).process(Batch([floats])).items[0]
    expected = Image.open(io.BytesIO(encode_image(reference.image, reference.alpha, "png")))
    assert written.shape == (50, 66, 4)
    assert np.abs(written - np.asarray(expected).astype(int)).max() <= 1


@pytest.mark.parametrize(("mode", "convert"), [("RGB", None), ("RGBA", None), ("L", None), ("1", "L"),
                                               ("P", "RGB"), ("PT", "RGBA")])
def test_pixels_copied_out_in_strips_equal_the_whole_image_copy(monkeypatch, mode, convert):
    monkeypatch.setattr(modes, "STRIP_BYTES", 4 * 37 * 7)  # 7 rows per strip
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 256, (50, 37, 3), dtype=np.uint8)).convert(mode.rstrip("T"))
    if mode == "PT":
        im.info["transparency"] = 5
    whole = np.asarray(im.convert(convert) if convert else im)
    if whole.ndim == 2:
        whole = np.repeat(whole[..., None], 3, axis=2)
    assert np.array_equal(modes._in_strips(im, whole.shape[2], convert), whole)


def test_the_plugin_kit_holds_a_uint8_stage_to_its_word():
    from imgflow import Stage
    from imgflow.plugins import stage_registry
    from imgflow.testing import check_stage, make_batch

    batch = make_batch([(24, 32), (20, 20)], alpha=True)
    check_stage(stage_registry()["resize"].cls, {"size": 12}, batch)  # includes the 8-bit check

    class Claims(Stage):
        name = "claims"
        works_on_uint8 = True

        def process(self, batch):
            for item in batch.items:
                item.image = item.image * 0.5  # reads floats: the declaration is false
            return batch

    with pytest.raises(AssertionError, match="converted to float although works_on_uint8"):
        check_stage(Claims, {}, batch)


def test_the_shipped_augment_pipeline_reserves_for_its_crops_not_for_four_full_copies():
    import tomllib

    spec = tomllib.loads((Path(__file__).parents[1] / "pipelines" / "augment_dataset.toml").read_text())["stages"][0]
    augment = _stage("augment", copies=spec["copies"], ops=spec["ops"])
    assert augment.output_shape(3000, 4000) == (200, 200, 4)
    photo = ImageShape(height=3000, width=4000, channels=3, itemsize=1)  # 12 MP: 36 MB, 144 MB as floats
    assert item_peak_bytes([augment], photo) < 6 * photo.nbytes  # fits the smallest default budget


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("name", "params", "tolerance"), GEOMETRIC, ids=[g[0] + str(i) for i, g in enumerate(GEOMETRIC)])
def test_8bit_items_on_cuda_match_the_cpu_within_one_level(name, params, tolerance):
    """place() moves 8-bit pixels as they are; on CUDA, resampling converts them there."""
    from imgflow.engine.chain import place

    cpu, _ = _items(_pixels(48, 64, 4, seed=7))
    gpu, _ = _items(_pixels(48, 64, 4, seed=7))
    batch = place(Batch([gpu]), torch.device("cuda"))
    assert batch.items[0].uint8 is not None and batch.items[0].uint8.is_cuda
    stage = _stage(name, **params)
    on_cpu = stage.process(Batch([cpu])).items
    on_gpu = stage.process(batch).items
    for a, b in zip(on_cpu, on_gpu, strict=True):
        levels = b.uint8 if b.uint8 is not None else (torch.cat([b.image, b.alpha]).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        assert int((a.uint8.int() - levels.cpu().int()).abs().max()) <= tolerance, name
