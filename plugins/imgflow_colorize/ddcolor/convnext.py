"""DDColor's image encoder: a ConvNeXt (Liu et al. 2022) that returns its four stage outputs.

Tiny is ConvNeXt-T (depths 3-3-9-3, widths 96-192-384-768), large is ConvNeXt-L (3-3-27-3,
192-384-768-1536). Each stage's output goes through its own channels-first LayerNorm
(``norm0``..``norm3``) and those four maps, at 1/4, 1/8, 1/16 and 1/32 of the input, are what the
decoders read. The classifier's final ``norm`` is part of the checkpoint but not of the
colorizer: it is kept (unused) so the state dict matches the release key for key.

Parameter names follow the release (``encoder.arch.downsample_layers.i``, ``stages.i.j.dwconv``,
``.norm``, ``.pwconv1``, ``.pwconv2``, ``.gamma``), so its checkpoints load strictly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from imgflow_colorize.ddcolor.layers import ChannelsFirstLayerNorm

STRIDE = 32  # the deepest feature map is 1/32 of the input: input sides must be multiples of it


@dataclass(frozen=True)
class ConvNeXtShape:
    """Blocks per stage and channels per stage."""

    depths: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]


SHAPES = {
    "tiny": ConvNeXtShape(depths=(3, 3, 9, 3), widths=(96, 192, 384, 768)),
    "large": ConvNeXtShape(depths=(3, 3, 27, 3), widths=(192, 384, 768, 1536)),
}


class Block(nn.Module):
    """Depthwise 7x7 conv, LayerNorm, 4x MLP with GELU, per-channel scale ``gamma``, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # the MLP runs channels-last, as linear layers
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """The backbone; ``forward`` returns the four normalised stage outputs, finest first."""

    def __init__(self, shape: ConvNeXtShape) -> None:
        super().__init__()
        w = shape.widths
        stem = nn.Sequential(nn.Conv2d(3, w[0], kernel_size=4, stride=4), ChannelsFirstLayerNorm(w[0]))
        downs = [nn.Sequential(ChannelsFirstLayerNorm(w[i]), nn.Conv2d(w[i], w[i + 1], kernel_size=2, stride=2))
                 for i in range(3)]
        self.downsample_layers = nn.ModuleList([stem, *downs])
        self.stages = nn.ModuleList(nn.Sequential(*(Block(w[i]) for _ in range(d)))
                                    for i, d in enumerate(shape.depths))
        for i, width in enumerate(w):
            self.add_module(f"norm{i}", ChannelsFirstLayerNorm(width))
        self.norm = nn.LayerNorm(w[-1], eps=1e-6)  # the classifier's; unused by the colorizer

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
            features.append(getattr(self, f"norm{i}")(x))
        return features


class Encoder(nn.Module):
    """Holds the backbone under ``arch``, the release's key prefix (``encoder.arch.*``)."""

    def __init__(self, size: str) -> None:
        super().__init__()
        self.arch = ConvNeXt(SHAPES[size])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.arch(x)
