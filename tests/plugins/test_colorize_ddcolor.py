"""Tests for DDColor (plugins/imgflow_colorize/ddcolor): the state-dict layout of both sizes, the
modules, strict loading of release-shaped checkpoints, and the batched full-resolution stage.

No network and no downloaded weights: ``data/ddcolor_state_dict_shapes.json`` lists every key and
shape the released inference code builds (copied from the project's shared facts), tiny weights
are generated here (random, plus a constant colour cast in the last conv's bias so outputs are
plainly colourful) and saved the way the release saves them (under ``params``, with the two
``head_cls`` tensors). The large network is only built and loaded, never run: 228 M parameters are
too slow for a 2-core test suite; shapes are checked on the meta device. Most stage tests use
model_size 64.
"""

from __future__ import annotations

import copy
import json
import math
import socket
import sys
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

from imgflow import Batch, ConfigError, ImageMeta, Item, ItemError, StageContext, hookimpl, models, plugins
from imgflow.testing import check_stage, make_batch, make_item
from imgflow_colorize import lab
from imgflow_colorize.ddcolor import DEFAULT_WEIGHTS, PUBLISHED, color_decoder, model, weights
from imgflow_colorize.ddcolor.layers import SpectralConv2d
from imgflow_colorize.ddcolor.stage import ColorizeDDColor, DDColorParams, model_side

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

REPO = Path(__file__).resolve().parents[2]
FACTS = json.loads((Path(__file__).parent / "data" / "ddcolor_state_dict_shapes.json").read_text())
PARAMETERS = {"tiny": 55_006_640, "large": 227_869_328}  # SPEC §7: 55.0 M and 227.9 M
WIDTHS = {"tiny": (96, 192, 384, 768), "large": (192, 384, 768, 1536)}
CAST = (30.0, -20.0)  # ab added by the generated checkpoint's last bias: a visible colour


def meta_net(size: str) -> model.DDColor:
    with torch.device("meta"):
        return model.build(size)


def release_like(state: dict[str, torch.Tensor], size: str) -> dict[str, torch.Tensor]:
    """What a released checkpoint holds: the state dict plus the unused classifier head."""
    width = WIDTHS[size][-1]
    return {**state, "encoder.arch.head_cls.weight": torch.zeros(4, width),
            "encoder.arch.head_cls.bias": torch.zeros(4)}


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = model.build("tiny").state_dict()
    state["refine_net.0.0.bias"] = state["refine_net.0.0.bias"] + torch.tensor(CAST)
    return state


@pytest.fixture(scope="module")
def tiny_file(tiny_state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddcolor") / "ddcolor_generated_tiny.pth"
    torch.save({"params": release_like(tiny_state, "tiny")}, path)
    return path


@pytest.fixture(scope="module")
def stages(tiny_file):
    """Stages at model_size 64, float32 unless asked, all set up from the generated checkpoint.

    Parameters that only change what happens around the network (saturation, mode, ab_upsample)
    share one set-up network: a copy of the stage with those parameters, so the 220 MB file is
    not loaded again for each.
    """
    cache: dict[tuple, ColorizeDDColor] = {}
    around = {"saturation", "mode", "ab_upsample"}

    def get(**params) -> ColorizeDDColor:
        params = {"weights": str(tiny_file), "model_size": 64, "autocast": "off", **params}
        key = tuple(sorted(params.items()))
        if key in cache:
            return cache[key]
        base = {k: v for k, v in params.items() if k not in around}
        if base != params:
            stage = copy.copy(get(**base))
            stage.params = DDColorParams(**params)
        else:
            stage = ColorizeDDColor(DDColorParams(**params), StageContext(stage_id="colorize.ddcolor"))
            stage.setup(torch.device("cpu"))
        cache[key] = stage
        return stage

    return get


def run(stage: ColorizeDDColor, batch: Batch) -> Batch:
    with torch.inference_mode():
        return stage.process(batch)


def grey_item(h: int, w: int, source: str = "grey.png", **meta) -> Item:
    ys = torch.linspace(0.3, 0.65, h).view(h, 1)
    xs = torch.linspace(0, 1, w).view(1, w)
    image = (ys + 0.05 * torch.sin(xs * 12)).clamp(0, 1).expand(3, h, w).contiguous()
    return Item(source=source, image=image, meta=ImageMeta(**{"width": w, "height": h, "mode": "L",
                                                              "format": "PNG", **meta}))


def chroma(image: torch.Tensor) -> torch.Tensor:
    return lab.rgb2lab(image)[1:].pow(2).sum(0).sqrt()


# ---------------------------------------------------------------------------------------------
# the network: layout, shapes, modules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["tiny", "large"])
def test_state_dict_has_every_key_and_shape_of_the_release(size):
    net = meta_net(size)
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert ours == FACTS[size]  # 440 / 602 entries, spectral norm's weight_orig/_u/_v included
    assert sum(p.numel() for p in net.parameters()) == PARAMETERS[size]


@pytest.mark.parametrize("size", ["tiny", "large"])
def test_generated_weights_of_the_exact_layout_load_strictly(size):
    # every key and shape of the facts file, values made without memory (the large set would be
    # 912 MB): a strict load either takes every tensor or names what is wrong
    state = {k: torch.zeros(()).expand(shape) if shape else torch.zeros((), dtype=torch.int64)
             for k, shape in FACTS[size].items()}
    net = meta_net(size)
    weights.load_into(net, release_like(state, size), "generated")
    assert not any(t.is_meta for t in net.state_dict().values())
    assert net.encoder.arch.norm3.weight.shape == (WIDTHS[size][-1],)


def test_the_saved_tiny_checkpoint_loads_through_the_registry_loader(tiny_file, tiny_state):
    loaded = models.load_state_dict(tiny_file)  # unwraps "params", weights_only
    assert "encoder.arch.head_cls.weight" in loaded
    net = meta_net("tiny")
    weights.load_into(net, loaded, str(tiny_file))
    for key, value in net.state_dict().items():
        assert torch.equal(value, tiny_state[key]), key


def test_unknown_missing_and_misshapen_keys_are_listed(tiny_state):
    state = dict(tiny_state)
    del state["decoder.layers.1.conv.0.weight_v"]
    state["decoder.extra.weight"] = torch.zeros(3)
    state["decoder.color_decoder.query_feat.weight"] = torch.zeros(99, 256)
    with pytest.raises(models.StateDictMismatch) as info:
        weights.load_into(meta_net("tiny"), state, "bad.pth")
    text = str(info.value)
    for key in ("decoder.layers.1.conv.0.weight_v", "decoder.extra.weight", "query_feat.weight", "bad.pth", "fix:"):
        assert key in text


def test_a_checkpoint_of_the_other_size_is_refused_with_the_fix(tiny_state):
    with pytest.raises(ConfigError, match='DDColor-tiny checkpoint, but size = "large".*set size = "tiny"'):
        weights.load_into(meta_net("large"), dict(tiny_state), "w.pth")


@pytest.mark.parametrize("size", ["tiny", "large"])
def test_encoder_maps_at_512_are_what_the_decoders_expect(size):
    """On the meta device (shapes only, no arithmetic), the release's 512 px input."""
    net = meta_net(size)
    x = torch.empty(2, 3, 512, 512, device="meta")
    features = net.encoder(x)
    w = WIDTHS[size]
    assert [tuple(f.shape) for f in features] == [(2, w[0], 128, 128), (2, w[1], 64, 64), (2, w[2], 32, 32),
                                                  (2, w[3], 16, 16)]
    scales = net.decoder.scales(features)
    assert [tuple(s.shape) for s in scales] == [(2, 512, 32, 32), (2, 512, 64, 64), (2, 256, 128, 128)]
    assert tuple(net.decoder.last_shuf(scales[-1]).shape) == (2, 256, 512, 512)
    assert tuple(net.decoder.color_decoder(scales).shape) == (2, 100, 256)
    assert tuple(net(x).shape) == (2, 2, 512, 512)


@pytest.fixture(scope="module")
def tiny_net(tiny_state) -> model.DDColor:
    net = meta_net("tiny")
    weights.load_into(net, dict(tiny_state), "generated")
    return net.eval()


def test_forward_equals_the_releases_literal_colour_maps(tiny_net):
    """The fused tail (no 100 maps, no full-size 256-channel map) gives the release's numbers."""
    x = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        fused = tiny_net(x)
        maps, literal = tiny_net.colour_maps(x)
    assert maps.shape == (2, 100, 64, 96) and fused.shape == (2, 2, 64, 96)
    assert torch.allclose(fused, literal, atol=1e-3, rtol=0), float((fused - literal).abs().max())
    assert float((fused - torch.tensor(CAST).view(1, 2, 1, 1)).abs().mean()) < 5  # the cast is there


def test_inference_rewrites_keep_the_output(tiny_net, tiny_state):
    """Spectral norms divided out and batch norms folded: same ab within float rounding."""
    prepared = weights.prepare_for_inference(_loaded(tiny_state))
    assert not any(isinstance(m, SpectralConv2d) for m in prepared.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.decoder.layers[0].shuf.conv)
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(prepared(x), tiny_net(x), atol=1e-3, rtol=0)


def _loaded(state: dict[str, torch.Tensor]) -> model.DDColor:
    net = meta_net("tiny")
    weights.load_into(net, dict(state), "generated")
    return net


def test_spectral_conv_matches_torchs_spectral_norm_in_eval_mode():
    """The release wraps its convs with torch.nn.utils.spectral_norm: same keys, same output."""
    torch.manual_seed(1)
    reference = torch.nn.utils.spectral_norm(torch.nn.Conv2d(6, 5, 3, padding=1))
    for _ in range(3):  # training-mode forwards update weight_u / weight_v, as training did
        reference(torch.rand(1, 6, 8, 8))
    reference.eval()
    ours = SpectralConv2d(6, 5, 3, bias=True)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.rand(2, 6, 9, 7)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-6)
        assert torch.allclose(ours.frozen()(x), reference(x), atol=1e-6)


def test_attention_computes_what_nn_multiheadattention_does():
    torch.manual_seed(2)
    attn = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    torch.nn.init.normal_(attn.in_proj_bias)
    query, memory = torch.rand(3, 5, 32), torch.rand(3, 7, 32)
    with torch.inference_mode():
        expected = attn(query, memory + 0.5, memory, need_weights=False)[0]
        assert torch.allclose(color_decoder.attend(attn, query, memory + 0.5, memory), expected, atol=1e-5)


def test_sine_positions_follow_the_formula():
    code = color_decoder.sine_positions(3, 5, 8)
    assert code.shape == (15, 8)
    row, col = 2, 4  # the last pixel: both coordinates normalised to 2*pi
    for i in range(4):
        freq = 10000 ** (2 * (i // 2) / 4)
        fn = math.sin if i % 2 == 0 else math.cos
        assert math.isclose(code[row * 5 + col, i], fn(3 / (3 + 1e-6) * 2 * math.pi / freq), abs_tol=1e-5)
        assert math.isclose(code[row * 5 + col, 4 + i], fn(5 / (5 + 1e-6) * 2 * math.pi / freq), abs_tol=1e-5)


# ---------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------


def test_params_are_validated_and_the_size_follows_the_weights():
    assert DDColorParams().model_size == 512 and DDColorParams().ab_upsample == "bilinear"
    for bad in ({"size": "medium"}, {"model_size": 32}, {"saturation": -1}, {"ab_upsample": "cubic"},
                {"weights": " "}, {"max_batch": 0}):
        with pytest.raises(pydantic.ValidationError):
            DDColorParams(**bad)
    with pytest.raises(pydantic.ValidationError, match="for the large model.*set size = 'large'"):
        DDColorParams(size="tiny", weights="ddcolor-artistic")
    context = StageContext("c")
    assert ColorizeDDColor(DDColorParams(), context).size == "tiny"
    assert ColorizeDDColor(DDColorParams(weights="ddcolor-artistic"), context).size == "large"
    assert ColorizeDDColor(DDColorParams(size="large"), context).weights_source() == "ddcolor-modelscope"
    assert [model_side(s) for s in (64, 65, 500, 512)] == [64, 96, 512, 512]


def test_large_on_a_cpu_says_it_is_for_gpus_and_a_tiny_checkpoint_is_refused(tiny_file, capsys):
    stage = ColorizeDDColor(DDColorParams(size="large", weights=str(tiny_file)), StageContext("colorize.ddcolor"))
    with pytest.raises(ConfigError, match='set size = "tiny"'):
        stage.setup(torch.device("cpu"))
    assert 'size = "large" (ConvNeXt-L, 228 M parameters) is meant for a GPU' in capsys.readouterr().err


def test_init_does_no_io(tmp_path):
    stage = ColorizeDDColor(DDColorParams(weights="nowhere/w.pth"), StageContext("c", pipeline_dir=tmp_path))
    assert stage.net is None and stage.weights_source() == tmp_path / "nowhere" / "w.pth"
    with pytest.raises(ConfigError, match="nowhere/w.pth"):
        stage.setup(torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------


def test_check_stage_contract_and_results(tiny_file):
    params = {"weights": str(tiny_file), "model_size": 64, "autocast": "off"}
    out = check_stage(ColorizeDDColor, params, make_batch([(40, 56), (23, 31)]))
    assert [tuple(i.image.shape) for i in out.items] == [(3, 40, 56), (3, 23, 31)]
    result = out.items[0].results["colorize.ddcolor"]
    assert {k: v for k, v in result.items() if k != "precision"} == {
        "model": "ddcolor", "size": "tiny", "model_size": 64, "ab_upsample": "bilinear",
        "weights": str(tiny_file)}


def test_a_mixed_batch_equals_one_image_at_a_time_and_keeps_odd_sizes(stages):
    stage = stages()
    sizes = [(97, 131), (300, 2000)]
    together = run(stage, make_batch(sizes))
    for i, size in enumerate(sizes):
        assert together.items[i].image.shape == (3, *size)
        alone = run(stage, Batch([make_item(*size, source=f"img{i}.png", seed=i)]))
        assert torch.allclose(together.items[i].image, alone.items[0].image, atol=1e-4, rtol=0)


def test_output_luminance_is_the_input_luminance(stages):
    stage = stages()
    item = grey_item(97, 131)
    in_lab = lab.rgb2lab(item.image)
    ab_small = torch.randn(2, stage.side, stage.side) * 30
    assert torch.equal(stage.colorize_lab(item, ab_small)[0], in_lab[0])  # exact, in Lab
    out = run(stage, Batch([item])).items[0].image
    assert float((lab.rgb2lab(out)[0] - in_lab[0]).abs().max()) < 0.5  # and after Lab -> RGB
    assert float(chroma(out).mean()) > 20  # it really was colorized


def test_nearest_upsampling_is_the_releases_blocky_one(stages):
    item = grey_item(6, 9)
    ab_small = torch.arange(2 * 64 * 64, dtype=torch.float32).view(2, 64, 64)
    nearest = stages(ab_upsample="nearest").colorize_lab(item, ab_small)[1:]
    expected = torch.nn.functional.interpolate(ab_small[None], size=(6, 9))[0]  # the release's call
    assert torch.equal(nearest, expected)
    smooth = stages().colorize_lab(item, ab_small)[1:]
    assert not torch.equal(smooth, expected)


def test_colour_inputs_are_recoloured_from_their_luminance_and_saturation_scales(stages):
    image = torch.zeros(3, 20, 30)
    image[0], image[1], image[2] = 0.8, 0.2, 0.1
    item = Item(source="red.png", image=image, meta=ImageMeta(30, 20, "RGB", "PNG"))
    grey = run(stages(saturation=0.0), Batch([item])).items[0].image
    assert float(chroma(grey).max()) < 0.05
    half = run(stages(saturation=0.5), Batch([grey_item(32, 32)])).items[0].image
    full = run(stages(), Batch([grey_item(32, 32)])).items[0].image
    assert 0.45 < float(chroma(half).mean() / chroma(full).mean()) < 0.55


def test_side_by_side_and_alpha(stages):
    batch = make_batch([(30, 41), (16, 16)], alpha=True)
    inputs = [(item.image.clone(), item.alpha.clone()) for item in batch.items]
    pair = run(stages(mode="side_by_side"), batch)
    for item, (image, alpha) in zip(pair.items, inputs, strict=True):
        w = image.shape[-1]
        assert item.image.shape == (3, image.shape[1], 2 * w)
        assert torch.equal(item.image[:, :, :w], image)
        assert torch.equal(item.alpha, torch.cat([alpha, alpha], dim=-1))


def test_out_of_memory_halves_the_pass_and_never_passes_the_input_through(stages, tiny_file):
    """A network that runs out of memory above 1 image per pass (as a full GPU would)."""
    stage = copy.copy(stages())  # the same network, its own chunk size
    stage.chunk = sys.maxsize
    real, seen = stage.net, []

    def limited(x: torch.Tensor, most: int = 1) -> torch.Tensor:
        seen.append(x.shape[0])
        if x.shape[0] > most:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(x)

    stage.net = limited
    sizes = [(20, 30), (31, 17), (25, 25), (8, 40), (12, 12)]
    out = run(stage, make_batch(sizes))
    assert seen[:3] == [5, 2, 1] and stage.chunk == 1  # halved until it fits, then kept
    reference = run(stages(), make_batch(sizes))
    for a, b in zip(out.items, reference.items, strict=True):
        assert torch.allclose(a.image, b.image, atol=1e-4)
    stage.net = lambda x: limited(x, most=0)
    batch = make_batch([(20, 30)])
    original = batch.items[0].image.clone()
    with pytest.raises(ItemError, match="out of memory for even one image.*fix: lower model_size"):
        run(stage, batch)
    assert torch.equal(batch.items[0].image, original)  # nothing was written into the item


def test_cpu_autocast_is_bfloat16_only_where_native_and_within_tolerance(stages):
    from imgflow_colorize.ddcolor.stage import calibration_input
    from imgflow_colorize.stage import cpu_has_native_bf16

    auto = copy.copy(stages())  # the set-up network, with the precision check setup() runs
    auto.params = DDColorParams(**{**stages().params.model_dump(), "autocast": "auto"})
    cpu = torch.device("cpu")
    auto.amp_dtype = auto._choose_precision(cpu, calibration_input(auto.side, cpu))
    if not cpu_has_native_bf16():
        assert auto.amp_dtype is None
        return
    if auto.amp_dtype is None:  # the calibration found bfloat16 off by more than 1 ab unit
        return
    exact = run(stages(), make_batch([(40, 56), (23, 31)]))
    reduced = run(auto, make_batch([(40, 56), (23, 31)]))
    assert auto.precision() == "bfloat16"
    for a, b in zip(exact.items, reduced.items, strict=True):
        assert float((lab.rgb2lab(a.image) - lab.rgb2lab(b.image)).pow(2).sum(0).sqrt().max()) < 1.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_by_memory_and_matches_the_cpu(stages, tiny_file):
    sizes = [(40, 56), (64, 64), (23, 31)]
    cpu = run(stages(), make_batch(sizes))
    gpu = ColorizeDDColor(DDColorParams(weights=str(tiny_file), model_size=64), StageContext("colorize.ddcolor"))
    gpu.setup(torch.device("cuda"))
    assert gpu.chunk >= 1 and gpu.precision() in ("float32", "float16", "bfloat16")
    batch = make_batch(sizes)
    for item in batch.items:
        item.image = item.image.cuda()
    out = run(gpu, batch)
    for a, b in zip(cpu.items, out.items, strict=True):
        assert b.image.is_cuda
        delta_e = (lab.rgb2lab(a.image) - lab.rgb2lab(b.image.cpu())).pow(2).sum(0).sqrt()
        assert float(delta_e.max()) < 1.5, b.results


# ---------------------------------------------------------------------------------------------
# registry, plugin and the engine
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def colorize_plugin(imgflow_register):
    import imgflow_colorize

    if not plugins.get_plugin_manager().is_registered(imgflow_colorize):
        imgflow_register(imgflow_colorize, name="colorize")
    return imgflow_colorize


def test_the_four_published_sets_are_registered_and_pinned_on_first_use(colorize_plugin):
    assert plugins.stage_registry()["colorize.ddcolor"].cls is ColorizeDDColor
    assert set(PUBLISHED) == {"ddcolor-paper-tiny", "ddcolor-paper", "ddcolor-modelscope", "ddcolor-artistic"}
    for name, published in PUBLISHED.items():
        spec = models.get(name)
        assert spec.url == f"https://huggingface.co/piddnad/DDColor-models/resolve/main/{published.filename}"
        assert spec.pin_on_first_use and spec.sha256 is None and spec.sha256_prefix is None
        assert spec.size == published.bytes and "Apache-2.0" in spec.license
        assert spec.stage == "colorize.ddcolor"
    assert models.get("ddcolor-paper-tiny").size == 220_393_145
    assert {PUBLISHED[w].size for w in DEFAULT_WEIGHTS.values()} == {"tiny", "large"}
    stage = ColorizeDDColor(DDColorParams(), StageContext("c"))
    assert stage.fingerprint() == {"weights": "ddcolor-paper-tiny@pinned"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_run_without_weights_exits_2_with_the_import_command(tmp_path, monkeypatch, imgflow_register,
                                                                      colorize_plugin):
    from click.testing import CliRunner

    from imgflow.cli import cli

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    url = f"http://127.0.0.1:{closed_port()}/ddcolor_offline.pth"

    class Offline:
        @hookimpl
        def register_models(self, register):
            register(models.ModelSpec(name="test-ddcolor-offline", url=url, license="test",
                                      stage="colorize.ddcolor", pin_on_first_use=True))

    imgflow_register(Offline(), name="offline-ddcolor")
    out = tmp_path / "never"
    result = CliRunner().invoke(cli, ["run", str(REPO / "pipelines" / "colorize_ddcolor.toml"), "-o", str(out),
                                      "-p", 'colorize.ddcolor.weights="test-ddcolor-offline"'])
    assert result.exit_code == 2, result.output
    assert "imgflow models import test-ddcolor-offline FILE" in result.output and url in result.output
    assert "Traceback" not in result.output
    assert not (out / "manifest.jsonl").exists() or (out / "manifest.jsonl").read_text() == ""


def test_importing_the_plugin_and_the_stage_does_not_import_torch():
    import subprocess

    code = ("import sys, imgflow_colorize, imgflow_colorize.ddcolor, imgflow_colorize.ddcolor.stage; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_pipeline_run_over_every_input_mode_keeps_sizes_luminance_and_alpha(tmp_path, tiny_file, colorize_plugin):
    """Real files through the CLI, one batch of mixed sizes and modes, lossless outputs."""
    import tifffile
    from click.testing import CliRunner
    from PIL import Image

    from imgflow.cli import cli
    from tests.helpers import write_pipeline

    src = tmp_path / "in"
    src.mkdir()
    ramp = np.linspace(40, 215, 97 * 131).reshape(97, 131).astype(np.uint8)
    Image.fromarray(ramp).save(src / "grey.png")  # L
    Image.fromarray(np.stack([ramp, ramp[::-1]], axis=-1), "LA").save(src / "grey_alpha.png")
    palette = Image.fromarray(ramp).quantize(16)
    palette.info["transparency"] = 0
    palette.save(src / "palette.png")  # P with a transparent index
    rgb = np.stack([ramp, ramp // 2, 255 - ramp], axis=-1)
    Image.fromarray(rgb).save(src / "colour.png")  # RGB
    Image.fromarray(np.dstack([rgb, ramp]), "RGBA").save(src / "colour_alpha.png")
    deep = np.linspace(9000, 50000, 300 * 2000).reshape(300, 2000).astype(np.uint16)
    Image.fromarray(deep).save(src / "deep.png")  # I;16, 2000x300
    pipe = write_pipeline(tmp_path / "p.toml", input=src, output=tmp_path / "out",
                          stages=[{"use": "colorize.ddcolor", "weights": str(tiny_file), "model_size": 64}],
                          out={"format": "tiff", "bit_depth": "same"}, run={"batch_size": 6, "device": "cpu"})
    result = CliRunner().invoke(cli, ["run", str(pipe)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in ("grey", "grey_alpha", "palette", "colour", "colour_alpha", "deep"):
        with Image.open(src / f"{name}.png") as im:
            has_alpha = im.mode in ("LA", "RGBA") or "transparency" in im.info
            source = np.asarray(im.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
        written = tifffile.imread(tmp_path / "out" / f"{name}.tif")
        scale = 65535.0 if written.dtype == np.uint16 else 255.0
        assert written.shape[:2] == source.shape[:2], name
        assert written.shape[2] == (4 if has_alpha else 3), name
        if name == "deep":
            source = np.repeat(deep[..., None].astype(np.float32) / 65535.0, 3, axis=-1)
            assert written.dtype == np.uint16  # 16 bits in, 16 bits out
        out = torch.from_numpy(written[..., :3].astype(np.float32) / scale).permute(2, 0, 1)
        inp = torch.from_numpy(source[..., :3]).permute(2, 0, 1)
        assert float((lab.rgb2lab(out)[0] - lab.rgb2lab(inp)[0]).abs().max()) < 0.6, name
        assert float(chroma(out).mean()) > 10, name
        if has_alpha:
            assert np.array_equal(np.round(written[..., 3] / scale * 255), np.round(source[..., 3] * 255)), name
