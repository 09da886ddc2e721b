"""The DDColor network (Kang et al., ICCV 2023): ConvNeXt encoder, pixel decoder, colour decoder.

Input: a grey sRGB image in [0, 1], ``(N, 3, S, S)`` with S a multiple of 32 (the model
normalises it with ImageNet's mean and std, kept as the ``mean``/``std`` buffers of the release).
Output: ab in Lab units, ``(N, 2, S, S)``.

The release ends with 100 colour maps (each colour embedding dotted with the 256-channel
full-resolution pixel features) concatenated with the normalised input and mapped to ab by a
spectrally normalised 1x1 conv (``refine_net``). Everything after the last ReLU is linear, so
:meth:`DDColor.forward` applies the 1x1 conv's 100 map weights to the colour embeddings first
(a 2x256 matrix per image) and projects the pixel decoder's last activations with that matrix
(:meth:`PixelShuffleUp.project`): the same numbers up to float rounding, without the 100 maps and
the 256-channel map at full resolution. :meth:`DDColor.colour_maps` computes the release's
literal form; the tests hold the two together.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from imgflow_colorize.ddcolor import color_decoder, convnext, pixel_decoder
from imgflow_colorize.ddcolor.layers import SpectralConv2d

SIZES = ("tiny", "large")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AB_CHANNELS = 2
STRIDE = convnext.STRIDE


class DualDecoder(nn.Module):
    """The release's ``decoder``: U-Net blocks (``layers``), the x4 shuffle (``last_shuf``) and
    the colour decoder (``color_decoder``)."""

    def __init__(self, encoder_widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.layers = pixel_decoder.unet_blocks(encoder_widths)
        self.last_shuf = pixel_decoder.full_resolution_up()
        self.color_decoder = color_decoder.MultiScaleColorDecoder()

    def scales(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The U-Net's outputs at 1/16, 1/8 and 1/4 of the input, from the encoder's four maps."""
        x = features[3]
        out = []
        for block, skip in zip(self.layers, (features[2], features[1], features[0]), strict=True):
            x = block(x, skip)
            out.append(x)
        return out


class DDColor(nn.Module):
    """Grey RGB in, ab out (see the module docstring)."""

    def __init__(self, size: str = "tiny") -> None:
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"DDColor size must be one of {SIZES}, got {size!r}")
        self.size = size
        self.encoder = convnext.Encoder(size)
        self.decoder = DualDecoder(convnext.SHAPES[size].widths)
        queries = color_decoder.QUERIES
        # Nested Sequential only to keep the release's key, refine_net.0.0.*
        self.refine_net = nn.Sequential(nn.Sequential(SpectralConv2d(queries + 3, AB_CHANNELS, 1, bias=True)))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @property
    def refine(self) -> nn.Module:
        """The final 1x1 conv (a SpectralConv2d, or a plain Conv2d once frozen for inference)."""
        return self.refine_net[0][0]

    def refine_weight(self) -> torch.Tensor:
        """The final conv's weight as ``(2, 103)``: 100 colour-map columns, then 3 image columns."""
        conv = self.refine
        weight = conv.normalised_weight() if isinstance(conv, SpectralConv2d) else conv.weight
        return weight.flatten(1)

    def trunk(self, grey_rgb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The normalised input, the U-Net's three scales and the colour embeddings ``(N, 100, 256)``."""
        x = (grey_rgb - self.mean) / self.std
        scales = self.decoder.scales(self.encoder(x))
        return x, scales, self.decoder.color_decoder(scales)

    def forward(self, grey_rgb: torch.Tensor) -> torch.Tensor:
        x, scales, embeddings = self.trunk(grey_rgb)
        weight = self.refine_weight()
        queries = embeddings.shape[1]
        per_image = torch.einsum("kq,nqc->nkc", weight[:, :queries].to(embeddings.dtype), embeddings)
        ab = self.decoder.last_shuf.project(scales[-1], per_image)
        image_term = F.conv2d(x, weight[:, queries:, None, None].to(x.dtype), self.refine.bias.to(x.dtype))
        return ab + image_term

    def colour_maps(self, grey_rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The release's literal tail: the 100 colour maps ``(N, 100, S, S)`` and the ab from them.

        Slow and memory-hungry at 512 px; for checking :meth:`forward`, not for inference.
        """
        x, scales, embeddings = self.trunk(grey_rgb)
        pixels = self.decoder.last_shuf(scales[-1])
        maps = torch.einsum("nqc,nchw->nqhw", embeddings, pixels)
        return maps, self.refine(torch.cat([maps, x], dim=1))


def build(size: str) -> DDColor:
    """A DDColor of ``size`` ("tiny" or "large") with freshly initialised weights."""
    return DDColor(size)
