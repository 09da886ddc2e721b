"""Tests for the colorize plugin (plugins/imgflow_colorize): networks, stage, hints, weights.

No network: weights are random state dicts generated here and loaded through the real path
(imgflow.models.load_state_dict, strict=True). Random weights predict almost no chroma, so the
``vivid`` checkpoints add a constant offset to the output layer (about a = +33, b = -22): the
colour is then plainly visible and the tests can tell a colorized pixel from a grey one.
Most tests use model_size 64 to stay fast on two CPU cores.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

from imgflow import Batch, ConfigError, ImageMeta, Item, ItemError, StageContext, StageKind
from imgflow import models, plugins
from imgflow.testing import check_stage, make_batch, make_item
from imgflow_colorize import MODELS, lab, networks
from imgflow_colorize.stage import Colorize, ColorizeParams, model_side, read_hints

REPO = Path(__file__).resolve().parents[2]
COUNTS = {"eccv16": (82, 32_236_011), "siggraph17": (107, 34_187_027)}
SHAPES = {
    "eccv16": {
        "model1.0.weight": (64, 1, 3, 3),
        "model1.4.running_var": (64,),
        "model3.6.num_batches_tracked": (),
        "model5.0.weight": (512, 512, 3, 3),
        "model8.0.weight": (512, 256, 4, 4),
        "model8.6.weight": (313, 256, 1, 1),
        "model8.6.bias": (313,),
        "model_out.weight": (2, 313, 1, 1),
    },
    "siggraph17": {
        "model1.0.weight": (64, 4, 3, 3),
        "model4.6.weight": (512,),
        "model8up.0.weight": (512, 256, 4, 4),
        "model8.1.weight": (256, 256, 3, 3),
        "model8.5.running_mean": (256,),
        "model9up.0.weight": (256, 128, 4, 4),
        "model9.3.weight": (128,),
        "model10up.0.weight": (128, 128, 4, 4),
        "model10.1.weight": (128, 128, 3, 3),
        "model3short8.0.weight": (256, 256, 3, 3),
        "model2short9.0.weight": (128, 128, 3, 3),
        "model1short10.0.weight": (128, 64, 3, 3),
        "model_class.0.weight": (529, 256, 1, 1),
        "model_out.0.weight": (2, 128, 1, 1),
        "model_out.0.bias": (2,),
    },
}
OFFSET = (0.3, -0.2)  # ab / 110 added by the vivid checkpoints' output layer


def random_state(model: str, seed: int = 0, vivid: bool = True) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = networks.build(model).state_dict()
    if vivid:
        offset = torch.tensor(OFFSET)
        if model == "eccv16":  # the 1x1 decoder maps a distribution to ab: shift every bin
            state["model_out.weight"] += offset.view(2, 1, 1, 1)
        else:
            state["model_out.0.bias"] += offset
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """One saved vivid checkpoint per model."""
    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for model in COUNTS:
        paths[model] = folder / f"{model}.pth"
        torch.save(random_state(model), paths[model])
    return paths


def stage_for(weights: dict[str, Path], model: str = "siggraph17", *, pipeline_dir: Path | None = None,
              setup: bool = True, **params) -> Colorize:
    # float32 unless a test asks otherwise: the exactness tests below compare to 1e-5, which a
    # reduced precision (bfloat16 on CPUs that have it natively) is not meant to meet
    params = {"model": model, "model_size": 64, "weights": str(weights[model]), "autocast": "off", **params}
    context = StageContext(stage_id="colorize", pipeline_dir=pipeline_dir or Path.cwd())
    stage = Colorize(ColorizeParams(**params), context)
    if setup:
        stage.setup(torch.device("cpu"))
    return stage


@pytest.fixture(scope="module")
def stages(weights):
    """Set-up stages shared by the tests of this module (process() does not change a stage)."""
    cache: dict[tuple, Colorize] = {}

    def get(model: str = "siggraph17", **params) -> Colorize:
        key = (model, tuple(sorted(params.items())))
        if key not in cache:
            cache[key] = stage_for(weights, model, **params)
        return cache[key]

    return get


def run(stage: Colorize, batch: Batch) -> Batch:
    with torch.inference_mode():
        return stage.process(batch)


def grey_item(h: int, w: int, source: str = "grey.png", lo: float = 0.3, hi: float = 0.65, **meta) -> Item:
    """A mid-tone grey image (three equal channels, as the decoder delivers grey files)."""
    ys = torch.linspace(lo, hi, h).view(h, 1)
    xs = torch.linspace(0, 1, w).view(1, w)
    plane = (ys + 0.05 * torch.sin(xs * 12)).clamp(0, 1)
    image = plane.expand(3, h, w).contiguous()
    info = {"width": w, "height": h, "mode": "L", "format": "PNG", **meta}
    return Item(source=source, image=image, meta=ImageMeta(**info))


def chroma(image: torch.Tensor) -> torch.Tensor:
    ab = lab.rgb2lab(image)[1:]
    return ab.pow(2).sum(0).sqrt()


# ---------------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nets() -> dict[str, torch.nn.Module]:
    """One randomly initialised network per model, in eval mode."""
    torch.manual_seed(0)
    return {model: networks.build(model).eval() for model in COUNTS}


@pytest.mark.parametrize("model", sorted(COUNTS))
def test_state_dict_has_the_official_keys_counts_and_shapes(model, nets, tmp_path):
    net = nets[model]
    state = net.state_dict()
    entries, params = COUNTS[model]
    assert len(state) == entries
    assert sum(p.numel() for p in net.parameters()) == params
    for key, shape in SHAPES[model].items():
        assert tuple(state[key].shape) == shape, key
    # saved and reloaded into a fresh network with strict=True: every tensor comes back
    torch.save(state, tmp_path / "w.pth")
    loaded = models.load_state_dict(tmp_path / "w.pth")
    with torch.device("meta"):
        fresh = networks.build(model)
    fresh.load_state_dict(loaded, strict=True, assign=True)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("model", sorted(COUNTS))
def test_networks_return_ab_at_the_input_size(model, nets):
    x = torch.rand(1, networks.input_channels(model), 72, 72) - 0.5  # a multiple of 8, not of 16
    with torch.inference_mode():
        out = nets[model](x)
    assert out.shape == (1, 2, 72, 72)
    if model == "siggraph17":  # tanh regression
        assert float(out.abs().max()) <= 1.0


def test_eccv16_output_is_a_mixture_of_the_decoder_bins(nets):
    """softmax + 1x1 conv + bilinear upsampling: each ab is a convex mix of the bin vectors."""
    net = copy.deepcopy(nets["eccv16"])
    with torch.inference_mode():
        net.model_out.weight.copy_(torch.randn(2, 313, 1, 1) * 2)
        out = net(torch.rand(1, 1, 64, 64) - 0.5)
    bins = net.model_out.weight.detach().view(2, 313)
    spread = out.amax(dim=(0, 2, 3)) - out.amin(dim=(0, 2, 3))
    for c in range(2):
        assert float(out[:, c].min()) >= float(bins[c].min()) - 1e-5
        assert float(out[:, c].max()) <= float(bins[c].max()) + 1e-5
        assert float(spread[c]) > 0  # not a constant: the softmax weights vary per pixel


def test_siggraph17_runs_its_decoder_once_and_skips_model_class(nets):
    net = nets["siggraph17"]
    calls = {"model9": 0, "model10": 0, "model_out": 0, "model_class": 0}
    handles = [getattr(net, name).register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
               for name in calls]
    try:
        with torch.inference_mode():
            net(torch.zeros(1, 4, 64, 64))
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"model9": 1, "model10": 1, "model_out": 1, "model_class": 0}


# ---------------------------------------------------------------------------------------------
# parameters and construction
# ---------------------------------------------------------------------------------------------


def test_params_are_validated():
    assert ColorizeParams().model == "siggraph17" and ColorizeParams().model_size == 256
    for bad in ({"model_size": 32}, {"saturation": -1}, {"model": "eccv17"}, {"mode": "both"},
                {"autocast": "fp16"}, {"hint_radius": -1}, {"weights": " "}):
        with pytest.raises(pydantic.ValidationError):
            ColorizeParams(**bad)
    with pytest.raises(pydantic.ValidationError, match="siggraph17"):
        ColorizeParams(model="eccv16", hints="hints")


def test_model_size_is_rounded_up_to_a_multiple_of_8():
    assert [model_side(s) for s in (64, 65, 100, 256)] == [64, 72, 104, 256]


def test_init_does_no_io(tmp_path):
    """validate must work anywhere: a missing weights file and hints folder are fine until setup."""
    stage = Colorize(ColorizeParams(weights="nowhere/w.pth", hints="no/such/folder"),
                     StageContext(stage_id="c", pipeline_dir=tmp_path))
    assert stage.net is None
    assert stage.weights_source() == tmp_path / "nowhere" / "w.pth"
    assert stage.fingerprint() == {"weights": str(tmp_path / "nowhere" / "w.pth"), "missing": True}
    with pytest.raises(ConfigError, match="nowhere/w.pth"):
        stage.setup(torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# the stage on batches
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(COUNTS))
def test_check_stage_contract_on_mixed_sizes(weights, model):
    params = {"model": model, "model_size": 64, "weights": str(weights[model])}
    out = check_stage(Colorize, params, make_batch([(40, 56), (64, 64), (23, 31)]))
    assert [tuple(i.image.shape) for i in out.items] == [(3, 40, 56), (3, 64, 64), (3, 23, 31)]
    for item in out.items:
        result = item.results["colorize"]
        assert {k: v for k, v in result.items() if k != "precision"} == {
            "model": model, "model_size": 64, "hints": 0, "weights": str(weights[model])}
        assert result["precision"] in ("float32", "bfloat16")


@pytest.mark.parametrize("model", sorted(COUNTS))
def test_mixed_size_batch_equals_one_item_at_a_time(model, stages):
    stage = stages(model)
    sizes = [(40, 56), (23, 31), (90, 33)]
    together = run(stage, make_batch(sizes))
    for i, size in enumerate(sizes):
        alone = run(stage, Batch([make_item(*size, source=f"img{i}.png", seed=i)]))
        assert torch.allclose(together.items[i].image, alone.items[0].image, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(1, 1), (7, 13), (1001, 3), (3, 257)])
def test_output_keeps_odd_input_sizes(size, stages):
    stage = stages("eccv16")
    out = run(stage, Batch([make_item(*size)]))
    assert out.items[0].image.shape == (3, *size)


@pytest.mark.parametrize("model", sorted(COUNTS))
def test_output_luminance_is_the_input_luminance(model, stages):
    stage = stages(model)
    item = grey_item(48, 80)
    in_lab = lab.rgb2lab(item.image)
    # exactly, in Lab, before conversion back to RGB (whatever ab the network predicts)
    ab_small = torch.randn(2, stage.side, stage.side) * 30
    assert torch.equal(stage.colorize_lab(item, ab_small)[0], in_lab[0])
    # and after Lab -> RGB: the colours are in gamut for these mid tones, so L survives
    out = run(stage, Batch([item])).items[0].image
    out_lab = lab.rgb2lab(out)
    assert float((out_lab[0] - in_lab[0]).abs().max()) < 0.5
    assert float(chroma(out).mean()) > 20  # and it really was colorized


def test_colour_inputs_are_recoloured_from_their_luminance(stages):
    """A red image at saturation 0 becomes the grey of its own L: the input's chroma is dropped."""
    image = torch.zeros(3, 20, 30)
    image[0], image[1], image[2] = 0.8, 0.2, 0.1
    item = Item(source="red.png", image=image, meta=ImageMeta(30, 20, "RGB", "PNG"))
    out = run(stages(saturation=0.0), Batch([item])).items[0].image
    assert float(chroma(out).max()) < 0.05
    assert float((lab.rgb2lab(out)[0] - lab.rgb2lab(image)[0]).abs().max()) < 0.01


def test_saturation_scales_the_chroma(stages):
    item = grey_item(32, 32)
    low = run(stages(saturation=0.5), Batch([grey_item(32, 32)])).items[0].image
    full = run(stages(saturation=1.0), Batch([item])).items[0].image
    ratio = float(chroma(low).mean() / chroma(full).mean())
    assert 0.45 < ratio < 0.55


def test_rgba_alpha_passes_through_untouched(stages):
    batch = make_batch([(30, 40), (20, 20)], alpha=True)
    alphas = [item.alpha.clone() for item in batch.items]
    out = run(stages(), batch)
    for item, alpha in zip(out.items, alphas, strict=True):
        assert torch.equal(item.alpha, alpha)
        assert float(chroma(item.image).mean()) > 10


def test_16_bit_inputs_keep_16_bit_precision(stages):
    """Grey 16-bit levels one step apart (1/65535) stay distinct and in order after colorizing."""
    levels = torch.arange(20000, 20000 + 64 * 64, dtype=torch.float32) / 65535.0
    image = levels.view(1, 64, 64).expand(3, 64, 64).contiguous()
    item = Item(source="deep.png", image=image, meta=ImageMeta(64, 64, "I;16", "PNG", bit_depth=16))
    grey = run(stages(saturation=0.0), Batch([item])).items[0].image
    # Lab grey (a = b = 0) is R = G = B only to ~1e-5 with scikit-image's constants: one level
    steps = torch.round(grey * 65535) - torch.round(image * 65535)
    assert float(steps.abs().max()) <= 1
    assert len(torch.unique(torch.round(grey[1] * 65535))) > 0.9 * 64 * 64
    item.image = image
    colour = run(stages(), Batch([item])).items[0].image
    out_l = lab.rgb2lab(colour)[0].flatten()
    in_l = lab.rgb2lab(image)[0].flatten()
    assert float((out_l - in_l).abs().max()) < 0.02  # far finer than one 8-bit step of L (~0.4)
    assert len(torch.unique(torch.round(colour[1] * 65535))) > 2000  # more levels than 8 bits hold


def test_side_by_side_is_input_then_colorized(stages):
    batch = make_batch([(30, 41), (16, 16)], alpha=True)
    inputs = [(item.image.clone(), item.alpha.clone()) for item in batch.items]
    colour = run(stages(), make_batch([(30, 41), (16, 16)], alpha=True))
    pair = run(stages(mode="side_by_side"), batch)
    for item, (image, alpha), single in zip(pair.items, inputs, colour.items, strict=True):
        w = image.shape[-1]
        assert item.image.shape == (3, image.shape[1], 2 * w)
        assert torch.equal(item.image[:, :, :w], image)
        assert torch.equal(item.image[:, :, w:], single.image)
        assert torch.equal(item.alpha, torch.cat([alpha, alpha], dim=-1))


def test_model_size_that_is_not_a_multiple_of_8_works(stages):
    stage = stages("siggraph17", model_size=100)
    out = run(stage, make_batch([(50, 70)]))
    assert out.items[0].image.shape == (3, 50, 70)
    assert out.items[0].results["colorize"]["model_size"] == 104


# ---------------------------------------------------------------------------------------------
# hints (SIGGRAPH17)
# ---------------------------------------------------------------------------------------------


def write_hints(folder: Path, source: str, points: list[dict]) -> Path:
    path = folder / "hints" / Path(source).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"points": points}))
    return path


def test_a_hint_changes_the_colour_near_it(weights, tmp_path, stages):
    write_hints(tmp_path, "sub/photo.jpg", [{"x": 60, "y": 20, "rgb": [255, 0, 0]}])
    plain = run(stages(), Batch([grey_item(48, 80, "sub/photo.jpg")])).items[0]
    hinted_stage = stage_for(weights, pipeline_dir=tmp_path, hints="hints")
    hinted = run(hinted_stage, Batch([grey_item(48, 80, "sub/photo.jpg")])).items[0]
    assert hinted.results["colorize"]["hints"] == 1 and plain.results["colorize"]["hints"] == 0
    diff = (hinted.image - plain.image).abs().sum(0)
    near, far = diff[14:27, 52:69].mean(), diff[:, :20].mean()
    assert float(diff.max()) > 1e-3
    assert float(near) > 100 * float(far)
    # an item without a hint file in the same batch is not affected
    both = run(hinted_stage, Batch([grey_item(48, 80, "sub/photo.jpg"), grey_item(48, 80, "other.jpg")]))
    assert torch.allclose(both.items[0].image, hinted.image, atol=1e-5)
    assert torch.allclose(both.items[1].image, plain.image, atol=1e-5)
    assert both.items[1].results["colorize"]["hints"] == 0


def test_hint_planes_map_points_to_model_coordinates(weights, tmp_path):
    write_hints(tmp_path, "a.png", [{"x": 0, "y": 0, "ab": [55, -11]}, {"x": 159, "y": 95, "rgb": [0, 0, 255]}])
    stage = stage_for(weights, pipeline_dir=tmp_path, hints="hints", setup=False)
    ab, mask, count = stage.hint_planes(grey_item(96, 160, "a.png"))
    assert count == 2 and ab.shape == (2, 64, 64) and mask.shape == (1, 64, 64)
    assert int(mask.sum()) == 2 and mask[0, 0, 0] == 1 and mask[0, 63, 63] == 1
    assert torch.allclose(ab[:, 0, 0] * 110, torch.tensor([55.0, -11.0]))
    blue = lab.rgb2lab(torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1))[1:, 0, 0]
    assert torch.allclose(ab[:, 63, 63] * 110, blue, atol=1e-4)
    # a radius paints a (2r+1)^2 square, cut at the border
    wide = stage_for(weights, pipeline_dir=tmp_path, hints="hints", hint_radius=2, setup=False)
    _, mask, _ = wide.hint_planes(grey_item(96, 160, "a.png"))
    assert int(mask.sum()) == 9 + 9


@pytest.mark.parametrize(("doc", "message"), [
    ("not json", "cannot read it as JSON"),
    ('{"dots": []}', '"points" list'),
    ('{"points": [{"x": 1.5, "y": 2, "rgb": [1, 2, 3]}]}', "integers"),
    ('{"points": [{"x": 500, "y": 2, "rgb": [1, 2, 3]}]}', "outside the 80x48 image"),
    ('{"points": [{"x": 1, "y": 2}]}', "exactly one of 'rgb' and 'ab'"),
    ('{"points": [{"x": 1, "y": 2, "rgb": [300, 0, 0]}]}', "three numbers in \\[0, 255\\]"),
    ('{"points": [{"x": 1, "y": 2, "ab": [1]}]}', "two numbers"),
])
def test_bad_hint_files_fail_their_item_with_the_file_and_the_fix(tmp_path, doc, message):
    path = tmp_path / "h.json"
    path.write_text(doc)
    with pytest.raises(ItemError, match=message) as info:
        read_hints(path, 80, 48)
    assert str(path) in info.value.message and "fix:" in info.value.message
    assert info.value.code == "stage_error"


# ---------------------------------------------------------------------------------------------
# weights, fingerprint, precision
# ---------------------------------------------------------------------------------------------


def test_weights_of_the_other_model_are_refused_with_the_fix(weights):
    with pytest.raises(ConfigError, match='set model = "eccv16"'):
        Colorize(ColorizeParams(model="siggraph17", weights=str(weights["eccv16"])),
                 StageContext("c")).setup(torch.device("cpu"))


def test_mismatched_checkpoint_lists_keys_and_shapes(tmp_path):
    state = random_state("siggraph17", vivid=False)
    state["model1.0.weight"] = torch.zeros(64, 3, 3, 3)
    del state["model9.1.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ConfigError) as info:
        Colorize(ColorizeParams(weights="bad.pth"), StageContext("c", pipeline_dir=tmp_path)).setup(
            torch.device("cpu"))
    text = str(info.value)
    assert "bad.pth" in text and "model9.1.bias" in text and "model1.0.weight" in text and "fix:" in text


def test_dataparallel_prefixes_are_accepted(tmp_path):
    state = {f"module.{k}": v for k, v in random_state("eccv16").items()}
    torch.save({"state_dict": state}, tmp_path / "ddp.pth")
    stage = Colorize(ColorizeParams(model="eccv16", model_size=64, weights="ddp.pth"),
                     StageContext("c", pipeline_dir=tmp_path))
    stage.setup(torch.device("cpu"))
    assert torch.equal(stage.net.model_out.weight, state["module.model_out.weight"])


def test_fingerprint_tracks_custom_weights_files(tmp_path):
    torch.save(random_state("eccv16"), tmp_path / "w.pth")
    stage = Colorize(ColorizeParams(model="eccv16", weights="w.pth"), StageContext("c", pipeline_dir=tmp_path))
    first = stage.fingerprint()
    assert first["weights"] == str(tmp_path / "w.pth") and first["size"] > 0
    torch.save(random_state("eccv16", seed=1), tmp_path / "w.pth")
    import os

    os.utime(tmp_path / "w.pth", ns=(1, 1))
    assert stage.fingerprint() != first
    url = "https://example.org/my-colorizer-0123abcd.pth"
    assert Colorize(ColorizeParams(weights=url), StageContext("c")).fingerprint() == {"weights": url}


def test_registry_fingerprint_names_model_and_hash_prefix():
    assert Colorize(ColorizeParams(), StageContext("c")).fingerprint() == {"weights": "colorize-siggraph17@df00044c"}
    stage = Colorize(ColorizeParams(model="eccv16"), StageContext("c"))
    assert stage.fingerprint() == {"weights": "colorize-eccv16@9b330a0b"}


@pytest.mark.parametrize("model", sorted(COUNTS))
def test_cpu_autocast_uses_bfloat16_only_where_native_and_within_tolerance(model, stages):
    from imgflow_colorize.stage import cpu_has_native_bf16

    auto = stages(model, autocast="auto")
    assert stages(model, autocast="off").amp_dtype is None
    if not cpu_has_native_bf16():
        assert auto.amp_dtype is None  # emulated bfloat16 would be slower than float32
        return
    assert auto.amp_dtype == torch.bfloat16 and auto.precision() == "bfloat16"
    sizes = [(40, 56), (64, 64), (23, 31)]
    exact = run(stages(model, autocast="off"), make_batch(sizes))
    reduced = run(auto, make_batch(sizes))
    for a, b in zip(exact.items, reduced.items, strict=True):
        de = (lab.rgb2lab(a.image) - lab.rgb2lab(b.image)).pow(2).sum(0).sqrt()
        assert float(de.max()) < 1.5, float(de.max())
        assert b.results["colorize"]["precision"] == "bfloat16"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", sorted(COUNTS))
def test_cuda_matches_cpu_within_a_fraction_of_a_delta_e(weights, model, stages):
    sizes = [(40, 56), (64, 64), (23, 31)]
    cpu = run(stages(model, autocast="off"), make_batch(sizes))
    gpu_stage = Colorize(ColorizeParams(model=model, model_size=64, weights=str(weights[model])),
                         StageContext("colorize"))
    gpu_stage.setup(torch.device("cuda"))
    batch = make_batch(sizes)
    for item in batch.items:
        item.image = item.image.cuda()
    out = run(gpu_stage, batch)
    for a, b in zip(cpu.items, out.items, strict=True):
        assert b.image.is_cuda
        de = (lab.rgb2lab(a.image) - lab.rgb2lab(b.image.cpu())).pow(2).sum(0).sqrt()
        assert float(de.max()) < 1.5, b.results


# ---------------------------------------------------------------------------------------------
# plugin registration and the engine
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def colorize_plugin(imgflow_register):
    """The plugin module registered in-process, unless its entry point already loaded it."""
    import imgflow_colorize

    if not plugins.get_plugin_manager().is_registered(imgflow_colorize):
        imgflow_register(imgflow_colorize, name="colorize")
    return imgflow_colorize


def test_plugin_registers_the_stage_and_the_models(colorize_plugin):
    entry = plugins.stage_registry()["colorize"]
    assert entry.cls is Colorize and entry.cls.kind is StageKind.COLORIZE
    for name, (url, prefix, _) in MODELS.items():
        spec = models.get(name)
        assert (spec.url, spec.sha256_prefix, spec.stage) == (url, prefix, "colorize")
        assert spec.sha256 is None and spec.size is None and "BSD-2-Clause" in spec.license


def test_importing_the_plugin_and_stage_module_does_not_import_torch():
    code = ("import sys, imgflow_colorize, imgflow_colorize.stage; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_pipeline_run_colorizes_16_bit_and_rgba_files(tmp_path, weights, colorize_plugin):
    """Real files through the CLI: 16-bit grey PNG and RGBA PNG in, 16-bit TIFF out, with hints."""
    import shutil

    import tifffile
    from click.testing import CliRunner
    from PIL import Image

    from imgflow.cli import cli
    from tests.helpers import write_pipeline

    images = tmp_path / "in"
    (images / "sub").mkdir(parents=True)
    ramp = (np.linspace(18000, 42000, 40 * 60).reshape(40, 60)).astype(np.uint16)
    Image.fromarray(ramp).save(images / "sub" / "deep.png")  # mode I;16
    rgba = np.zeros((33, 21, 4), dtype=np.uint8)
    rgba[..., :3], rgba[..., 3] = 120, np.arange(21, dtype=np.uint8)[None, :] * 12
    Image.fromarray(rgba, "RGBA").save(images / "clear.png")
    shutil.copy(weights["siggraph17"], tmp_path / "mine.pth")
    write_hints(tmp_path, "sub/deep.png", [{"x": 5, "y": 5, "ab": [60, 60]}])
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out",
                          stages=[{"use": "colorize", "model": "siggraph17", "model_size": 64,
                                   "weights": "mine.pth", "hints": "hints"}],
                          out={"format": "tiff", "bit_depth": 16}, run={"batch_size": 2, "device": "cpu"})
    result = CliRunner().invoke(cli, ["run", str(pipe)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    deep = tifffile.imread(tmp_path / "out" / "sub" / "deep.tif")
    assert deep.dtype == np.uint16 and deep.shape == (40, 60, 3)
    out_l = lab.rgb2lab(torch.from_numpy(deep.astype(np.float32) / 65535).permute(2, 0, 1))[0]
    in_l = lab.rgb2lab(torch.from_numpy(ramp.astype(np.float32) / 65535).expand(3, 40, 60))[0]
    assert float((out_l - in_l).abs().max()) < 0.05
    assert float(chroma(torch.from_numpy(deep.astype(np.float32) / 65535).permute(2, 0, 1)).mean()) > 20
    clear = tifffile.imread(tmp_path / "out" / "clear.tif")
    assert clear.shape == (33, 21, 4)
    assert np.array_equal(np.round(clear[..., 3] / 257), rgba[..., 3])  # alpha kept
    records = {json.loads(line)["input"]: json.loads(line)
               for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()}
    assert records["sub/deep.png"]["results"]["colorize"]["hints"] == 1
    assert records["clear.png"]["results"]["colorize"]["hints"] == 0
