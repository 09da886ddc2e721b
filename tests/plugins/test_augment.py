"""Tests for the augmentation plugin (plugins/imgflow_augment).

The tensor ops are checked against torchvision.transforms.v2 (functional for fixed parameters,
and the v2 transform classes for whole random stages: our per-item generator is seeded like
torch's global generator there, so the same draws must give the same tensors). Tolerances:
flips, crops and resizes are exact; contrast and saturation within 2e-4 (torchvision weights red
0.2989, we use BT.601's 0.299); hue within 1e-5 (our HSV formulas differ, not by 1/255).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from imgflow import Batch, ImageMeta, Item, StageContext, StageKind
from imgflow import plugins as plugin_manager
from imgflow_augment import compose, ops, stages

REPO = Path(__file__).resolve().parents[2]
STAGE_NAMES = {
    "flip_horizontal",
    "flip_vertical",
    "random_resized_crop",
    "color_jitter",
    "resize",
    "center_crop",
    "augment",
}
JITTER = {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.5}  # the d2l.ai setting


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def make_image(h: int, w: int, seed: int = 0, channels: int = 3) -> torch.Tensor:
    """A reproducible random image in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(channels, h, w, generator=gen)


def make_item(
    source: str, h: int = 24, w: int = 32, seed: int = 0, alpha: bool = False, pipeline_seed: int = 0
) -> Item:
    image = make_image(h, w, seed)
    return Item(
        source=source,
        image=image,
        meta=ImageMeta(width=w, height=h, mode="RGBA" if alpha else "RGB", format="PNG"),
        alpha=make_image(h, w, seed + 1000, channels=1) if alpha else None,
        seed=pipeline_seed,
    )


def make_batch(n: int = 4, h: int = 24, w: int = 32, alpha: bool = False, pipeline_seed: int = 0) -> Batch:
    return Batch(
        [
            make_item(f"dir/img{i}.png", h, w, seed=i, alpha=alpha, pipeline_seed=pipeline_seed)
            for i in range(n)
        ]
    )


def build(cls: type[stages.Augmenter], stage_id: str = "s1", seed: int = 0, **params) -> stages.Augmenter:
    stage = cls(cls.Params(**params), StageContext(stage_id=stage_id, seed=seed))
    stage.setup(torch.device("cpu"))
    return stage


def run(stage: stages.Augmenter, batch: Batch) -> Batch:
    with torch.inference_mode():
        return stage.process(batch)


def torchvision_reference(transform, item: Item, stage_id: str) -> torch.Tensor:
    """What torchvision's random transform gives when torch's global RNG is seeded like the item."""
    torch.manual_seed(item.item_seed(stage_id))
    return transform(item.image)


# ---------------------------------------------------------------------------------------------
# tensor ops against torchvision.transforms.v2.functional (fixed parameters)
# ---------------------------------------------------------------------------------------------


def test_flips_match_torchvision_and_honour_the_mask():
    x = torch.stack([make_image(5, 7, s) for s in range(3)])
    mask = [True, False, True]
    h, v = ops.hflip(x, mask), ops.vflip(x, mask)
    for i, flipped in enumerate(mask):
        assert torch.equal(h[i], TF.horizontal_flip(x[i]) if flipped else x[i])
        assert torch.equal(v[i], TF.vertical_flip(x[i]) if flipped else x[i])


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("box", [(3, 5, 20, 25), (0, 0, 40, 60), (10, 1, 7, 30)])
def test_resized_crop_with_fixed_box_matches_torchvision(interpolation, box):
    x = make_image(40, 60).unsqueeze(0)
    ours = ops.resized_crop(x, box, (16, 18), interpolation, antialias=True)
    ref = TF.resized_crop(
        x, *box, size=[16, 18], interpolation=T.InterpolationMode(interpolation), antialias=True
    )
    assert (ours - ref.clamp(0, 1)).abs().max().item() == 0.0


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("out", [(20, 31), (80, 100)])
def test_resize_matches_torchvision_up_and_down(interpolation, out):
    x = torch.stack([make_image(37, 53, s) for s in range(2)])
    ours = ops.resize(x, out, interpolation)
    ref = TF.resize(x, list(out), interpolation=T.InterpolationMode(interpolation), antialias=True)
    assert ours.shape[-2:] == out
    assert (ours - ref.clamp(0, 1)).abs().max().item() == 0.0


def test_bicubic_resize_stays_in_unit_range():
    x = (torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8) % 2).expand(1, 3, 8, 8)  # hard edges
    assert TF.resize(x, [30, 30], interpolation=T.InterpolationMode.BICUBIC).max() > 1.0  # it does overshoot
    out = ops.resize(x, (30, 30), "bicubic")
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_area_resize_averages_blocks():
    x = make_image(8, 12).unsqueeze(0)
    out = ops.resize(x, (4, 6), "area")
    expected = x.reshape(1, 3, 4, 2, 6, 2).mean(dim=(3, 5))
    assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("h", "w", "size", "edge"),
    [
        (1200, 1600, 800, "longer"),
        (1600, 1200, 800, "longer"),
        (1200, 1600, 600, "shorter"),
        (37, 53, 20, "shorter"),
        (53, 37, 20, "shorter"),
        (37, 53, 20, "longer"),
        (10, 10, 7, "longer"),
    ],
)
def test_resize_output_size_follows_torchvision_rules(h, w, size, edge):
    x = torch.zeros(1, 3, h, w)
    if edge == "shorter":
        ref = TF.resize(x, [size], antialias=False).shape[-2:]
    else:
        ref = TF.resize(x, None, max_size=size, antialias=False).shape[-2:]
    assert ops.resize_output_size(h, w, size, edge) == tuple(ref)


@pytest.mark.parametrize("size", [(10, 10), (9, 14), (3, 5), (40, 20), (23, 60), (50, 50), (21, 31)])
def test_center_crop_matches_torchvision_including_zero_padding(size):
    x = torch.stack([make_image(21, 30, s) for s in range(2)])
    ours = ops.center_crop(x, size)
    assert torch.equal(ours, TF.center_crop(x, list(size)))


@pytest.mark.parametrize("factor", [0.0, 0.3, 1.0, 1.7])
def test_brightness_contrast_saturation_match_torchvision(factor):
    x = torch.stack([make_image(17, 23, s) for s in range(3)])
    assert torch.equal(ops.adjust_brightness(x, factor), TF.adjust_brightness(x, factor))
    assert (ops.adjust_contrast(x, factor) - TF.adjust_contrast(x, factor)).abs().max() < 2e-4
    assert (ops.adjust_saturation(x, factor) - TF.adjust_saturation(x, factor)).abs().max() < 2e-4


@pytest.mark.parametrize("hue", [-0.5, -0.3, -0.01, 0.0, 0.1, 0.25, 0.5])
def test_hue_matches_torchvision_within_1e5(hue):
    x = torch.stack([make_image(17, 23, s) for s in range(3)])
    # include pure greys, primaries and secondaries, where hue formulas hit their edge cases
    corners = torch.tensor(
        [
            [0, 0, 0],
            [1, 1, 1],
            [0.5, 0.5, 0.5],
            [1, 0, 0],
            [0, 1, 0],
            [0, 0, 1],
            [1, 1, 0],
            [0, 1, 1],
            [1, 0, 1],
        ],
        dtype=torch.float32,
    )
    x[0, :, 0, : len(corners)] = corners.T
    assert (ops.adjust_hue(x, hue) - TF.adjust_hue(x, hue)).abs().max() < 1e-5


def test_colour_ops_take_one_factor_per_item():
    x = torch.stack([make_image(6, 6, s) for s in range(3)])
    factors = [0.2, 1.0, 1.5]
    out = ops.adjust_saturation(x, factors)
    for i, f in enumerate(factors):
        assert torch.allclose(out[i], ops.adjust_saturation(x[i : i + 1], f)[0])
    assert torch.equal(out[1], x[1])


def test_colour_ops_clamp_to_unit_range():
    x = make_image(16, 16).unsqueeze(0)
    for op in (ops.adjust_brightness, ops.adjust_contrast, ops.adjust_saturation):
        out = op(x, 3.0)
        assert out.min() >= 0.0 and out.max() <= 1.0
    assert (ops.adjust_brightness(x, 3.0) == 1.0).any()  # the clamp was actually needed


def test_crop_box_fallback_centres_a_ratio_clipped_box():
    gen = torch.Generator().manual_seed(0)
    # a 10 x 100 strip can never hold a full-area square: all ten tries fail
    assert ops.draw_resized_crop_box(gen, 10, 100, (1.0, 1.0), (1.0, 1.0)) == (0, 45, 10, 10)
    assert ops.draw_resized_crop_box(gen, 100, 10, (1.0, 1.0), (1.0, 1.0)) == (45, 0, 10, 10)
    assert ops.draw_resized_crop_box(gen, 30, 40, (1.0, 1.0), (0.5, 2.0)) == (0, 0, 30, 40)


# ---------------------------------------------------------------------------------------------
# whole random stages against torchvision's transforms (same draws, same tensors)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "params", "reference"),
    [
        (stages.FlipHorizontal, {"p": 0.5}, T.RandomHorizontalFlip(0.5)),
        (stages.FlipVertical, {"p": 0.3}, T.RandomVerticalFlip(0.3)),
        (
            stages.RandomResizedCrop,
            {"size": [20, 20], "scale": [0.1, 1.0], "ratio": [0.5, 2.0]},
            T.RandomResizedCrop((20, 20), scale=(0.1, 1.0), ratio=(0.5, 2.0), antialias=True),
        ),
        (
            stages.RandomResizedCrop,
            {"size": 12, "interpolation": "bicubic"},
            T.RandomResizedCrop(12, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        ),
    ],
    ids=["hflip", "vflip", "rrc-d2l", "rrc-bicubic"],
)
def test_random_geometric_stages_reproduce_torchvision_draws(cls, params, reference):
    batch = make_batch(8, 24, 32)
    originals = [item.image for item in batch]
    expected = [torchvision_reference(reference, item, "s1") for item in batch]
    out = run(build(cls, **params), batch)
    for item, exp in zip(out, expected, strict=True):
        assert (item.image - exp.clamp(0, 1)).abs().max().item() == 0.0
    if cls is stages.FlipHorizontal:  # both outcomes happened, so the test saw real draws
        assert len({torch.equal(i.image, o) for i, o in zip(out, originals, strict=True)}) == 2


def test_random_resized_crop_reproduces_torchvision_on_a_wide_strip():
    # scale 0.9-1 with square-ish ratios rarely fits in a 6 x 80 strip, so the fallback runs too
    batch = make_batch(6, 6, 80)
    ref = T.RandomResizedCrop(5, scale=(0.9, 1.0), ratio=(0.9, 1.1), antialias=True)
    expected = [torchvision_reference(ref, item, "s1") for item in batch]
    out = run(build(stages.RandomResizedCrop, size=5, scale=[0.9, 1.0], ratio=[0.9, 1.1]), batch)
    for item, exp in zip(out, expected, strict=True):
        assert torch.equal(item.image, exp)


@pytest.mark.parametrize(
    "params",
    [JITTER, {"brightness": 0.5}, {"hue": 0.5}, {"contrast": [0.2, 0.9], "saturation": [1.0, 3.0]}],
    ids=["all", "brightness", "hue", "pairs"],
)
def test_color_jitter_reproduces_torchvision_draws_and_order(params):
    batch = make_batch(8, 16, 20)
    reference = T.ColorJitter(**params)
    expected = [torchvision_reference(reference, item, "s1") for item in batch]
    out = run(build(stages.ColorJitter, **params), batch)
    for item, exp in zip(out, expected, strict=True):
        assert (item.image - exp).abs().max() < 5e-4
        assert item.image.min() >= 0 and item.image.max() <= 1


# ---------------------------------------------------------------------------------------------
# deterministic stages
# ---------------------------------------------------------------------------------------------


def test_resize_stage_longer_edge_like_the_benchmark():
    item = make_item("big.jpg", 1200, 1600)
    out = run(build(stages.Resize, size=800, edge="longer"), Batch([item]))
    assert tuple(out.items[0].image.shape) == (3, 600, 800)
    ref = TF.resize(make_image(1200, 1600).unsqueeze(0), [600, 800], antialias=True)[0]
    assert torch.equal(out.items[0].image, ref)


def test_resize_stage_shorter_edge_and_pair():
    out = run(build(stages.Resize, size=12), make_batch(2, 24, 32))
    assert all(tuple(i.image.shape) == (3, 12, 16) for i in out)
    out = run(build(stages.Resize, size=[10, 7], interpolation="nearest"), make_batch(2, 24, 32))
    assert all(tuple(i.image.shape) == (3, 10, 7) for i in out)


def test_center_crop_stage_pads_small_images_and_alpha():
    batch = Batch(
        [make_item("small.png", 6, 8, alpha=True), make_item("large.png", 30, 40, seed=1, alpha=True)]
    )
    out = run(build(stages.CenterCrop, size=[10, 12]), batch)
    small, large = out.items
    assert tuple(small.image.shape) == (3, 10, 12) and tuple(small.alpha.shape) == (1, 10, 12)
    assert torch.equal(small.alpha, TF.center_crop(make_image(6, 8, 1000, 1), [10, 12]))
    assert small.alpha[:, 0].sum() == 0  # padded rows are transparent
    assert torch.equal(large.image, TF.center_crop(make_image(30, 40, 1), [10, 12]))


# ---------------------------------------------------------------------------------------------
# reproducibility contract
# ---------------------------------------------------------------------------------------------

RANDOM_STAGES = [
    (stages.FlipHorizontal, {}),
    (stages.RandomResizedCrop, {"size": 16, "scale": [0.1, 1.0], "ratio": [0.5, 2.0]}),
    (stages.ColorJitter, JITTER),
    (
        compose.Augment,
        {"copies": 2, "ops": [{"op": "random_resized_crop", "size": 16}, {"op": "color_jitter", **JITTER}]},
    ),
]


@pytest.mark.parametrize(("cls", "params"), RANDOM_STAGES, ids=lambda v: getattr(v, "name", ""))
def test_same_seed_gives_identical_tensors(cls, params):
    a = run(build(cls, **params), make_batch(4))
    b = run(build(cls, **params), make_batch(4))
    assert [i.key for i in a] == [i.key for i in b]
    assert all(torch.equal(x.image, y.image) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(("cls", "params"), RANDOM_STAGES[1:], ids=lambda v: getattr(v, "name", ""))
def test_items_in_one_batch_never_share_a_draw(cls, params):
    # every item starts from the same pixels, so any difference comes from the draw
    batch = Batch([make_item(f"img{i}.png", seed=7) for i in range(6)])
    out = run(build(cls, **params), batch)
    images = [i.image for i in out]
    assert all(not torch.equal(images[a], images[b]) for a in range(len(images)) for b in range(a))


@pytest.mark.parametrize(("cls", "params"), RANDOM_STAGES, ids=lambda v: getattr(v, "name", ""))
def test_batch_of_four_equals_four_batches_of_one_in_any_order(cls, params):
    together = run(build(cls, **params), make_batch(4))
    stage = build(cls, **params)
    singles = [run(stage, Batch([item])).items for item in reversed(make_batch(4).items)]
    by_key = {i.key: i.image for items in singles for i in items}
    assert len(by_key) == len(together)
    for item in together:
        assert torch.allclose(item.image, by_key[item.key], atol=1e-6)


@pytest.mark.parametrize(("cls", "params"), RANDOM_STAGES[1:], ids=lambda v: getattr(v, "name", ""))
def test_pipeline_seed_and_stage_id_change_the_draw(cls, params):
    base = run(build(cls, **params), make_batch(2))
    other_seed = run(build(cls, **params), make_batch(2, pipeline_seed=1))
    other_stage = run(build(cls, stage_id="s2", **params), make_batch(2))
    for a, b, c in zip(base, other_seed, other_stage, strict=True):
        assert not torch.equal(a.image, b.image)
        assert not torch.equal(a.image, c.image)


# ---------------------------------------------------------------------------------------------
# augment
# ---------------------------------------------------------------------------------------------


def test_augment_fans_out_to_named_distinct_copies():
    stage = build(
        compose.Augment,
        copies=3,
        ops=[{"op": "random_resized_crop", "size": 12}, {"op": "color_jitter", **JITTER}],
    )
    assert stage.fans_out
    out = run(stage, make_batch(2))
    assert [i.key for i in out] == [f"dir/img{n}.png_aug{k}" for n in range(2) for k in range(3)]
    assert [i.variant for i in out] == ["_aug0", "_aug1", "_aug2"] * 2
    assert all(i.source.startswith("dir/img") and tuple(i.image.shape) == (3, 12, 12) for i in out)
    images = [i.image for i in out]
    assert all(not torch.equal(images[a], images[b]) for a in range(6) for b in range(a))


def test_augment_single_copy_still_gets_a_variant_and_keeps_inputs_untouched():
    batch = make_batch(2)
    before = [i.image.clone() for i in batch]
    out = run(build(compose.Augment, ops=[{"op": "color_jitter", **JITTER}]), batch)
    assert [i.variant for i in out] == ["_aug0", "_aug0"]
    assert all(torch.equal(i.image, b) for i, b in zip(batch, before, strict=True))


def test_augment_p_zero_never_applies_and_p_one_always_does():
    batch = make_batch(3, alpha=True)
    never = build(
        compose.Augment,
        copies=5,
        ops=[{"op": "flip_horizontal", "p": 0}, {"op": "color_jitter", "p": 0.0, **JITTER}],
    )
    out = run(never, batch)
    assert len(out) == 15
    for item in out:
        src = next(i for i in batch if i.source == item.source)
        assert torch.equal(item.image, src.image) and torch.equal(item.alpha, src.alpha)
    out = run(build(compose.Augment, copies=5, ops=[{"op": "flip_vertical", "p": 1}]), make_batch(3))
    for item in out:
        src = next(i for i in make_batch(3) if i.source == item.source)
        assert torch.equal(item.image, src.image.flip(-2))


def test_augment_flip_gate_is_the_flip_probability():
    # {op = flip_horizontal} flips about half of the copies (its own default p), not a quarter
    batch = Batch([make_item(f"f{i}.png", 4, 6, seed=i) for i in range(50)])
    out = run(build(compose.Augment, copies=4, ops=[{"op": "flip_horizontal"}]), batch)
    flipped = sum(not torch.equal(o.image, make_image(4, 6, int(o.source[1:-4]))) for o in out)
    assert 70 <= flipped <= 130  # 200 copies at p=0.5: mean 100, sd ~7


def test_augment_applies_ops_in_order_on_changing_sizes():
    ops_list = [
        {"op": "resize", "size": [20, 30]},
        {"op": "center_crop", "size": 10},
        {"op": "flip_horizontal", "p": 1.0},
    ]
    out = run(build(compose.Augment, ops=ops_list), make_batch(1, 24, 32))
    expected = TF.horizontal_flip(
        TF.center_crop(TF.resize(make_image(24, 32).unsqueeze(0), [20, 30]), [10, 10])
    )
    assert torch.equal(out.items[0].image, expected[0])


def test_augment_unknown_op_suggests_the_closest():
    with pytest.raises(ValidationError) as err:
        compose.AugmentParams(ops=[{"op": "flip_horizontal"}, {"op": "colour_jitter"}])
    assert "ops[1]: unknown op 'colour_jitter' (did you mean 'color_jitter'?)" in str(err.value)
    with pytest.raises(ValidationError, match="missing 'op'"):
        compose.AugmentParams(ops=[{"p": 0.5}])


def test_augment_bad_op_params_name_the_key_and_report_all_problems():
    with pytest.raises(ValidationError) as err:
        compose.AugmentParams(
            ops=[
                {"op": "random_resized_crop", "size": 200, "scale": [0.5, 0.1]},
                {"op": "color_jitter", "hue": 0.8, "sharpness": 2},
                {"op": "resize"},
                {"op": "flip_vertical", "p": 1.5},
            ]
        )
    text = str(err.value)
    assert "ops[0].scale (random_resized_crop): expected 0 < min <= max <= 1" in text
    assert "ops[1].hue (color_jitter): expected a range inside [-0.5, 0.5]" in text
    assert "ops[1].sharpness (color_jitter): unknown parameter (fix: color_jitter takes p, brightness" in text
    assert "ops[2].size (resize): required" in text
    assert "ops[3].p (flip_vertical): expected a probability in [0, 1], got 1.5" in text


def test_augment_params_reject_bad_copies_and_empty_ops():
    with pytest.raises(ValidationError, match="copies"):
        compose.AugmentParams(copies=0, ops=[{"op": "flip_horizontal"}])
    with pytest.raises(ValidationError, match="ops"):
        compose.AugmentParams(ops=[])
    with pytest.raises(ValidationError, match="extra"):
        compose.AugmentParams(ops=[{"op": "flip_horizontal"}], copeis=2)


# ---------------------------------------------------------------------------------------------
# parameters of the single stages
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "params", "key"),
    [
        (stages.FlipHorizontal, {"p": 1.2}, "p"),
        (stages.RandomResizedCrop, {"size": 0}, "size"),
        (stages.RandomResizedCrop, {"size": [3, 4, 5]}, "size"),
        (stages.RandomResizedCrop, {"size": 8, "ratio": [2.0, 1.0]}, "ratio"),
        (stages.RandomResizedCrop, {"size": 8, "interpolation": "lanczos"}, "interpolation"),
        (stages.ColorJitter, {"brightness": -0.1}, "brightness"),
        (stages.ColorJitter, {"saturation": [1.5, 0.5]}, "saturation"),
        (stages.ColorJitter, {"hue": [-0.6, 0.1]}, "hue"),
        (stages.Resize, {"size": 10, "edge": "middle"}, "edge"),
        (stages.CenterCrop, {"size": "ten"}, "size"),
        (stages.CenterCrop, {"size": 10, "pad": True}, "pad"),
    ],
)
def test_bad_params_raise_pydantic_errors_naming_the_key(cls, params, key):
    with pytest.raises(ValidationError) as err:
        cls.Params(**params)
    assert err.value.errors()[0]["loc"][0] == key


def test_resize_edge_with_a_pair_is_rejected():
    with pytest.raises(ValidationError, match="'edge' only applies to an int size"):
        stages.ResizeParams(size=[10, 20], edge="longer")


def test_jitter_ranges_follow_torchvision_conventions():
    p = stages.ColorJitterParams(brightness=1.5, contrast=0.5, saturation=[0.0, 2.0], hue=0.25)
    assert p.ranges() == [(0.0, 2.5), (0.5, 1.5), (0.0, 2.0), (-0.25, 0.25)]
    assert stages.ColorJitterParams().ranges() == [None, None, None, None]


def test_every_param_has_a_description():
    for cls in compose.ALL:
        assert cls.kind is StageKind.AUGMENT and cls.description
        for name, field in cls.Params.model_fields.items():
            assert field.description, f"{cls.name}.{name} has no description"


# ---------------------------------------------------------------------------------------------
# mixed sizes and alpha
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "params"), RANDOM_STAGES + [(stages.Resize, {"size": 10})], ids=lambda v: getattr(v, "name", "")
)
def test_mixed_size_batches_match_per_item_runs(cls, params):
    sizes = [(24, 32), (17, 40), (24, 32), (30, 12)]

    def batch() -> Batch:
        return Batch(
            [make_item(f"m{i}.png", h, w, seed=i, alpha=i % 2 == 0) for i, (h, w) in enumerate(sizes)]
        )

    together = run(build(cls, **params), batch())
    singles = {i.key: i for item in batch() for i in run(build(cls, **params), Batch([item]))}
    for item in together:
        alone = singles[item.key]
        assert torch.allclose(item.image, alone.image, atol=1e-6)
        assert (item.alpha is None) == (alone.alpha is None)
        if item.alpha is not None:
            assert torch.equal(item.alpha, alone.alpha)


GEOMETRIC = [
    (stages.FlipHorizontal, {"p": 1.0}),
    (stages.FlipVertical, {"p": 1.0}),
    (stages.RandomResizedCrop, {"size": [14, 18]}),
    (stages.Resize, {"size": 9, "interpolation": "bicubic"}),
    (stages.CenterCrop, {"size": [30, 20]}),
    (
        compose.Augment,
        {"copies": 2, "ops": [{"op": "random_resized_crop", "size": 12}, {"op": "flip_vertical"}]},
    ),
]


@pytest.mark.parametrize(("cls", "params"), GEOMETRIC, ids=lambda v: getattr(v, "name", ""))
def test_alpha_follows_geometric_ops(cls, params):
    # alpha starts equal to the red channel: whatever moves red must move alpha the same way
    batch = make_batch(3, alpha=True)
    plain = Item(source="plain.png", image=make_image(24, 32, 9), meta=batch.items[0].meta)
    for item in batch:
        item.alpha = item.image[:1].clone()
    out = run(build(cls, **params), Batch([*batch.items, plain]))
    for item in out:
        if item.source == "plain.png":
            assert item.alpha is None
            continue
        assert item.alpha.shape == (1, *item.image.shape[-2:])
        assert torch.allclose(item.alpha, item.image[:1], atol=1e-6)


def test_colour_ops_leave_alpha_alone():
    batch = make_batch(3, alpha=True)
    alphas = [i.alpha.clone() for i in batch]
    out = run(build(stages.ColorJitter, **JITTER), batch)
    for item, alpha in zip(out, alphas, strict=True):
        assert torch.equal(item.alpha, alpha)


# ---------------------------------------------------------------------------------------------
# registration and import cost
# ---------------------------------------------------------------------------------------------


def test_hookimpl_registers_all_seven_stages(monkeypatch):
    monkeypatch.setenv(plugin_manager.ENV_LOAD_PLUGINS, "augment")
    plugin_manager.reset()
    try:
        registry = plugin_manager.stage_registry()
        assert STAGE_NAMES <= set(registry)
        for name in STAGE_NAMES:
            assert registry[name].plugin == "augment"
            assert registry[name].cls.name == name
        assert registry["augment"].cls is compose.Augment
    finally:
        plugin_manager.reset()


def test_importing_the_plugin_does_not_import_torch_or_torchvision():
    code = textwrap.dedent(
        """
        import sys
        import imgflow_augment
        from imgflow_augment import compose
        imgflow_augment.register_stages(lambda cls: None)
        compose.AugmentParams(ops=[{"op": "random_resized_crop", "size": 200}])
        assert "torch" not in sys.modules, "torch was imported"
        assert "torchvision" not in sys.modules, "torchvision was imported"
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------
# device
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("cls", "params"), RANDOM_STAGES + GEOMETRIC, ids=lambda v: getattr(v, "name", ""))
def test_cuda_results_match_cpu(cls, params):
    cpu = run(build(cls, **params), make_batch(4, alpha=True))
    batch = make_batch(4, alpha=True)
    for item in batch:
        item.image, item.alpha = item.image.cuda(), item.alpha.cuda()
    batch.device = torch.device("cuda")
    stage = build(cls, **params)
    stage.setup(torch.device("cuda"))
    gpu = run(stage, batch)
    for a, b in zip(cpu, gpu, strict=True):
        assert b.image.is_cuda and b.alpha.is_cuda
        assert torch.allclose(a.image, b.image.cpu(), atol=1e-4)
        assert torch.allclose(a.alpha, b.alpha.cpu(), atol=1e-4)
