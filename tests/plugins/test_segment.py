"""Tests for the segment plugin (plugins/imgflow_segment): VOC conventions, the stage, weights.

No network: the networks are built with ``weights = "random"`` (seeded random init) or loaded
from state dicts generated here through the real path (imgflow.models.load_state_dict with the
expected key layout, then strict=True). Images are small (64x96, 80x60) with ``resize`` 64 so
even the ResNet-50 models stay fast on two CPU cores.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from imgflow import StageContext, StageKind, models, plugins
from imgflow.testing import check_stage, make_batch, make_item
from imgflow_segment import MODELS, networks, registry_name
from imgflow_segment.stage import (Segment, SegmentParams, blend_overlay, mask_relpath, network_size,
                                   upsample_argmax)
from imgflow_segment.voc import VOC_CLASSES, class_fractions, encode_mask_png, voc_colormap, voc_palette

REPO = Path(__file__).resolve().parents[2]
SIZES = [(64, 96), (80, 60)]  # (height, width): landscape and portrait, different network sizes


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture
def segment_plugin(imgflow_register):
    """The plugin module registered in-process, unless its entry point already loaded it."""
    import imgflow_segment

    if not plugins.get_plugin_manager().is_registered(imgflow_segment):
        imgflow_register(imgflow_segment, name="segment")
    return imgflow_segment


def make_stage(setup: bool = True, pipeline_dir: Path | None = None, **params) -> Segment:
    params = {"weights": "random", "resize": 64, **params}
    stage = Segment(SegmentParams(**params), StageContext(stage_id="segment", pipeline_dir=pipeline_dir or Path.cwd()))
    if setup:
        stage.setup(torch.device("cpu"))
    return stage


def read_png(data: bytes | Path) -> Image.Image:
    image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    image.load()
    return image


# ---------------------------------------------------------------------------------------------
# VOC conventions
# ---------------------------------------------------------------------------------------------


def test_voc_colour_map_known_entries():
    cmap = voc_colormap()
    assert len(cmap) == 256
    assert cmap[0] == (0, 0, 0)
    assert cmap[1] == (128, 0, 0)  # aeroplane
    assert cmap[2] == (0, 128, 0)
    assert cmap[3] == (128, 128, 0)
    assert cmap[15] == (192, 128, 128)  # person
    assert cmap[20] == (0, 64, 128)  # tvmonitor
    assert cmap[255] == (224, 224, 192)  # the border colour
    assert len(set(cmap[:21])) == 21  # every class distinguishable
    assert voc_palette()[3 * 15:3 * 16] == [192, 128, 128]


def test_voc_class_names():
    assert len(VOC_CLASSES) == 21
    assert VOC_CLASSES[0] == "background" and VOC_CLASSES[15] == "person" and VOC_CLASSES[20] == "tvmonitor"


def test_mask_png_is_lossless_palette_png():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 21, size=(37, 53)).astype(np.uint8)
    labels[0, :5] = 255  # the border index survives too
    labels[1, 1] = 15
    image = read_png(encode_mask_png(labels))
    assert image.format == "PNG" and image.mode == "P" and image.size == (53, 37)
    assert image.getpalette() == voc_palette()
    assert np.array_equal(np.asarray(image), labels)
    rgb = np.asarray(image.convert("RGB"))
    assert tuple(rgb[0, 0]) == (224, 224, 192)
    assert tuple(rgb[1, 1]) == (192, 128, 128)


def test_mask_png_refuses_bad_labels():
    with pytest.raises(ValueError, match="must be"):
        encode_mask_png(np.zeros((2, 3, 1), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        encode_mask_png(np.full((2, 2), 300, dtype=np.int64))


def test_class_fractions_name_present_classes_and_sum_to_one():
    counts = [0] * 21
    counts[0], counts[15], counts[8] = 50, 30, 20
    assert class_fractions(counts) == {"background": 0.5, "person": 0.3, "cat": 0.2}
    assert class_fractions([0] * 21) == {}


# ---------------------------------------------------------------------------------------------
# geometry helpers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 96), (80, 60), (333, 500), (64, 64), (17, 1000)])
def test_network_size_matches_torchvision_resize(size):
    from torchvision.transforms import functional as TF

    h, w = size
    assert network_size(h, w, 64) == tuple(TF.resize(torch.zeros(1, h, w), [64], antialias=True).shape[-2:])


def test_network_input_matches_torchvision_semantic_segmentation_transform():
    from torchvision.transforms._presets import SemanticSegmentation

    stage = make_stage()
    item = make_item(80, 60)
    ours = stage.network_input([item], network_size(80, 60, 64))[0]
    theirs = SemanticSegmentation(resize_size=64)(item.image)
    assert ours.shape == theirs.shape == (3, 85, 64)
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize(("src", "dst"), [((16, 24), (64, 96)), ((85, 64), (80, 60)), ((20, 20), (61, 37))])
def test_upsample_argmax_in_strips_equals_full_interpolation(src, dst):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(21, *src, generator=gen)
    full = F.interpolate(logits.unsqueeze(0), size=dst, mode="bilinear", align_corners=False)[0].argmax(0)
    # 21 x 3 rows x width per strip: many strips, the last one partial
    strips = upsample_argmax(logits, *dst, max_elements=21 * 3 * dst[1])
    assert strips.shape == dst and strips.dtype == torch.int64
    assert torch.equal(strips, full)
    assert torch.equal(upsample_argmax(logits, *dst), full)  # one strip


def test_overlay_blends_classes_and_keeps_background():
    image = torch.full((3, 4, 5), 0.2)
    labels = torch.zeros(4, 5, dtype=torch.int64)
    labels[1, 2] = 15  # person: (192, 128, 128)
    out = blend_overlay(image, labels, 0.5)
    assert out.shape == image.shape and out.dtype == torch.float32
    expected = 0.5 * 0.2 + 0.5 * torch.tensor([192, 128, 128]) / 255
    assert torch.allclose(out[:, 1, 2], expected)
    keep = labels == 0
    assert torch.equal(out[:, keep], image[:, keep])
    assert torch.equal(blend_overlay(image, labels, 0.0), image)


def test_mask_relpath_mirrors_the_input_tree():
    assert mask_relpath(make_item(source="a/b/photo.jpg")) == "masks/a/b/photo.png"
    assert mask_relpath(make_item(source="x.y.tif")) == "masks/x.y.png"
    child = make_item(source="c.png").derive(torch.zeros(3, 2, 2), "_aug1")
    assert mask_relpath(child) == "masks/c_aug1.png"


# ---------------------------------------------------------------------------------------------
# parameters, fingerprint, import cost
# ---------------------------------------------------------------------------------------------


def test_params_defaults_and_validation():
    p = SegmentParams()
    assert (p.model, p.resize, p.mask, p.overlay, p.alpha, p.weights) == (
        "lraspp_mobilenet_v3_large", 520, True, True, 0.5, None)
    for bad in ({"model": "deeplabv3"}, {"alpha": 1.5}, {"resize": 8}, {"weights": " "}, {"colour": 1}):
        with pytest.raises(pydantic.ValidationError):
            SegmentParams(**bad)
    assert Segment.kind is StageKind.SEGMENT and Segment.name == "segment"


def test_fingerprint_names_the_weights(tmp_path, segment_plugin):
    default = make_stage(setup=False, weights=None)
    assert default.fingerprint() == {"weights": "segment-lraspp_mobilenet_v3_large@d234d4ea"}
    fcn = make_stage(setup=False, weights=None, model="fcn_resnet50")
    assert fcn.fingerprint() == {"weights": "segment-fcn_resnet50@1167a1af"}
    assert make_stage(setup=False).fingerprint() == {"weights": "random@0", "untrained": True}
    (tmp_path / "mine.pth").write_bytes(b"12345")
    custom = make_stage(setup=False, weights="mine.pth", pipeline_dir=tmp_path).fingerprint()
    assert custom["weights"] == str(tmp_path / "mine.pth") and custom["size"] == 5
    url = "https://example.org/seg-0123abcd.pth"
    assert make_stage(setup=False, weights=url).fingerprint() == {"weights": url}


def test_importing_the_plugin_and_stage_module_does_not_import_torch():
    code = ("import sys, imgflow_segment, imgflow_segment.stage; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---------------------------------------------------------------------------------------------
# weights: registry and strict loading
# ---------------------------------------------------------------------------------------------


def test_registered_urls_equal_torchvision_weights_enums(segment_plugin):
    from torchvision.models import segmentation as seg

    enums = {
        "fcn_resnet50": seg.FCN_ResNet50_Weights,
        "deeplabv3_resnet50": seg.DeepLabV3_ResNet50_Weights,
        "deeplabv3_mobilenet_v3_large": seg.DeepLabV3_MobileNet_V3_Large_Weights,
        "lraspp_mobilenet_v3_large": seg.LRASPP_MobileNet_V3_Large_Weights,
    }
    assert set(MODELS) == set(enums) == set(networks.ARCHITECTURES)
    for model, enum in enums.items():
        official = enum.COCO_WITH_VOC_LABELS_V1
        assert MODELS[model][0] == official.url, model
        assert official.meta["categories"][1:] == list(VOC_CLASSES[1:])  # theirs: "__background__"
        spec = models.get(registry_name(model))
        assert spec.url == official.url and spec.stage == "segment"
        assert spec.approx_size == round(official.meta["_file_size"] * 2**20)  # what models list shows
        assert spec.sha256_prefix == official.url.rsplit("-", 1)[1].removesuffix(".pth")


@pytest.mark.parametrize("model", networks.ARCHITECTURES)
def test_strict_load_of_the_official_key_layout(model, tmp_path):
    torch.manual_seed(1)
    source = networks.build(model)
    torch.manual_seed(2)
    target = networks.build(model)
    state = source.state_dict()
    assert any(k.startswith("aux_classifier.") for k in state) == networks.AUX_LOSS[model]
    assert state["classifier.4.weight" if model != "lraspp_mobilenet_v3_large" else "classifier.high_classifier.weight"].shape[0] == 21
    torch.save(state, tmp_path / "w.pth")
    loaded = models.load_state_dict(tmp_path / "w.pth", expected=networks.expected_shapes(target))
    target.load_state_dict(loaded, strict=True)
    for key, value in target.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_stage_loads_a_checkpoint_file_strictly_and_uses_it(tmp_path):
    """A saved copy of the seed-0 network, loaded through setup(), labels exactly as "random"."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(networks.build("deeplabv3_mobilenet_v3_large").state_dict(), tmp_path / "dl.pth")
    loaded = make_stage(model="deeplabv3_mobilenet_v3_large", weights="dl.pth", pipeline_dir=tmp_path)
    assert loaded.net.aux_classifier is None  # loaded strictly with it, dropped for inference
    random = make_stage(model="deeplabv3_mobilenet_v3_large")
    a = loaded.process(make_batch(SIZES))
    b = random.process(make_batch(SIZES))
    for x, y in zip(a.items, b.items, strict=True):
        assert x.artifacts[0].data == y.artifacts[0].data
        assert x.results["segment"]["classes"] == y.results["segment"]["classes"]
        # which weights made the labels is recorded, as by the other model stages (issue 10, item 19)
        assert x.results["segment"]["weights"] == str(tmp_path / "dl.pth")
        assert y.results["segment"]["weights"] == "random@0 (untrained)"


def test_wrong_checkpoint_names_the_file_and_what_differs(tmp_path):
    torch.save(networks.build("lraspp_mobilenet_v3_large").state_dict(), tmp_path / "lraspp.pth")
    stage = make_stage(setup=False, model="deeplabv3_mobilenet_v3_large", weights="lraspp.pth",
                       pipeline_dir=tmp_path)
    with pytest.raises(models.StateDictMismatch) as info:
        stage.setup(torch.device("cpu"))
    text = str(info.value)
    assert str(tmp_path / "lraspp.pth") in text and "missing keys" in text and "fix:" in text


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------


def test_stage_contract_and_outputs_per_item():
    out = check_stage(Segment, {"weights": "random", "resize": 64}, make_batch(SIZES))
    for item, (h, w) in zip(out.items, SIZES, strict=True):
        assert item.image.shape == (3, h, w) and item.write_image
        (art,) = item.artifacts
        assert art.relpath == mask_relpath(item)
        mask = np.asarray(read_png(art.data))
        assert mask.shape == (h, w) and int(mask.max()) < 21
        result = item.results["segment"]
        assert result["model"] == "lraspp_mobilenet_v3_large"
        assert sum(result["classes"].values()) == pytest.approx(1.0)
        # the fractions are the mask's own class counts
        counts = np.bincount(mask.ravel(), minlength=21)
        assert result["classes"] == {VOC_CLASSES[i]: c / mask.size for i, c in enumerate(counts) if c}


def test_mask_equals_the_argmax_labels_exactly():
    stage = make_stage(model="fcn_resnet50")
    item = make_item(*SIZES[0])
    size = network_size(*SIZES[0], 64)
    with torch.inference_mode():
        logits = stage.predict([item], size)[0]
        expected = F.interpolate(logits.unsqueeze(0), size=SIZES[0], mode="bilinear",
                                 align_corners=False)[0].argmax(0)
        stage.process(make_batch([SIZES[0]]).with_items([item]))
    mask = np.asarray(read_png(item.artifacts[0].data))
    assert len(np.unique(mask)) > 1  # a real test: several classes, so the placement matters
    assert np.array_equal(mask, expected.numpy())


def test_items_of_one_network_size_share_a_forward_pass():
    stage = make_stage()
    calls = []
    handle = stage.net.register_forward_hook(lambda _m, args, _o: calls.append(tuple(args[0].shape)))
    try:
        # 64x96 and 128x192 both become 64x96 for the network; 80x60 becomes 85x64
        stage.process(make_batch([(64, 96), (80, 60), (128, 192)]))
    finally:
        handle.remove()
    assert sorted(calls) == [(1, 3, 85, 64), (2, 3, 64, 96)]


def test_overlay_and_mask_switches():
    only_mask = make_stage(overlay=False).process(make_batch(SIZES))
    for item in only_mask.items:
        assert item.write_image is False and len(item.artifacts) == 1
    no_mask = make_stage(mask=False).process(make_batch(SIZES))
    for item in no_mask.items:
        assert item.write_image is True and item.artifacts == []
        assert "segment" in item.results


# ---------------------------------------------------------------------------------------------
# end to end through the CLI
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", networks.ARCHITECTURES)
def test_cli_run_writes_masks_overlays_and_fractions(model, tmp_path, segment_plugin):
    from click.testing import CliRunner

    from imgflow.cli import cli
    from tests.helpers import write_pipeline

    images = tmp_path / "in"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(3)
    inputs = {"wide.png": SIZES[0], "sub/tall.jpg": SIZES[1]}
    for rel, (h, w) in inputs.items():
        pixels = (np.linspace(0, 255, w)[None, :, None] + rng.normal(0, 40, (h, w, 3))).clip(0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(images / rel)
    out = tmp_path / "out"
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=out,
                          stages=[{"use": "segment", "model": model, "weights": "random", "resize": 64}],
                          out={"format": "png"}, run={"batch_size": 2, "device": "cpu"})
    result = CliRunner().invoke(cli, ["run", str(pipe)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = {r["input"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert sorted(records) == sorted(inputs)
    for rel, (h, w) in inputs.items():
        stem = rel.rsplit(".", 1)[0]
        record = records[rel]
        assert record["status"] == "done"
        assert sorted(record["outputs"]) == sorted([f"{stem}.png", f"masks/{stem}.png"])
        mask = read_png(out / "masks" / f"{stem}.png")
        assert mask.mode == "P" and mask.size == (w, h)
        assert mask.getpalette() == voc_palette()
        labels = np.asarray(mask)
        assert int(labels.max()) < 21
        overlay = read_png(out / f"{stem}.png")
        assert overlay.size == (w, h)
        found = record["results"]["segment"]
        assert found["model"] == model
        assert sum(found["classes"].values()) == pytest.approx(1.0)
        assert set(found["classes"]) == {VOC_CLASSES[i] for i in np.unique(labels)}


def test_shipped_pipeline_validates_without_weights(tmp_path, monkeypatch, segment_plugin):
    """validate checks the pipeline on a machine that has no weights and no network."""
    from click.testing import CliRunner

    from imgflow.cli import cli

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    pipeline = REPO / "pipelines" / "segment_scenes.toml"
    assert pipeline.read_text().startswith("#")
    result = CliRunner().invoke(cli, ["validate", str(pipeline)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "empty-torch-home").exists()  # nothing was downloaded
    bad = CliRunner().invoke(cli, ["validate", str(pipeline), "-p", "segment.alpha=2"])
    assert bad.exit_code == 2 and "alpha" in bad.output
