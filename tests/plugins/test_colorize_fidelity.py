"""SIGGRAPH17/ECCV16 fidelity to the reference procedure (issue 17): the network's input is the
L of the image shrunk by Pillow's bicubic on 8 bits, so the final output matches the reference
within one level. Real photographs (scikit-image's samples), real Pillow, weights saved to disk
and loaded through the stage's own path."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import skimage.color
import skimage.data
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from imgflow import Batch, ImageMeta, Item, StageContext
from imgflow_colorize import networks, resample8
from imgflow_colorize.stage import Colorize, ColorizeParams

SIDE = 96  # the model side for these tests: small enough for 2 cores, large enough to shrink


def photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8: a sample photograph, grey ones as three equal channels."""
    pixels = getattr(skimage.data, name)()
    return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels[..., :3]


@pytest.mark.parametrize("name", ["camera", "coffee", "rocket", "page"])
@pytest.mark.parametrize("side", [256, 61, 700])
def test_matrix_resize_is_pillows_bicubic_bit_for_bit(name: str, side: int) -> None:
    """The device path (two float64 matrix products with Pillow's coefficients), run here on the
    CPU, gives Pillow's bytes: shrinking, shrinking to an odd size, and enlarging."""
    pixels = photo(name)
    expected = np.asarray(Image.fromarray(pixels).resize((side, side), Image.Resampling.BICUBIC))
    got = resample8._resize_matmul(torch.from_numpy(pixels).permute(2, 0, 1), side)
    assert np.array_equal(got.permute(1, 2, 0).numpy(), expected)


def test_cpu_resize_of_grey_resizes_one_channel_with_pillow() -> None:
    pixels = torch.from_numpy(photo("camera")).permute(2, 0, 1)  # a channels-last view, as decoded
    assert resample8.equal_channels(pixels)
    got = resample8.resize_u8(pixels, 100, grey=True)
    expected = np.asarray(Image.fromarray(photo("camera")).resize((100, 100), Image.Resampling.BICUBIC))
    assert got.shape == (3, 100, 100) and np.array_equal(got.permute(1, 2, 0).numpy(), expected)


def he_weights(model: str, path: Path) -> Path:
    """Random weights that paint strong colour (He-initialised convolutions): outputs then depend
    on every detail of the network's input, which is what this test needs to be sharp."""
    torch.manual_seed(3)
    net = networks.build(model)
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    with torch.no_grad():
        if model == "siggraph17":
            nn.init.normal_(net.model_out[0].weight, std=0.4)
        else:
            net.model8[-1].weight.mul_(50.0)  # a peaked distribution over the 313 bins
            nn.init.uniform_(net.model_out.weight, -1.0, 1.0)
    torch.save(net.state_dict(), path)
    return path


def reference_output(net: nn.Module, model: str, pixels: np.ndarray) -> np.ndarray:
    """SPEC §1's per-image procedure: skimage Lab, Pillow bicubic to the model side, one forward,
    bilinear ab back up, the original L, skimage lab2rgb, 8 bits."""
    lab_orig = skimage.color.rgb2lab(pixels)
    small = np.asarray(Image.fromarray(pixels).resize((SIDE, SIDE), Image.Resampling.BICUBIC))
    x = (torch.from_numpy(skimage.color.rgb2lab(small)[..., 0]).float()[None, None] - 50.0) / 100.0
    if model == "siggraph17":
        x = torch.cat([x, torch.zeros(1, 3, SIDE, SIDE)], dim=1)
    with torch.no_grad():
        ab = net(x) * 110.0
    ab = F.interpolate(ab, size=pixels.shape[:2], mode="bilinear", align_corners=False)[0]
    lab_out = np.concatenate([lab_orig[..., :1], ab.permute(1, 2, 0).double().numpy()], axis=-1)
    with warnings.catch_warnings():  # strong random colours: skimage clips negative Z, and says so
        warnings.simplefilter("ignore", UserWarning)
        rgb = skimage.color.lab2rgb(lab_out)
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.int64)


@pytest.mark.parametrize("model", ["siggraph17", "eccv16"])
def test_final_output_within_one_level_of_the_reference(model: str, tmp_path: Path) -> None:
    """The whole stage against the reference, on grey and colour photographs in one batch."""
    weights = he_weights(model, tmp_path / "w.pth")
    stage = Colorize(ColorizeParams(model=model, model_size=SIDE, weights=str(weights), autocast="off"),
                     StageContext("colorize", pipeline_dir=tmp_path))
    stage.setup(torch.device("cpu"))
    net = networks.build(model)
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.eval()
    names = ["camera", "coins", "chelsea"]
    pixels = [photo(name) for name in names]
    items = [Item(source=f"{name}.png", meta=ImageMeta(p.shape[1], p.shape[0], "RGB", "PNG"),
                  uint8=torch.from_numpy(p).permute(2, 0, 1)) for name, p in zip(names, pixels, strict=True)]
    with torch.inference_mode():
        out = stage.process(Batch(items))
    for name, p, item in zip(names, pixels, out.items, strict=True):
        ours = torch.round(item.image.clamp(0, 1) * 255).permute(1, 2, 0).numpy().astype(np.int64)
        ref = reference_output(net, model, p)
        diff = np.abs(ours - ref)
        chroma = np.abs(skimage.color.rgb2lab(ref.astype(np.uint8))[..., 1:]).mean()
        assert chroma > 3, f"{name}: the weights paint too little colour for a sharp test ({chroma:.1f})"
        assert diff.max() <= 1, f"{name}: {diff.max()} levels from the reference ({(diff > 1).sum()} pixels)"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["camera", "coffee", "chelsea"])
def test_cuda_resize_is_pillows_bicubic_bit_for_bit(name: str) -> None:
    """On a GPU the network's input resize stays on the device and gives Pillow's bytes."""
    pixels = photo(name)
    gpu = torch.from_numpy(pixels).permute(2, 0, 1).cuda()
    got = resample8.resize_u8(gpu, 256, grey=resample8.equal_channels(gpu))
    expected = np.asarray(Image.fromarray(pixels).resize((256, 256), Image.Resampling.BICUBIC))
    assert got.is_cuda and np.array_equal(got.permute(1, 2, 0).cpu().numpy(), expected)
