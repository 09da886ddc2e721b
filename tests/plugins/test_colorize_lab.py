"""sRGB <-> Lab in torch (plugins/imgflow_colorize/lab.py) against scikit-image.

The colorizers were trained on scikit-image's Lab, so the tolerance is the one that matters to
the eye: 0.5 Delta-E (CIE76) on 8-bit inputs, on real photographs, random colours and every
grey level.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import skimage.color
import skimage.data
import torch

from imgflow_colorize import lab

DELTA_E = 0.5


def to_tensor(rgb8: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(rgb8).permute(2, 0, 1).float() / 255.0


def to_hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).double().numpy()


def delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a - b) ** 2).sum(axis=-1))


def random_colours(n: int = 64 * 64) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, size=(64, n // 64, 3), dtype=np.uint8)


def grey_ramp() -> np.ndarray:
    levels = np.arange(256, dtype=np.uint8).reshape(1, 256, 1)
    return np.repeat(levels, 3, axis=2)


SAMPLES = {
    "astronaut": skimage.data.astronaut,
    "coffee": skimage.data.coffee,
    "chelsea": skimage.data.chelsea,
    "random": random_colours,
    "grey_ramp": grey_ramp,
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_rgb2lab_matches_skimage(name):
    rgb8 = SAMPLES[name]()
    ours = to_hwc(lab.rgb2lab(to_tensor(rgb8)))
    ref = skimage.color.rgb2lab(rgb8)
    assert delta_e(ours, ref).max() < DELTA_E
    if name == "grey_ramp":  # greys have no chroma, and L rises with every level
        assert np.abs(ours[..., 1:]).max() < 0.05
        assert np.all(np.diff(ours[0, :, 0]) > 0)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_lab2rgb_matches_skimage(name):
    ref_lab = skimage.color.rgb2lab(SAMPLES[name]())
    ours = to_hwc(lab.lab2rgb(torch.from_numpy(ref_lab).permute(2, 0, 1).float()))
    ref = skimage.color.lab2rgb(ref_lab)
    # compare where it matters: the colours, seen in Lab
    assert delta_e(skimage.color.rgb2lab(ours), skimage.color.rgb2lab(ref)).max() < DELTA_E
    assert np.abs(ours - ref).max() < 1e-3


def test_lab2rgb_clips_out_of_gamut_like_skimage():
    rng = np.random.default_rng(3)
    lab_values = np.stack([rng.uniform(0, 100, (40, 40)), rng.uniform(-127, 127, (40, 40)),
                           rng.uniform(-127, 127, (40, 40))], axis=-1)
    with warnings.catch_warnings():  # skimage warns about negative Z it clips
        warnings.simplefilter("ignore")
        ref = skimage.color.lab2rgb(lab_values)
    ours = lab.lab2rgb(torch.from_numpy(lab_values).permute(2, 0, 1).float())
    assert float(ours.min()) >= 0.0 and float(ours.max()) <= 1.0
    assert np.abs(to_hwc(ours) - ref).max() < 1e-3
    # most of these random Lab values are out of gamut, so clipping really happened
    assert (ref == 0).mean() + (ref == 1).mean() > 0.2


def test_batched_equals_one_image_at_a_time():
    images = torch.stack([to_tensor(skimage.data.astronaut()[i::8, ::8]) for i in range(3)])
    batched = lab.rgb2lab(images)
    for i in range(3):
        assert torch.equal(batched[i], lab.rgb2lab(images[i]))
    back = lab.lab2rgb(batched)
    for i in range(3):
        assert torch.equal(back[i], lab.lab2rgb(batched[i]))


def test_round_trip_keeps_16_bit_levels():
    """rgb -> lab -> rgb must not lose the precision of 16-bit inputs (steps of 1/65535)."""
    levels = torch.arange(0, 65536, 7, dtype=torch.float32) / 65535.0
    grey = levels.view(1, 1, -1).expand(3, 1, -1)
    back = lab.lab2rgb(lab.rgb2lab(grey))
    assert (back - grey).abs().max() < 0.5 / 65535.0
    assert torch.equal(torch.round(back * 65535), torch.round(grey * 65535))


def test_float64_inputs_stay_float64_and_agree():
    rgb8 = torch.tensor([[[10]], [[200]], [[90]]], dtype=torch.uint8)
    as_float = lab.rgb2lab(rgb8.float() / 255.0)
    assert lab.rgb2lab(rgb8.double() / 255.0).dtype == torch.float64
    assert torch.allclose(lab.rgb2lab(rgb8.double() / 255.0).float(), as_float, atol=1e-4)
    ref = skimage.color.rgb2lab(np.array([[[10, 200, 90]]], dtype=np.uint8))
    assert delta_e(to_hwc(as_float), ref).max() < DELTA_E
