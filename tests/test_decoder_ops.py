"""Stages done by the decode workers (issue 17): a resize/crop pipeline runs without torch in the
main process, and writes what the stages' own 8-bit path writes, within one level."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from imgflow import ImageMeta, StageContext, run_pipeline
from imgflow.io.decoder_ops import DecodedItem, pipeline_ops
from imgflow.io.encode import encode_image, encode_uint8
from imgflow_augment.decoder_ops import CenterCropOp, ResizeOp
from imgflow_augment.stages import CenterCrop, Resize
from tests.helpers import write_pipeline

REPO = Path(__file__).resolve().parents[1]


def stage_path(cls: type, pixels: np.ndarray, **params: object) -> np.ndarray:
    """What the stage's own process() makes of 8-bit pixels (torch), as (H, W, C) uint8."""
    import torch

    from imgflow import Batch, Item

    stage = cls(cls.Params(**params), StageContext(cls.name))
    stage.setup(torch.device("cpu"))
    item = Item(source="x.png", meta=ImageMeta(pixels.shape[1], pixels.shape[0], "RGB", "PNG"),
                uint8=torch.from_numpy(pixels).permute(2, 0, 1))
    with torch.inference_mode():
        out = stage.process(Batch([item])).items[0]
    assert out.uint8 is not None
    return out.uint8.permute(1, 2, 0).contiguous().numpy()


def rgba_photo() -> np.ndarray:
    rgb = skimage.data.astronaut()
    yy, xx = np.mgrid[:rgb.shape[0], :rgb.shape[1]]
    alpha = np.where((yy - 256) ** 2 + (xx - 256) ** 2 < 180**2, 255, (xx // 2) % 256).astype(np.uint8)
    return np.concatenate([rgb, alpha[..., None]], axis=2)


@pytest.mark.parametrize("params", [{"size": 128, "edge": "longer"}, {"size": 300}, {"size": [90, 700]},
                                    {"size": 1024, "edge": "shorter"}])
@pytest.mark.parametrize("name", ["coffee", "camera", "rgba"])
def test_resize_op_is_the_stage_within_one_level(params: dict, name: str) -> None:
    """Shrinking, enlarging and squashing; colour, grey and straight alpha."""
    pixels = rgba_photo() if name == "rgba" else getattr(skimage.data, name)()
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    op = Resize(Resize.Params(**params), StageContext("resize")).decoder_op()
    ours = op.apply(pixels).astype(int)
    theirs = stage_path(Resize, pixels, **params).astype(int)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1
    assert (ours != theirs).mean() < 0.25  # a level apart only where a rounding falls the other way


@pytest.mark.parametrize("size", [[100, 100], [600, 900], [1, 700]])
def test_center_crop_op_is_the_stage_exactly(size: list[int]) -> None:
    pixels = rgba_photo()
    op = CenterCrop(CenterCrop.Params(size=size), StageContext("center_crop")).decoder_op()
    assert np.array_equal(op.apply(pixels), stage_path(CenterCrop, pixels, size=size))


@pytest.mark.parametrize("op", [CenterCropOp((100, 100)), CenterCropOp((600, 900)), CenterCropOp((1, 700)),
                                CenterCropOp((401, 3)), ResizeOp(128, "longer"), ResizeOp((90, 700), "shorter")])
def test_ops_on_pillow_images_equal_ops_on_arrays(op: object) -> None:
    """The decoder runs ops on the Pillow image itself for plain RGB and L files (no export of
    the full image): the same pixels as on the array."""
    for pixels in (skimage.data.coffee(), skimage.data.camera()):
        image = Image.fromarray(pixels)
        rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
        on_image = np.asarray(op.apply_image(image))
        on_image = on_image if on_image.ndim == 3 else np.repeat(on_image[..., None], 3, axis=2)
        assert np.array_equal(on_image, op.apply(rgb))


def test_only_pipelines_the_decoders_can_finish_get_ops() -> None:
    def resize(**params: object) -> Resize:
        return Resize(Resize.Params(**{"size": 64, **params}), StageContext("resize"))

    assert pipeline_ops([resize()], "cpu") == (ResizeOp(64, "shorter"),)
    assert pipeline_ops([resize(), CenterCrop(CenterCrop.Params(size=32), StageContext("c"))], "auto") == (
        ResizeOp(64, "shorter"), CenterCropOp((32, 32)))
    assert pipeline_ops([resize()], "cuda") == ()  # an explicit GPU keeps the stages on it
    assert pipeline_ops([resize(interpolation="bicubic")], "cpu") == ()
    assert pipeline_ops([resize(antialias=False)], "cpu") == ()
    assert pipeline_ops([], "cpu") == ()


def test_decoded_item_encodes_like_an_item() -> None:
    """The writer's two paths for a DecodedItem: straight from 8 bits, and JPEG with alpha."""
    pixels = rgba_photo()[::4, ::4].copy()
    item = DecodedItem("a.png", pixels, ImageMeta(128, 128, "RGBA", "PNG"))
    assert encode_uint8(item.uint8, "png") == encode_uint8(__import__("torch").from_numpy(pixels).permute(2, 0, 1),
                                                          "png")
    assert encode_uint8(item.uint8, "jpeg") is None  # alpha must be flattened: the float path
    flat = Image.open(__import__("io").BytesIO(encode_image(item.image, item.alpha, "jpeg", 95)))
    assert flat.size == (128, 128) and flat.mode == "RGB"


def test_resize_pipeline_runs_without_torch_and_matches_the_stage_path(tmp_path: Path) -> None:
    """A fresh resize run never imports torch in the main process; its outputs are within one
    level of the same pipeline run through the stages (an extra flip forces that path); a 16-bit
    scan in the folder goes through the stages in the same run."""
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(skimage.data.coffee()).save(src / "coffee.png")
    Image.fromarray(rgba_photo()[::2, ::2].copy()).save(src / "rgba.png")
    fast = write_pipeline(tmp_path / "fast.toml", input=src, output=tmp_path / "fast",
                          stages=[{"use": "resize", "size": 100}], out={"format": "png"}, run={"device": "auto"})
    probe = ("import sys, imgflow; r = imgflow.run_pipeline(sys.argv[1]); "
             "print(r.counts['done'], 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe, str(fast)], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "False"]
    manifest = [json.loads(line) for line in (tmp_path / "fast" / "manifest.jsonl").read_text().splitlines()]
    assert {m["meta"]["width"] for m in manifest} == {600, 256}  # meta: the decoded image, before the stages

    slow = write_pipeline(tmp_path / "slow.toml", input=src, output=tmp_path / "slow",
                          stages=[{"use": "resize", "size": 100}, {"use": "flip_horizontal", "p": 0.0}],
                          out={"format": "png"}, run={"device": "cpu"})
    assert run_pipeline(slow).counts["done"] == 2
    for name in ("coffee.png", "rgba.png"):
        a = np.asarray(Image.open(tmp_path / "fast" / name)).astype(int)
        b = np.asarray(Image.open(tmp_path / "slow" / name)).astype(int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1

    Image.fromarray(skimage.data.camera().astype(np.uint16) * 257).save(src / "deep.png")  # I;16
    result = run_pipeline(fast, output=tmp_path / "mixed")
    assert result.counts["done"] == 3
    with Image.open(tmp_path / "mixed" / "deep.png") as deep:
        assert deep.size == (100, 100)
