"""Tests for ``train.colorizer`` (plugins/imgflow_colorize/train.py and its helpers).

No network and no official weights: the networks start from torch's random initialisation (or,
for the hint test, from a hand-built SIGGRAPH17 state that takes hints, standing in for the
official weights) and every checkpoint goes through the real loading path. The data sets are
generated: ``palette`` pictures whose colour is a function of their luminance, so a short run
at 32 px can show that training works. Small sizes and decoder-only training keep the whole
module within its time budget on two shared cores.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from imgflow import ConfigError, StageContext, StageKind
from imgflow.batch import Batch, ImageMeta, Item
from imgflow.cli import cli
from imgflow_colorize import bins, colour_sets, hints, lab, losses, networks, trainable
from imgflow_colorize.stage import Colorize, ColorizeParams
from imgflow_colorize.train import TrainColorizer, TrainColorizerParams
from tests.helpers import write_pipeline

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
IMGFLOW = str(Path(sys.executable).parent / "imgflow")
SIDE = 32  # generated pictures and model size (colorize's minimum, 64, when colorizing)
TRAINER = {"model": "eccv16", "weights": "random", "model_size": SIDE, "train_layers": "decoder", "lr": 2e-3,
           "epochs": 2, "strip_images": 3}

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def item_of(pixels: np.ndarray, source: str) -> Item:
    image = torch.tensor(pixels).permute(2, 0, 1).float() / 255.0
    return Item(source=source, image=image, meta=ImageMeta(width=pixels.shape[1], height=pixels.shape[0],
                                                           mode="RGB", format="PNG"))


def palette_items(count: int, first_seed: int, palette=colour_sets.PALETTE, size: int = SIDE) -> list[Item]:
    return [item_of(colour_sets.palette_image(size, first_seed + i, palette), f"p{first_seed + i}.png")
            for i in range(count)]


def trainer(seed: int = 0, **params) -> TrainColorizer:
    """A set-up trainer the way the engine makes one: global RNG seeded, then setup()."""
    stage = TrainColorizer(TrainColorizerParams(**{**TRAINER, **params}),
                           StageContext(stage_id="colorizer", seed=seed))
    torch.manual_seed(seed)
    stage.setup(CPU)
    return stage


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def epoch_rows(output: Path) -> list[dict[str, str]]:
    lines = (output / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]


def ab_error_of(images: list[torch.Tensor], truths: list[torch.Tensor]) -> float:
    """Mean ab distance (Lab units) between colorized images and the true colours."""
    errors = [losses.ab_error(lab.rgb2lab(a)[None, 1:], lab.rgb2lab(b)[None, 1:]) for a, b in zip(images, truths, strict=True)]
    return float(torch.cat(errors).mean())


# ---------------------------------------------------------------------------------------------
# the bins, the soft encoding, the rebalancing
# ---------------------------------------------------------------------------------------------


def test_bins_file_is_the_313_bin_table_with_its_prior():
    table = bins.load_bins()
    assert table.count == 313 and table.centres.shape == (313, 2)
    assert float(table.prior.sum()) == pytest.approx(1.0, abs=1e-9) and float(table.prior.min()) > 0
    a, b = table.centres.unbind(1)
    assert (float(a.min()), float(a.max()), float(b.min()), float(b.max())) == (-90, 100, -110, 100)
    assert bool((table.centres % 10 == 0).all())
    assert len({tuple(c) for c in table.centres.tolist()}) == 313


def test_a_damaged_bins_file_is_refused(tmp_path):
    lines = bins.BINS_FILE.read_text().splitlines()
    short = tmp_path / "short.csv"
    short.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(RuntimeError, match="expected 313 rows, got 312"):
        bins.load_bins(short)


def test_soft_encoding_sums_to_one_per_pixel_and_peaks_at_the_nearest_bin():
    centres = bins.load_bins().centres
    gen = torch.Generator().manual_seed(3)
    ab = torch.cat([torch.rand(200, 2, generator=gen) * 200 - 100,  # anywhere, in gamut or not
                    centres[[0, 150, 312]].float(),  # exactly on a centre
                    torch.tensor([[5.0, 5.0], [-300.0, 400.0]])])  # between four bins; far outside
    index, weights = bins.soft_encode(ab, centres, neighbours=5, sigma=5.0)
    dense = bins.dense_targets(index, weights)
    assert torch.allclose(dense.sum(1), torch.ones(len(ab), dtype=dense.dtype), atol=1e-6)
    nearest = torch.cdist(ab.double(), centres).argmin(1)
    assert torch.equal(dense.argmax(1), nearest) and torch.equal(index[:, 0], nearest)
    assert int((dense > 0).sum(1).max()) == 5
    d2 = torch.cdist(ab.double(), centres).square().gather(1, index)  # Gaussian in the distance, sigma 5
    expected = torch.exp(-(d2 - d2[:, :1]) / 50.0)
    assert torch.allclose(weights.double(), expected / expected.sum(1, keepdim=True), atol=1e-5)
    # on a centre, the four grid neighbours at distance 10 share exp(-2) of its weight each
    on_centre = weights[201]  # bin 150, inside the gamut
    assert float(on_centre[0]) == pytest.approx(1 / (1 + 4 * math.exp(-2)), rel=1e-5)


def test_rebalancing_weights_have_expectation_one_under_the_prior():
    prior = bins.load_bins().prior
    weights = bins.rebalance_weights(prior, 0.5)
    assert float((prior * weights).sum()) == pytest.approx(1.0, abs=1e-9)
    order = prior.argsort()
    assert bool((weights[order][1:] <= weights[order][:-1] + 1e-12).all())  # rarer bins weigh more
    assert float(weights.max() / weights.min()) > 10
    assert torch.allclose(bins.rebalance_weights(prior, 1.0), torch.ones(313, dtype=torch.float64))
    skewed = torch.rand(313, generator=torch.Generator().manual_seed(1)) ** 8
    assert float((skewed / skewed.sum() * bins.rebalance_weights(skewed, 0.5)).sum()) == pytest.approx(1.0)


def test_a_prior_from_counts_is_smoothed_over_neighbouring_bins():
    centres = bins.load_bins().centres
    counts = torch.zeros(313)
    middle = int(torch.cdist(torch.tensor([[0.0, 0.0]], dtype=torch.float64), centres).argmin())
    counts[middle] = 1000
    prior = bins.smooth_prior(counts, centres, sigma=5.0)
    assert float(prior.sum()) == pytest.approx(1.0) and int(prior.argmax()) == middle
    neighbour = int(torch.cdist(centres[middle:middle + 1] + torch.tensor([[10.0, 0.0]], dtype=torch.float64),
                                centres).argmin())
    assert float(prior[neighbour] / prior[middle]) == pytest.approx(math.exp(-2.0), rel=1e-6)
    with pytest.raises(ValueError, match="no coloured pixels"):
        bins.smooth_prior(torch.zeros(313), centres)


def test_classification_loss_is_the_rebalanced_soft_cross_entropy():
    centres = bins.load_bins().centres
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 313, 3, 2, generator=gen) * 3
    ab = torch.randn(2, 2, 3, 2, generator=gen) * 40
    class_weights = bins.rebalance_weights(bins.load_bins().prior).float()
    found = losses.classification_loss(logits, ab, centres.float(), class_weights, neighbours=5, sigma=5.0,
                                       temperature=0.38)
    pixels_ab = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    index, weights = bins.soft_encode(pixels_ab, centres, 5, 5.0)
    target = bins.dense_targets(index, weights)
    log_p = torch.log_softmax(0.38 * logits.permute(0, 2, 3, 1).reshape(-1, 313), dim=1)
    per_pixel = -(target * log_p).sum(1) * class_weights[torch.cdist(pixels_ab, centres.float()).argmin(1)]
    assert torch.allclose(found, per_pixel.view(2, 6).mean(1), rtol=1e-5)


def test_cell_means_match_the_grid_the_x4_upsampling_centres_on():
    ab = torch.arange(2 * 8 * 8, dtype=torch.float32).view(1, 2, 8, 8)
    small = losses.cell_means(ab)
    assert small.shape == (1, 2, 2, 2) and float(small[0, 0, 0, 0]) == float(ab[0, 0, :4, :4].mean())


def test_colourfulness_is_zero_for_grey_and_grows_with_saturation():
    grey = torch.full((1, 3, 8, 8), 0.5)
    vivid = lab.lab2rgb(torch.tensor([60.0, 40.0, 30.0]).view(3, 1, 1).expand(3, 8, 8))[None]
    vivider = lab.lab2rgb(torch.tensor([60.0, 60.0, 45.0]).view(3, 1, 1).expand(3, 8, 8))[None]
    found = losses.colourfulness(torch.cat([grey, vivid, vivider]))
    assert float(found[0]) == pytest.approx(0.0, abs=1e-4) and 0 < float(found[1]) < float(found[2])


# ---------------------------------------------------------------------------------------------
# simulated hints
# ---------------------------------------------------------------------------------------------


def test_simulated_hints_are_geometric_central_patches_of_the_mean_colour():
    gen = torch.Generator().manual_seed(0)
    counts = [hints.hint_count(gen, 0.125) for _ in range(4000)]
    assert np.mean(counts) == pytest.approx(7.0, rel=0.1)  # (1 - p) / p
    assert np.mean([c == 0 for c in counts]) == pytest.approx(0.125, abs=0.02)
    ab = torch.randn(2, 40, 40, generator=gen) * 30
    planes, mask, count = hints.simulate_hints(ab, torch.Generator().manual_seed(9), p=0.125, max_patch=9,
                                               min_points=3)
    assert count >= 3 and set(mask.unique().tolist()) == {0.0, 1.0}
    assert bool((planes[:, mask[0] == 0] == 0).all())
    ys, xs = torch.nonzero(mask[0], as_tuple=True)
    assert abs(float(ys.float().mean()) - 19.5) < 10 and abs(float(xs.float().mean()) - 19.5) < 10
    single = hints.simulate_hints(ab, _generator_for_one_point(), p=0.125, max_patch=9)
    patch = single[1][0].nonzero()
    (top, left), (bottom, right) = patch.min(0).values.tolist(), patch.max(0).values.tolist()
    expected = ab[:, top:bottom + 1, left:right + 1].mean(dim=(1, 2)) / 110
    assert torch.allclose(single[0][:, top, left], expected, atol=1e-6) and single[2] == 1


def _generator_for_one_point() -> torch.Generator:
    """A seed whose first geometric draw is exactly one point."""
    for seed in range(1000):
        if hints.hint_count(torch.Generator().manual_seed(seed), 0.125) == 1:
            return torch.Generator().manual_seed(seed)
    raise AssertionError("no seed draws one point")


# ---------------------------------------------------------------------------------------------
# the network and the checkpoint
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hinted_weights(tmp_path_factory) -> Path:
    """A saved :func:`hint_taking_state` (loading it is cheaper than a random initialisation)."""
    path = tmp_path_factory.mktemp("hinted") / "hinted.pth"
    torch.save(hint_taking_state(), path)
    return path


@pytest.fixture(scope="module")
def untrained() -> TrainColorizer:
    """An ECCV16 trainer from random weights (seed 0), set up and never stepped: do not train it."""
    return trainer()


def test_eccv16_decoding_conv_holds_the_bin_centres(untrained):
    net = untrained.net
    centres = bins.load_bins().centres.float()
    assert torch.allclose(net.model_out.weight.detach()[:, :, 0, 0].t() * 110, centres, atol=1e-4)
    assert not net.model_out.weight.requires_grad
    for q in (0, 100, 312):  # the (annealed) mean of a one-hot distribution is that bin's ab
        logits = torch.full((1, 313, 2, 2), -50.0)
        logits[:, q] = 50.0
        with torch.no_grad():
            ab = trainable.eccv16_decode(net, logits) * 110
        assert ab.shape == (1, 2, 8, 8) and torch.allclose(ab[0, :, 3, 3], centres[q], atol=1e-3)
    x = torch.randn(2, 1, SIDE, SIDE)
    net.eval()
    with torch.no_grad():  # the trainer's split forward is the network's forward
        assert torch.allclose(trainable.eccv16_decode(net, trainable.eccv16_logits(net, x)), net(x), atol=1e-6)


def test_decoder_only_training_freezes_the_encoder_and_its_batch_norms(untrained):
    net = untrained.net
    assert untrained.trained == ["model8"]
    assert untrained.trainable_parameters == sum(p.numel() for p in net.model8.parameters())
    assert all(not p.requires_grad for name in ("model1", "model7") for p in getattr(net, name).parameters())
    trainable.set_mode(net, untrained.trained, train=True)
    assert net.model8.training and not net.model1.training and not net.model7[6].training
    assert trainable.trained_modules("siggraph17", "decoder") == [
        "model8up", "model3short8", "model8", "model9up", "model2short9", "model9", "model10up", "model1short10",
        "model10", "model_out"]
    assert trainable.trained_modules("eccv16", 2) == ["model7", "model8"]
    assert len(trainable.trained_modules("siggraph17", "all")) == 17  # everything but model_class


def test_an_eccv16_checkpoint_that_does_not_decode_with_the_bin_centres_is_refused(tmp_path, untrained):
    state = dict(untrained.net.state_dict())
    state["model_out.weight"] = state["model_out.weight"].flip(1)  # the bins in another order
    torch.save(state, tmp_path / "odd.pth")
    stage = TrainColorizer(TrainColorizerParams(model="eccv16", weights=str(tmp_path / "odd.pth")),
                           StageContext(stage_id="colorizer"))
    with pytest.raises(ConfigError, match="model_out .* bin centres") as err:
        stage.setup(CPU)
    assert "fix:" in str(err.value) and str(tmp_path / "odd.pth") in str(err.value)


def test_params_are_checked_with_the_fix():
    p = TrainColorizerParams()
    assert (p.model, p.model_size, p.lr, p.rebalance, p.sigma, p.neighbours, p.temperature) == (
        "eccv16", 256, 3e-5, 0.5, 5.0, 5, 0.38)
    assert (p.hint_p, p.hint_patch, p.prior, p.output_name) == (0.125, 9, "file", "colorizer.pth")
    bad = [({"train_layers": 9}, "eccv16 has 8 blocks"), ({"train_layers": 12, "model": "siggraph17"}, "11 blocks"),
           ({"hint_p": 0.2}, "only apply to model = \"siggraph17\""),
           ({"model": "siggraph17", "prior": "data"}, "only apply to model = \"eccv16\""),
           ({"output_name": "../x.pth"}, "inside the output folder"), ({"weights": " "}, "'weights' is empty"),
           ({"train_layers": "head"}, "train_layers"), ({"model_size": 8}, "model_size")]
    for params, message in bad:
        with pytest.raises(pydantic.ValidationError, match=message):
            TrainColorizerParams(**params)
    assert TrainColorizer.consumes and TrainColorizer.kind is StageKind.TRAIN
    stage = TrainColorizer(TrainColorizerParams(model_size=100, prior="data", epochs=4), StageContext(stage_id="c"))
    assert stage.side == 104 and stage.epochs() == 5  # one counting pass first
    assert stage.decode_hint().size == 104


def test_splits_follow_split_folders_or_a_stable_fraction(tmp_path):
    (tmp_path / "folders" / "train").mkdir(parents=True)
    stage = TrainColorizer(TrainColorizerParams(), StageContext(stage_id="c", input_root=tmp_path / "folders"))
    assert [stage.split_of(p) for p in ("train/a.jpg", "val/b.jpg", "test/c.jpg", "other/d.jpg", "e.jpg")] == [
        "train", "val", "val", None, None]
    flat = TrainColorizer(TrainColorizerParams(val_fraction=0.25), StageContext(stage_id="c", input_root=tmp_path))
    splits = [flat.split_of(f"photos/{i}.jpg") for i in range(400)]
    assert splits == [flat.split_of(f"photos/{i}.jpg") for i in range(400)]
    assert 0.18 < splits.count("val") / 400 < 0.32


def test_importing_the_trainer_does_not_import_torch():
    code = "import sys, imgflow_colorize.train; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


def test_greyscale_pictures_are_left_out_and_counted(untrained):
    grey = item_of(np.repeat(colour_sets.palette_image(SIDE, 1).mean(2, keepdims=True), 3, 2).astype(np.uint8),
                   "grey.png")
    _, _, colour = untrained.prepare([grey, *palette_items(1, 2)])
    assert colour.tolist() == [False, True]
    untrained.start_epoch(0)
    with torch.no_grad():  # validation only: the shared trainer must not train
        untrained.consume(Batch([grey, *palette_items(2, 2)], split="val"))
        untrained.consume(Batch([grey], split="val"))
    metrics = untrained.end_epoch(0)
    assert metrics["grey_skipped_val"] == 2 and untrained.last_strip_png is not None
    assert metrics["val_ab_error"] > 0 and "loss" not in metrics  # no training batch this epoch
    untrained.start_epoch(1)
    assert untrained.consume(Batch([grey], split="train")) == {"grey_skipped": 1.0}
    with pytest.raises(ConfigError, match="all 1 training pictures of epoch 2 are greyscale .*fix: "):
        untrained.end_epoch(1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", ["eccv16", "siggraph17"])
def test_training_on_cuda_uses_bfloat16_and_saves_cpu_loadable_state(model):
    stage = TrainColorizer(TrainColorizerParams(model=model, weights="random", model_size=64, lr=1e-3),
                           StageContext(stage_id="colorizer"))
    torch.manual_seed(0)
    stage.setup(torch.device("cuda"))
    assert stage.amp_dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else None)
    batch = Batch(palette_items(4, 0, size=64), split="train")
    for item in batch.items:
        item.image = item.image.cuda()
    losses_seen = [stage.consume(batch)["loss"] for _ in range(3)]
    assert all(math.isfinite(v) for v in losses_seen) and losses_seen[-1] < losses_seen[0]
    buffer = io.BytesIO()
    torch.save(stage.state_dict(), buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu", weights_only=True)
    assert all(v.device.type == "cpu" for v in state["model"].values())
    plain = torch.load(io.BytesIO(stage.checkpoint_bytes()), weights_only=True)
    networks.build(model).load_state_dict(plain, strict=True)


def test_siggraph17_fine_tune_feeds_hints_keeps_taking_them_and_resumes_exactly(tmp_path, hinted_weights):
    """A SIGGRAPH17 state that copies hints to the output (a stand-in for the official weights,
    which take hints) is fine-tuned on palette pictures. Its training input holds L, the simulated
    hints of each item's own generator and the mask, in the layout ``colorize`` builds from a hint
    file. Halfway its state is saved and loaded into another trainer, which must go on to
    identical weights. After fine-tuning, colorize with a hint file still moves the colour at the
    hint toward the hinted colour."""
    params = {"model": "siggraph17", "weights": str(hinted_weights), "lr": 1e-3}
    data = [Batch(palette_items(4, 10 * b), split="train") for b in range(6)]
    first = trainer(**params)
    seen: list[torch.Tensor] = []
    hook = first.net.model1.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    assert first.consume(data[0])["loss"] > 0
    hook.remove()
    (x,) = seen
    lab_small = lab.rgb2lab(torch.stack([i.image for i in data[0].items]))
    assert torch.allclose(x[:, 0], (lab_small[:, 0] - 50) / 100, atol=1e-5)
    for row, item, lab_image in zip(x, data[0].items, lab_small, strict=True):
        planes, mask, _ = hints.simulate_hints(lab_image[1:], item.generator("colorizer"), p=0.125, max_patch=9)
        assert torch.allclose(row[1:3], planes, atol=1e-5) and torch.equal(row[3:], mask)
    assert float(x[:, 3].sum()) > 0  # these four pictures drew hints

    for batch in data[1:3]:
        first.consume(batch)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    went_on = [first.consume(batch) for batch in data[3:]]
    second = trainer(seed=5, **params)  # the initial weights: the state must replace them
    second.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert [second.consume(batch) for batch in data[3:]] == went_on
    for key, value in first.net.state_dict().items():
        assert torch.equal(value, second.net.state_dict()[key]), key

    (tmp_path / "tuned.pth").write_bytes(first.checkpoint_bytes())
    (tmp_path / "hints").mkdir()
    target = [60.0, -40.0]
    (tmp_path / "hints" / "with.json").write_text(json.dumps({"points": [{"x": 30, "y": 34, "ab": target}]}))
    picture = palette_items(1, 500, colour_sets.PALETTE_B, size=64)[0]
    stage = Colorize(ColorizeParams(model="siggraph17", model_size=64, weights="tuned.pth", hints="hints",
                                    autocast="off"), StageContext(stage_id="colorize", pipeline_dir=tmp_path))
    stage.setup(CPU)
    planes, mask, _ = stage.hint_planes(Item(source="with.png", image=picture.image, meta=picture.meta))
    assert float(mask[0, 34, 30]) == 1.0 and float(mask.sum()) == 1.0  # the layout the trainer fed
    assert torch.allclose(planes[:, 34, 30], torch.tensor(target) / 110)
    batch = Batch([Item(source=f"{name}.png", image=picture.image.clone(), meta=picture.meta)
                   for name in ("with", "without")])  # without.json does not exist
    with torch.inference_mode():
        stage.process(batch)
    assert [i.results["colorize"]["hints"] for i in batch.items] == [1, 0]
    distance = {i.source[:-4]: float((lab.rgb2lab(i.image)[1:, 34, 30] - torch.tensor(target)).norm())
                for i in batch.items}
    assert distance["with"] < 0.5 * distance["without"], distance


def hint_taking_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """SIGGRAPH17 weights whose hint planes reach the output: the hint ab's positive and negative
    parts are carried on four channels through model1, the model1short10 skip and model10 to
    model_out (centre taps only, so exactly at the hinted pixels); model10up is cut on those
    channels. Elsewhere the random initialisation stays."""
    torch.manual_seed(seed)
    state = networks.build("siggraph17").state_dict()

    def carry(weight: torch.Tensor, bias: torch.Tensor, sources: list[tuple[int, float]]) -> None:
        weight[:4] = 0
        bias[:4] = 0
        for channel, (source, sign) in enumerate(sources):
            weight[channel, source, 1, 1] = sign

    carry(state["model1.0.weight"], state["model1.0.bias"], [(1, 1.0), (1, -1.0), (2, 1.0), (2, -1.0)])
    for name in ("model1.2", "model1short10.0", "model10.1"):
        carry(state[f"{name}.weight"], state[f"{name}.bias"], [(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0)])
    state["model10up.0.weight"][:, :4] = 0
    state["model10up.0.bias"][:4] = 0
    out = state["model_out.0.weight"]
    out.zero_()
    out[0, 0], out[0, 1], out[1, 2], out[1, 3] = 1.0, -1.0, 1.0, -1.0
    state["model_out.0.bias"].zero_()
    return state


# ---------------------------------------------------------------------------------------------
# through the CLI: learning, the checkpoint in colorize, the files, kill and resume
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_plugins() -> Iterator[None]:
    """The colorize and augment plugins registered in-process, unless their entry points already
    loaded them (the CLI runs below use train.colorizer and flip_horizontal)."""
    import imgflow_augment
    import imgflow_colorize

    from imgflow import plugins
    from imgflow.testing import register_plugin

    with contextlib.ExitStack() as stack:
        for module, name in ((imgflow_colorize, "colorize"), (imgflow_augment, "augment")):
            if not plugins.get_plugin_manager().is_registered(module):
                stack.enter_context(register_plugin(module, name=name))
        yield


@pytest.fixture(scope="module")
def palette_set(tmp_path_factory) -> Path:
    return colour_sets.write_palette_set(tmp_path_factory.mktemp("palette"), train=16, val=4, size=SIDE)


def training_pipeline(tmp_path: Path, data: Path, name: str, **run) -> Path:
    return write_pipeline(tmp_path / f"{name}.toml", input=data, output=tmp_path / name,
                          run={"batch_size": 2, "device": "cpu", "seed": 0, **run},
                          stages=[{"use": "flip_horizontal", "p": 0.5},
                                  {"use": "train.colorizer", "id": "colorizer", **TRAINER, "prior": "data"}])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, palette_set, cli_plugins) -> Path:
    """One uninterrupted training run through the CLI; its output folder."""
    folder = tmp_path_factory.mktemp("trained")
    code, text = invoke("run", training_pipeline(folder, palette_set, "out"))
    assert code == 0, text
    return folder / "out"


def test_short_training_from_random_weights_beats_the_untrained_network(trained, palette_set, untrained, tmp_path):
    rows = epoch_rows(trained)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]  # the colour-counting pass, then 2 epochs
    assert rows[0]["loss"] == "" and float(rows[0]["prior_bins_seen"]) > 5
    first, last = float(rows[0]["val_ab_error"]), float(rows[-1]["val_ab_error"])
    assert last < 0.75 * first, (first, last)
    assert float(rows[-1]["loss"]) < float(rows[1]["loss"])
    assert float(rows[-1]["val_colourfulness"]) > float(rows[0]["val_colourfulness"])
    for key in ("val_loss", "val_colourfulness_truth", "images_per_s"):
        assert float(rows[-1][key]) > 0
    # the checkpoint loads strictly into colorize, and colorizes the validation pictures better
    (tmp_path / "untrained.pth").write_bytes(untrained.checkpoint_bytes())
    state = torch.load(trained / "colorizer.pth", weights_only=True)
    assert len(state) == 82 and state.keys() == networks.build("eccv16").state_dict().keys()
    truths = [i.image for i in (item_of(np.asarray(Image.open(p)), p.name)
                                for p in sorted((palette_set / "val").glob("*.png")))]
    errors = {}
    for name, weights in (("trained", trained / "colorizer.pth"), ("untrained", tmp_path / "untrained.pth")):
        stage = Colorize(ColorizeParams(model="eccv16", model_size=64, weights=str(weights), autocast="off"),
                         StageContext(stage_id="colorize"))
        stage.setup(CPU)
        batch = Batch([Item(source=f"{k}.png", image=t.clone(), meta=ImageMeta(SIDE, SIDE, "RGB", "PNG"))
                       for k, t in enumerate(truths)])
        with torch.inference_mode():
            stage.process(batch)
        errors[name] = ab_error_of([i.image for i in batch.items], truths)
    assert errors["trained"] < 0.8 * errors["untrained"], errors


def test_training_writes_strips_curves_and_manifest_records(trained):
    for epoch in (1, 2, 3):
        strip = Image.open(trained / "previews" / "colorizer" / f"epoch_{epoch:03d}.png")  # previews/<stage id>/
        assert strip.size == (3 * SIDE + 4, 3 * SIDE + 4) and strip.mode == "RGB"  # 3 images x grey|pred|truth
    strip = np.asarray(Image.open(trained / "previews" / "colorizer" / "epoch_003.png")).astype(int)
    grey, truth = strip[:SIDE, :SIDE], strip[:SIDE, 2 * (SIDE + 2):]
    assert np.abs(grey - grey[..., :1]).max() <= 1 and np.abs(truth - truth[..., :1]).max() > 40
    assert (trained / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = (trained / "steps.csv").read_text().splitlines()
    assert steps[0].startswith("epoch,step") and len(steps) == 1 + 2 * 8  # no step rows while counting
    records = [json.loads(line) for line in (trained / "manifest.jsonl").read_text().splitlines()]
    done = sorted(r["input"] for r in records if r.get("status") == "done")
    assert len(done) == 20 and done[0] == "train/p_000.png"


def test_training_resumes_after_sigkill_to_the_uninterrupted_weights(trained, palette_set, tmp_path):
    """SIGKILL a real training process once it has written its first checkpoint (after the
    colour-counting pass); the rerun resumes from its last checkpoint and ends with exactly the
    uninterrupted run's weights and validation figures."""
    killed = training_pipeline(tmp_path, palette_set, "killed", checkpoint_every=20)
    output = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([IMGFLOW, "run", str(killed)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        signal_file = output / "checkpoints" / "colorizer.pt"
        while not signal_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert signal_file.exists(), proc.communicate()[0].decode(errors="replace") if proc.poll() is not None else ""
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    saved = torch.load(output / "checkpoints" / "colorizer.pt", map_location="cpu", weights_only=True)
    assert saved["cursor"]["finished"] is False and not (output / "colorizer.pth").exists()
    code, text = invoke("run", killed)
    assert code == 0 and "resuming" in text, text
    reference = torch.load(trained / "colorizer.pth", weights_only=True)
    resumed = torch.load(output / "colorizer.pth", weights_only=True)
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), key
    assert [r["val_ab_error"] for r in epoch_rows(output)] == [r["val_ab_error"] for r in epoch_rows(trained)]
