"""Tests for the stylize plugin's losses, networks and the two stylising stages (plugins/imgflow_stylize).

No network: VGG is either ``vgg_weights = "random"`` (seeded He init, the real loading path
skipped) or a features checkpoint generated here and loaded through imgflow.models; the
TransformerNet checkpoints are generated here too. Images are 32-97 px so that everything,
VGG19 optimisation included, runs in seconds on two CPU cores. Training is tested in
test_stylize_train.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
from imgflow_stylize import MODELS, VGG16, VGG19, losses, networks
from imgflow_stylize.common import load_vgg, shorter_edge_size
from imgflow_stylize.fast import StyleFast, StyleFastParams
from imgflow_stylize.optimize import StyleOptimize, StyleOptimizeParams, upscale
from PIL import Image
from torch.nn import functional as F

from imgflow import ConfigError, StageContext, StageKind, models
from imgflow.testing import check_layout, check_stage, make_batch, make_item

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def style_file(tmp_path_factory) -> Path:
    """A small colourful style image: stripes and blocks, so its Gram matrices are distinctive."""
    rng = np.random.default_rng(5)
    ys, xs = np.mgrid[0:40, 0:56]
    pixels = np.stack([(np.sin(xs / 2.0) > 0) * 230, (ys // 8 % 2) * 200, rng.integers(0, 255, (40, 56))], -1)
    path = tmp_path_factory.mktemp("style") / "style.png"
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def optimize_stage(style: Path, setup: bool = True, **params) -> StyleOptimize:
    params = {"style": str(style), "size": [32, 48], "steps": 4, "vgg_weights": "random", **params}
    stage = StyleOptimize(StyleOptimizeParams(**params), StageContext(stage_id="style.optimize"))
    if setup:
        stage.setup(CPU)
    return stage


def fast_stage(setup: bool = True, pipeline_dir: Path | None = None, **params) -> StyleFast:
    params = {"weights": "random", "width": 8, **params}
    stage = StyleFast(StyleFastParams(**params), StageContext(stage_id="style.fast",
                                                              pipeline_dir=pipeline_dir or Path.cwd()))
    if setup:
        stage.setup(CPU)
    return stage


# ---------------------------------------------------------------------------------------------
# Gram matrices and losses
# ---------------------------------------------------------------------------------------------


def test_gram_is_the_normalised_feature_product_per_image():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    g = losses.gram(x)
    assert g.shape == (2, 3, 3)
    for n in range(2):
        flat = x[n].reshape(3, 20)
        direct = torch.stack([torch.stack([(flat[i] * flat[j]).sum() for j in range(3)]) for i in range(3)]) / 60
        assert torch.allclose(g[n], direct)


def test_gram_properties_symmetric_psd_scaling_and_pixel_order_free():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 7, 9, generator=gen, dtype=torch.float64)
    g = losses.gram(x)
    assert torch.allclose(g, g.transpose(1, 2))
    assert (torch.linalg.eigvalsh(g) > -1e-12).all()  # positive semi-definite
    assert torch.allclose(losses.gram(2.5 * x), 6.25 * g)  # quadratic in the features
    shuffled = x.flatten(2)[..., torch.randperm(63, generator=gen)].reshape(3, 6, 7, 9)
    assert torch.allclose(losses.gram(shuffled), g)  # a texture statistic: where pixels are is lost
    # normalised by C*H*W: a tiled copy of a feature map has the same Gram matrix
    assert torch.allclose(losses.gram(x.repeat(1, 1, 2, 3)), g)


def test_content_and_style_losses_equal_direct_mse_per_item():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 4, 5, 6, generator=gen), torch.randn(2, 4, 5, 6, generator=gen)
    content = losses.content_loss(a, b)
    assert content.shape == (2,)
    for n in range(2):
        assert content[n] == pytest.approx(float(F.mse_loss(a[n], b[n])), rel=1e-6)
    target = losses.gram(b[:1])  # one style for the whole batch
    style = losses.style_loss(a, target)
    for n in range(2):
        assert style[n] == pytest.approx(float(F.mse_loss(losses.gram(a[n:n + 1]), target)), rel=1e-6)
    # what the loss network of train.fast_style uses: mean over the batch equals torch's mse_loss
    # against the repeated style Gram, as pytorch/examples computes it
    assert float(style.mean()) == pytest.approx(float(F.mse_loss(losses.gram(a), target.repeat(2, 1, 1))), rel=1e-6)


def test_tv_loss_matches_the_formula_computed_by_hand():
    x = torch.tensor([[[[0.0, 1.0, 3.0], [2.0, 2.0, 0.0]]]])  # (1, 1, 2, 3)
    vertical = (2 + 1 + 3) / 3
    horizontal = (1 + 2 + 0 + 2) / 4
    assert float(losses.tv_loss(x)[0]) == pytest.approx(0.5 * (vertical + horizontal))
    assert float(losses.tv_loss(torch.full((1, 3, 4, 4), 0.7))[0]) == 0.0


def test_losses_of_a_batch_are_the_losses_of_each_item_alone():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 6, 6, generator=gen)
    t = torch.randn(3, 2, 6, 6, generator=gen)
    for fn, args in ((losses.content_loss, (t,)), (losses.style_loss, (losses.gram(t[:1]),)), (losses.tv_loss, ())):
        batched = fn(x, *args)
        single = torch.cat([fn(x[i:i + 1], *(a[i:i + 1] if a.shape[0] == 3 else a for a in args)) for i in range(3)])
        assert torch.allclose(batched, single), fn.__name__


def test_ycbcr_round_trip_and_colour_preservation():
    gen = torch.Generator().manual_seed(4)
    rgb = torch.rand(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    assert torch.allclose(losses.ycbcr_to_rgb(losses.rgb_to_ycbcr(rgb)), rgb, atol=1e-9)
    y = losses.rgb_to_ycbcr(rgb)[:, 0]
    assert torch.allclose(y, 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])
    # a tinted original under a mid-grey stylisation: the original's colour, the style's Y
    original = torch.stack([torch.full((4, 4), 0.6), torch.full((4, 4), 0.2), torch.full((4, 4), 0.3)])
    stylised = torch.full((3, 4, 4), 0.5)
    out = losses.preserve_colors(stylised, original)
    assert torch.allclose(losses.rgb_to_ycbcr(out)[0], torch.full((4, 4), 0.5), atol=1e-6)
    chroma = losses.rgb_to_ycbcr(out)[1:]
    assert torch.allclose(chroma, losses.rgb_to_ycbcr(original)[1:], atol=1e-6)  # the photo's colour


# ---------------------------------------------------------------------------------------------
# TransformerNet
# ---------------------------------------------------------------------------------------------


def test_transformer_net_has_the_released_key_layout():
    net = networks.TransformerNet(32)
    state = net.state_dict()
    assert len(state) == 62
    assert sum(p.numel() for p in net.parameters()) == 1_679_235
    shapes = {"conv1.conv2d.weight": (32, 3, 9, 9), "in1.weight": (32,), "conv3.conv2d.weight": (128, 64, 3, 3),
              "res1.conv1.conv2d.weight": (128, 128, 3, 3), "res5.in2.bias": (128,),
              "deconv1.conv2d.weight": (64, 128, 3, 3), "in5.weight": (32,),
              "deconv3.conv2d.weight": (3, 32, 9, 9), "deconv3.conv2d.bias": (3,)}
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in net.modules())  # upsample + conv
    for width in (16, 8):
        narrow = networks.TransformerNet(width).state_dict()
        assert list(narrow) == list(state)  # same keys, narrower tensors
        assert tuple(narrow["conv1.conv2d.weight"].shape) == (width, 3, 9, 9)
        assert networks.width_of(narrow) == width


@pytest.mark.parametrize("size", [(97, 131), (1, 1), (3, 5), (30, 7), (64, 64), (61, 62)])
def test_transformer_keeps_the_input_size(size):
    torch.manual_seed(0)
    net = networks.TransformerNet(8).eval()
    x = torch.rand(2, 3, *size) * 255
    with torch.no_grad():
        out = networks.stylize_any_size(net, x)
    assert out.shape == (2, 3, *size)
    assert float(out.min()) >= 0 and float(out.max()) <= 255


def test_sizes_that_need_no_padding_equal_the_bare_network():
    torch.manual_seed(0)
    net = networks.TransformerNet(8).eval()
    x = torch.rand(1, 3, 32, 48) * 255
    with torch.no_grad():
        assert torch.equal(networks.stylize_any_size(net, x), net(x).clamp(0, 255))
        # padding only adds rows/columns at the bottom and right: the top-left pixels line up
        padded = networks.stylize_any_size(net, x[..., :30, :45])
    assert padded.shape == (1, 3, 30, 45)
    assert networks.padded_side(30) == 32 and networks.padded_side(45) == 48 and networks.padded_side(1) == 8


def test_stale_running_stats_are_dropped_before_a_strict_load(tmp_path):
    torch.manual_seed(1)
    source = networks.TransformerNet(8)
    state = dict(source.state_dict())
    stale = {"in1.running_mean": torch.zeros(8), "in1.running_var": torch.ones(8),
             "res3.in2.running_mean": torch.zeros(32), "in5.running_var": torch.ones(8)}
    torch.save({**state, **stale}, tmp_path / "old-style.pth")
    with pytest.raises(RuntimeError, match="Unexpected running stats"):  # why dropping is needed
        networks.TransformerNet(8).load_state_dict({**state, **stale}, strict=True)
    assert set(networks.drop_stale_norm_stats({**state, **stale})) == set(state)

    stage = fast_stage(weights="old-style.pth", pipeline_dir=tmp_path)
    for key, value in stage.net.state_dict().items():
        assert torch.equal(value, state[key]), key
    item = make_item(40, 52)
    expected = networks.stylize_any_size(source.eval(), item.image.unsqueeze(0) * 255)[0] / 255
    with torch.inference_mode():
        stage.process(make_batch([(40, 52)]).with_items([item]))
    assert torch.allclose(item.image, expected, atol=1e-6)


def test_a_checkpoint_of_another_width_names_its_width(tmp_path):
    torch.save(networks.TransformerNet(16).state_dict(), tmp_path / "w16.pth")
    stage = fast_stage(setup=False, weights="w16.pth", width=32, pipeline_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"width 16, but width = 32 \(fix: set width = 16\)") as info:
        stage.setup(CPU)
    assert str(tmp_path / "w16.pth") in str(info.value)


def test_a_foreign_checkpoint_lists_what_differs(tmp_path):
    state = networks.TransformerNet(8).state_dict()
    state.pop("res2.in1.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(models.StateDictMismatch) as info:
        fast_stage(weights="odd.pth", pipeline_dir=tmp_path)
    text = str(info.value)
    assert "res2.in1.weight" in text and "extra.weight" in text and "fix:" in text


def test_missing_weights_file_says_to_train_first(tmp_path):
    stage = fast_stage(setup=False, weights="out/style_training/style.pth", pipeline_dir=tmp_path)
    with pytest.raises(ConfigError) as info:
        stage.setup(CPU)
    text = str(info.value)
    assert str(tmp_path / "out/style_training/style.pth") in text and "train_style.toml" in text


# ---------------------------------------------------------------------------------------------
# style.fast
# ---------------------------------------------------------------------------------------------


def test_style_fast_contract_sizes_and_determinism():
    sizes = [(97, 131), (64, 64), (64, 64), (33, 20)]
    out = check_stage(StyleFast, {"weights": "random", "width": 8}, make_batch(sizes))
    for item, size in zip(out.items, sizes, strict=True):
        assert tuple(item.image.shape) == (3, *size)
    originals = make_batch(sizes)
    assert not torch.allclose(out.items[1].image, originals.items[1].image, atol=0.05)  # it did something
    assert StyleFast.kind is StageKind.STYLIZE and StyleFast.name == "style.fast"


def test_style_fast_stacks_items_of_one_size_into_one_forward():
    stage = fast_stage()
    calls = []
    handle = stage.net.register_forward_hook(lambda _m, args, _o: calls.append(tuple(args[0].shape)))
    try:
        with torch.inference_mode():
            stage.process(make_batch([(64, 64), (30, 45), (64, 64), (64, 64)]))
    finally:
        handle.remove()
    assert sorted(calls) == [(1, 3, 32, 48), (3, 3, 64, 64)]


def test_style_fast_splits_big_images_into_forwards_within_the_pixel_budget(monkeypatch):
    from imgflow_stylize import fast

    monkeypatch.setitem(fast.FORWARD_PIXELS, "cpu", 2 * 64 * 64)  # two 64x64 images per forward
    assert fast.forward_chunk("cpu", 64, 64) == 2 and fast.forward_chunk("cpu", 512, 512) == 1
    assert fast.forward_chunk("cuda", 512, 512) == 32 and fast.forward_chunk("mps", 512, 512) == 4
    stage = fast_stage()
    calls = []
    handle = stage.net.register_forward_hook(lambda _m, args, _o: calls.append(tuple(args[0].shape)))
    try:
        with torch.inference_mode():
            out = stage.process(make_batch([(64, 64)] * 5))
    finally:
        handle.remove()
    assert calls == [(2, 3, 64, 64), (2, 3, 64, 64), (1, 3, 64, 64)]
    assert len(out) == 5 and all(tuple(i.image.shape) == (3, 64, 64) for i in out.items)


def test_style_fast_batched_equals_one_at_a_time():
    stage = fast_stage()
    sizes = [(40, 40), (40, 40), (40, 40)]
    with torch.inference_mode():
        together = stage.process(make_batch(sizes))
        alone = [stage.process(make_batch([s]).with_items([make_batch(sizes).items[i]])) for i, s in enumerate(sizes)]
    for a, b in zip(together.items, alone, strict=True):
        assert torch.allclose(a.image, b.items[0].image, atol=1e-5)


def test_style_fast_preserve_color_keeps_the_original_colours():
    plain = fast_stage()
    kept = fast_stage(preserve_color=True)
    with torch.inference_mode():
        a = plain.process(make_batch([(48, 40)]))
        b = kept.process(make_batch([(48, 40)]))
    photo = make_batch([(48, 40)]).items[0].image
    # the stage output is the plain stylisation recombined with the photo's chroma (the colour
    # arithmetic itself is checked in test_ycbcr_round_trip_and_colour_preservation)
    assert torch.allclose(b.items[0].image, losses.preserve_colors(a.items[0].image, photo), atol=1e-5)
    original = losses.rgb_to_ycbcr(photo)
    chroma_plain = (losses.rgb_to_ycbcr(a.items[0].image)[1:] - original[1:]).abs().mean()
    chroma_kept = (losses.rgb_to_ycbcr(b.items[0].image)[1:] - original[1:]).abs().mean()
    assert chroma_kept < 0.75 * chroma_plain  # (an untrained net's extreme luminance clips many pixels)
    check_layout(b)


def test_style_fast_params_and_fingerprint(tmp_path):
    with pytest.raises(pydantic.ValidationError):
        StyleFastParams()  # weights is required: there is no default style
    for bad in ({"weights": " "}, {"weights": "a.pth", "width": 12}, {"weights": "a.pth", "colour": 1}):
        with pytest.raises(pydantic.ValidationError):
            StyleFastParams(**bad)
    (tmp_path / "s.pth").write_bytes(b"1234")
    print_ = fast_stage(setup=False, weights="s.pth", pipeline_dir=tmp_path).fingerprint()
    assert print_["weights"] == str(tmp_path / "s.pth") and print_["size"] == 4
    assert fast_stage(setup=False).fingerprint() == {"weights": "random@0", "untrained": True}


# ---------------------------------------------------------------------------------------------
# VGG weights: registry and loading
# ---------------------------------------------------------------------------------------------


def test_registered_vgg_urls_equal_torchvision_weights_enums(stylize_plugin):
    from torchvision.models import VGG16_Weights, VGG19_Weights

    assert MODELS[VGG19][0] == VGG19_Weights.IMAGENET1K_V1.url
    assert MODELS[VGG16][0] == VGG16_Weights.IMAGENET1K_V1.url
    for name, enum in ((VGG19, VGG19_Weights.IMAGENET1K_V1), (VGG16, VGG16_Weights.IMAGENET1K_V1)):
        spec = models.get(name)
        assert spec.url == enum.url
        assert spec.approx_size == round(enum.meta["_file_size"] * 2**20)  # what models list shows
        assert spec.sha256_prefix == enum.url.rsplit("-", 1)[1].removesuffix(".pth")


def features_checkpoint(path: Path, arch: str, depth: int, seed: int) -> dict[str, torch.Tensor]:
    """A torchvision-layout checkpoint: ``features.N.*`` of a random VGG plus a (tiny) classifier
    entry that loading must ignore; returns the features' state."""
    features = networks.init_vgg_random(networks.build_vgg_features(arch, depth), seed)
    state = features.state_dict()
    torch.save({**{f"features.{k}": v for k, v in state.items()}, "classifier.6.bias": torch.zeros(10)}, path)
    return state



def test_vgg_features_load_strictly_from_a_torchvision_layout_file(tmp_path):
    state = features_checkpoint(tmp_path / "vgg19.pth", "vgg19", networks.VGG19_DEPTH, seed=3)
    vgg = load_vgg("vgg19", networks.VGG19_DEPTH, tmp_path / "vgg19.pth", CPU, "style.optimize")
    assert len(vgg) == 29 and vgg[28].out_channels == 512
    for key, value in vgg.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not any(p.requires_grad for p in vgg.parameters()) and not vgg.training
    assert not any(getattr(m, "inplace", False) for m in vgg)  # pre-ReLU outputs stay intact
    with pytest.raises(models.StateDictMismatch) as info:  # a VGG16 file is not a VGG19
        features_checkpoint(tmp_path / "vgg16.pth", "vgg16", networks.VGG16_DEPTH, seed=3)
        load_vgg("vgg19", networks.VGG19_DEPTH, tmp_path / "vgg16.pth", CPU, "style.optimize")
    assert "vgg19" in str(info.value) and "fix:" in str(info.value)


def test_random_vgg_is_seeded_and_leaves_the_global_rng_alone():
    before = torch.get_rng_state()
    a = load_vgg("vgg16", networks.VGG16_DEPTH, "random", CPU, "t")
    b = load_vgg("vgg16", networks.VGG16_DEPTH, "random", CPU, "t")
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# ---------------------------------------------------------------------------------------------
# style.optimize
# ---------------------------------------------------------------------------------------------


def test_a_few_steps_with_random_vgg_lower_the_total_loss(style_file):
    """A small learning rate for a few steps: the book's 0.3 makes Adam's first steps jump by 0.3
    per pixel, which overshoots before 500 steps bring it back."""
    results = {}
    for steps in (0, 6):
        stage = optimize_stage(style_file, steps=steps, lr=0.01)
        out = stage.process(make_batch([(40, 60), (50, 50)]))
        results[steps] = [item.results["style.optimize"] for item in out.items]
    for before, after in zip(results[0], results[6], strict=True):
        assert before["content_loss"] == 0.0  # starts from the content image itself
        assert after["total_loss"] < 0.9 * before["total_loss"], (before, after)
        assert after["style_loss"] < before["style_loss"]
        assert after["steps"] == 6 and after["working_size"] == [32, 48]
        assert after["total_loss"] == pytest.approx(after["content_loss"] + after["style_loss"] + after["tv_loss"])


def test_reported_losses_are_those_of_the_returned_image(style_file):
    """Recompute the losses from the returned picture by the SPEC formulas, independently."""
    stage = optimize_stage(style_file, size=[32, 32], steps=3)
    item = make_item(32, 32)
    stage.process(make_batch([(32, 32)]).with_items([item]))
    reported = item.results["style.optimize"]
    x = networks.imagenet_normalize(item.image.unsqueeze(0))
    content = networks.imagenet_normalize(make_item(32, 32).image.unsqueeze(0))
    vgg = stage.vgg
    with torch.no_grad():
        feats = networks.extract_layers(vgg, x, [0, 5, 10, 19, 25, 28])
        target = networks.extract_layers(vgg, content, [25])[25]
        style_img = torch.from_numpy(np.asarray(Image.open(style_file), dtype=np.float32) / 255).permute(2, 0, 1)
        style_img = F.interpolate(style_img[None], size=(32, 32), mode="bilinear", antialias=True)
        style_feats = networks.extract_layers(vgg, networks.imagenet_normalize(style_img), [0, 5, 10, 19, 28])
    content_loss = F.mse_loss(feats[25], target)
    style_loss = sum(F.mse_loss(losses.gram(feats[i]), losses.gram(style_feats[i])) for i in (0, 5, 10, 19, 28))
    tv = 0.5 * ((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean())
    # the returned image was clamped to [0, 1] (the optimised one may stray slightly outside)
    assert reported["content_loss"] == pytest.approx(float(content_loss), rel=0.05, abs=1e-6)
    assert reported["style_loss"] == pytest.approx(1e4 * float(style_loss), rel=0.05)
    assert reported["tv_loss"] == pytest.approx(10 * float(tv), rel=0.05)


def test_optimising_a_batch_equals_optimising_each_image_alone(style_file):
    stage = optimize_stage(style_file, steps=4)
    sizes = [(40, 60), (36, 36), (50, 30)]
    together = stage.process(make_batch(sizes))
    for index in range(len(sizes)):
        alone = stage.process(make_batch(sizes).with_items([make_batch(sizes).items[index]]))
        a, b = together.items[index], alone.items[0]
        assert torch.allclose(a.image, b.image, atol=2e-4), index
        assert a.results["style.optimize"]["total_loss"] == pytest.approx(
            b.results["style.optimize"]["total_loss"], rel=1e-3)


def test_optimize_restores_original_sizes_and_groups_by_working_size(style_file):
    stage = optimize_stage(style_file, size=32, steps=1)  # shorter edge 32, aspect kept
    calls = []
    handle = stage.vgg[0].register_forward_hook(lambda _m, args, _o: calls.append(tuple(args[0].shape)))
    try:
        with torch.inference_mode():  # as the plugin test kit runs stages: the stage leaves it
            out = stage.process(make_batch([(40, 60), (64, 96), (60, 40)]))
    finally:
        handle.remove()
    assert [tuple(i.image.shape) for i in out.items] == [(3, 40, 60), (3, 64, 96), (3, 60, 40)]
    assert out.items[0].results["style.optimize"]["working_size"] == [32, 48]
    assert out.items[2].results["style.optimize"]["working_size"] == [48, 32]
    # one content pass, one step and one final measurement per group; two groups
    assert sorted(set(calls)) == [(1, 3, 48, 32), (2, 3, 32, 48)]
    check_layout(out)


def test_optimize_preserve_color_keeps_the_full_resolution_colours(style_file):
    stage = optimize_stage(style_file, steps=3, preserve_color=True)
    item = make_item(64, 96)
    original = item.image.clone()
    stage.process(make_batch([(64, 96)]).with_items([item]))
    diff = losses.rgb_to_ycbcr(item.image)[1:] - losses.rgb_to_ycbcr(original)[1:]
    assert diff.abs().median() < 1e-3
    assert not torch.allclose(item.image, original, atol=1e-3)


def test_upscale_is_pillows_bicubic_and_clamped():
    small = torch.rand(3, 8, 12, generator=torch.Generator().manual_seed(0))
    big = upscale(small, (16, 24))
    assert big.shape == (3, 16, 24) and float(big.min()) >= 0 and float(big.max()) <= 1
    pil = np.stack([np.asarray(Image.fromarray(small[c].numpy(), mode="F").resize((24, 16), Image.Resampling.BICUBIC))
                    for c in range(3)])
    assert np.abs(big.numpy() - np.clip(pil, 0, 1)).max() < 1e-5
    assert upscale(small, (8, 12)) is small


def test_optimize_params_defaults_are_the_books(style_file):
    p = StyleOptimizeParams(style="s.png")
    assert (p.size, p.steps, p.lr, p.lr_decay_every, p.lr_decay) == ((300, 450), 500, 0.3, 50, 0.8)
    assert (p.content_weight, p.style_weight, p.tv_weight) == (1.0, 1e4, 10.0)
    assert (p.content_layers, p.style_layers) == ([25], [0, 5, 10, 19, 28])
    assert p.vgg_weights is None and p.preserve_color is False
    for bad in ({"size": 8}, {"size": [300, 10]}, {"style_layers": [0, 29]}, {"content_layers": [25, 25]},
                {"lr_decay": 1.5}, {"steps": -1}, {"style": ""}):
        with pytest.raises(pydantic.ValidationError):
            StyleOptimizeParams(**{"style": "s.png", **bad})
    assert StyleOptimize.needs_grad is True and StyleFast.needs_grad is False
    assert shorter_edge_size(300, 450, 150) == (150, 225) and shorter_edge_size(450, 300, 150) == (225, 150)


def test_missing_style_image_is_a_config_error_naming_it(tmp_path):
    stage = StyleOptimize(StyleOptimizeParams(style="nope.jpg", vgg_weights="random"),
                          StageContext(stage_id="style.optimize", pipeline_dir=tmp_path))
    with pytest.raises(ConfigError) as info:
        stage.setup(CPU)
    assert str(tmp_path / "nope.jpg") in str(info.value) and "fix:" in str(info.value)
    print_ = stage.fingerprint()  # validate must not fail on it
    assert print_["style"] == {"path": str(tmp_path / "nope.jpg"), "missing": True}


def test_fingerprint_follows_the_style_bytes(tmp_path, style_file):
    copy = tmp_path / "s.png"
    copy.write_bytes(style_file.read_bytes())
    stage = StyleOptimize(StyleOptimizeParams(style="s.png", vgg_weights="random"),
                          StageContext(stage_id="s", pipeline_dir=tmp_path))
    first = stage.fingerprint()
    assert first["vgg"] == {"weights": "random@0", "untrained": True} and len(first["style"]["sha256"]) == 64
    Image.new("RGB", (8, 8), "red").save(copy)
    assert stage.fingerprint()["style"] != first["style"]


def test_importing_the_plugin_and_stage_modules_does_not_import_torch():
    code = ("import sys, imgflow_stylize, imgflow_stylize.optimize, imgflow_stylize.fast, imgflow_stylize.train; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_style_fast_on_cuda_matches_the_cpu():
    cpu_stage = fast_stage()
    gpu_stage = fast_stage(setup=False)
    gpu_stage.setup(torch.device("cuda"))
    gpu_stage.net.load_state_dict(cpu_stage.net.state_dict())
    sizes = [(37, 53), (64, 48), (64, 48)]
    with torch.inference_mode():
        want = cpu_stage.process(make_batch(sizes))
        batch = make_batch(sizes)
        for item in batch:
            item.image = item.image.cuda()
        batch.device = torch.device("cuda")
        got = gpu_stage.process(batch)
    for a, b in zip(want.items, got.items, strict=True):
        assert b.image.is_cuda and b.image.shape == a.image.shape
        assert torch.allclose(a.image, b.image.cpu(), atol=2e-3)
