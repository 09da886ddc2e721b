"""The two colorization generators of Zhang et al.: ECCV16 (classification over 313 ab bins) and
SIGGRAPH17 (user-guided regression).

Module and ``nn.Sequential`` layouts are chosen so that ``state_dict()`` keys and shapes equal the
official PyTorch release's (SPEC §1): the published checkpoints load with ``strict=True``, and a
fine-tuned checkpoint saved from these classes loads into the reference code too.

Both networks take the *normalised* L channel, ``(L - 50) / 100``, and return ab in units of 110
at the resolution of their input; the stage does the Lab conversion and the scaling. This module
is inherently about tensors and imports torch at import time; the plugin imports it lazily.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

L_CENT = 50.0
L_NORM = 100.0
AB_NORM = 110.0
ECCV16_BINS = 313
SIGGRAPH17_CLASSES = 529
MODEL_STRIDE = 8  # both nets downsample by 8 and restore the input size only for multiples of 8


def _conv(cin: int, cout: int, *, stride: int = 1, dilation: int = 1, bias: bool = True) -> nn.Conv2d:
    """A 3x3 conv whose padding keeps the spatial size (before any stride)."""
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=bias)


def _up(cin: int, cout: int) -> nn.ConvTranspose2d:
    """A x2 learned upsampling (kernel 4, stride 2, padding 1 doubles H and W exactly)."""
    return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)


def _block(convs: list[nn.Module], norm: int | None) -> nn.Sequential:
    """``conv, ReLU, conv, ReLU, ..., [BatchNorm]``: the layout that fixes the official indices
    (convs at even positions, BN after the last ReLU)."""
    layers: list[nn.Module] = []
    for conv in convs:
        layers += [conv, nn.ReLU(inplace=True)]
    if norm is not None:
        layers.append(nn.BatchNorm2d(norm))
    return nn.Sequential(*layers)


def _encoder(in_channels: int, strided: bool) -> dict[str, nn.Sequential]:
    """model1..model7, shared by both generators.

    ECCV16 downsamples with stride-2 convs at the end of blocks 1-3; SIGGRAPH17 keeps every conv
    at stride 1 and subsamples between blocks instead (``x[:, :, ::2, ::2]``).
    """
    s = 2 if strided else 1
    blocks = {
        "model1": _block([_conv(in_channels, 64), _conv(64, 64, stride=s)], 64),
        "model2": _block([_conv(64, 128), _conv(128, 128, stride=s)], 128),
        "model3": _block([_conv(128, 256), _conv(256, 256), _conv(256, 256, stride=s)], 256),
        "model4": _block([_conv(256, 512), _conv(512, 512), _conv(512, 512)], 512),
        "model5": _block([_conv(512, 512, dilation=2) for _ in range(3)], 512),
        "model6": _block([_conv(512, 512, dilation=2) for _ in range(3)], 512),
        "model7": _block([_conv(512, 512) for _ in range(3)], 512),
    }
    return blocks


class ECCV16Generator(nn.Module):
    """"Colorful Image Colorization" (ECCV 2016): predicts a distribution over 313 quantised ab
    bins per pixel at 1/4 resolution, decodes it to ab with a fixed 1x1 conv (the bin centres,
    learnt as weights), then upsamples x4 bilinearly.

    Input ``(N, 1, H, W)`` normalised L with H, W multiples of 8; output ``(N, 2, H, W)`` ab / 110.
    """

    def __init__(self) -> None:
        super().__init__()
        for name, block in _encoder(1, strided=True).items():
            self.add_module(name, block)
        self.model8 = nn.Sequential(
            _up(512, 256), nn.ReLU(inplace=True),
            _conv(256, 256), nn.ReLU(inplace=True),
            _conv(256, 256), nn.ReLU(inplace=True),
            nn.Conv2d(256, ECCV16_BINS, 1),
        )
        self.model_out = nn.Conv2d(ECCV16_BINS, 2, 1, bias=False)

    def forward(self, l_norm: torch.Tensor) -> torch.Tensor:
        x = l_norm
        for block in (self.model1, self.model2, self.model3, self.model4, self.model5, self.model6,
                      self.model7, self.model8):
            x = block(x)
        ab = self.model_out(torch.softmax(x, dim=1))
        return F.interpolate(ab, scale_factor=4, mode="bilinear", align_corners=False)


class SIGGRAPH17Generator(nn.Module):
    """"Real-Time User-Guided Image Colorization with Learned Deep Priors" (SIGGRAPH 2017): a
    U-Net-like regressor whose input carries sparse user hints.

    Input ``(N, 4, H, W)``: normalised L, hint ab / 110 (2 channels, zero where no hint) and the
    hint mask (1 where a hint is given); H, W multiples of 8. Output ``(N, 2, H, W)`` ab / 110
    (tanh). ``model_class`` exists only so official checkpoints load strictly; inference never
    runs it. The reference evaluates the decoder tail twice with identical results; we once.
    """

    def __init__(self) -> None:
        super().__init__()
        for name, block in _encoder(4, strided=False).items():
            self.add_module(name, block)
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731 - a fresh module per position
        self.model8up = nn.Sequential(_up(512, 256))
        self.model3short8 = nn.Sequential(_conv(256, 256))
        self.model8 = nn.Sequential(relu(), _conv(256, 256), relu(), _conv(256, 256), relu(),
                                    nn.BatchNorm2d(256))
        self.model9up = nn.Sequential(_up(256, 128))
        self.model2short9 = nn.Sequential(_conv(128, 128))
        self.model9 = nn.Sequential(relu(), _conv(128, 128), relu(), nn.BatchNorm2d(128))
        self.model10up = nn.Sequential(_up(128, 128))
        self.model1short10 = nn.Sequential(_conv(64, 128))
        self.model10 = nn.Sequential(relu(), _conv(128, 128), nn.LeakyReLU(0.2, inplace=True))
        self.model_class = nn.Sequential(nn.Conv2d(256, SIGGRAPH17_CLASSES, 1))
        self.model_out = nn.Sequential(nn.Conv2d(128, 2, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv1 = self.model1(x)
        conv2 = self.model2(conv1[:, :, ::2, ::2])
        conv3 = self.model3(conv2[:, :, ::2, ::2])
        deep = self.model4(conv3[:, :, ::2, ::2])
        deep = self.model7(self.model6(self.model5(deep)))
        up8 = self.model8(self.model8up(deep) + self.model3short8(conv3))
        up9 = self.model9(self.model9up(up8) + self.model2short9(conv2))
        up10 = self.model10(self.model10up(up9) + self.model1short10(conv1))
        return self.model_out(up10)


NETWORKS: dict[str, type[nn.Module]] = {"eccv16": ECCV16Generator, "siggraph17": SIGGRAPH17Generator}


def build(model: str) -> nn.Module:
    """A freshly initialised generator by its stage name (``eccv16`` or ``siggraph17``)."""
    return NETWORKS[model]()


def input_channels(model: str) -> int:
    """How many input planes the network expects (1: L only; 4: L, hint ab, hint mask)."""
    return 1 if model == "eccv16" else 4
