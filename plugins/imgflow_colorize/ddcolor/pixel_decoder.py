"""DDColor's pixel decoder: three wide U-Net blocks and a final x4 pixel shuffle.

From the encoder's 1/32 map it climbs back to 1/16, 1/8 and 1/4 of the input, each time
upsampling x2 and joining the encoder map of that scale, then a x4 pixel shuffle gives 256
channels at the full model resolution. The three intermediate maps feed the colour decoder's
cross-attention; the full-resolution one is what the colour queries are projected onto.

Upsampling is a 1x1 conv to ``scale**2`` times the channels, ReLU, ``PixelShuffle`` and a 2x2 box
blur over a one-pixel replicated top/left border (against checkerboard artefacts; Sugawara et
al. 2018). Every conv is spectrally normalised, as in the release, so the state dict keys are
``shuf.conv.0.weight_orig`` and so on.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from imgflow_colorize.ddcolor.layers import SpectralConv2d

WIDTH = 512  # channels of the first two blocks; the last block and the x4 shuffle use half
PIXEL_CHANNELS = WIDTH // 2


def blur(x: torch.Tensor) -> torch.Tensor:
    """2x2 mean over a replicated top/left border: same size out, each pixel averaged with its
    upper and left neighbours."""
    return F.avg_pool2d(F.pad(x, (1, 0, 1, 0), mode="replicate"), 2, stride=1)


class PixelShuffleUp(nn.Module):
    """x``scale`` upsampling: 1x1 spectral conv (+ BatchNorm in the U-Net blocks), ReLU, pixel
    shuffle, blur."""

    def __init__(self, cin: int, cout: int, scale: int, *, batch_norm: bool) -> None:
        super().__init__()
        wide = cout * scale * scale
        layers: list[nn.Module] = [SpectralConv2d(cin, wide, 1, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(wide))
        self.conv = nn.Sequential(*layers)
        self.scale = scale

    def pre_shuffle(self, x: torch.Tensor) -> torch.Tensor:
        """The activations before the shuffle: ``(N, cout * scale**2, h, w)``."""
        return F.relu(self.conv(x), inplace=True)  # in place: the widest tensor of the network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blur(F.pixel_shuffle(self.pre_shuffle(x), self.scale))

    def project(self, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """``matrix @ self(x)`` per image, without building ``self(x)``.

        ``matrix`` is ``(N, K, cout)``. Shuffle and blur act on each channel alone, so mixing the
        channels first gives the same result: ``(N, K, H, W)`` from the ``scale**2`` sub-pixel
        groups of the pre-shuffle activations. At 512 px with K = 2 that skips writing and
        blurring a 256-channel full-resolution map (268 MB per image in float32).
        """
        act = self.pre_shuffle(x)
        n, channels, h, w = act.shape
        pixels = act.permute(0, 2, 3, 1).reshape(n, h * w, channels)  # a view under channels_last
        mixed = torch.bmm(pixels, _subpixel_mixer(matrix.to(act.dtype), self.scale * self.scale))
        mixed = mixed.view(n, h, w, -1).permute(0, 3, 1, 2)  # (N, K * scale**2, h, w)
        return blur(F.pixel_shuffle(mixed, self.scale))


def _subpixel_mixer(matrix: torch.Tensor, subpixels: int) -> torch.Tensor:
    """``(N, C * s, K * s)``: mixes channel ``c * s + j`` into ``k * s + j`` with weight
    ``matrix[n, k, c]`` (the pixel-shuffle layout, where j is the sub-pixel).

    One dense GEMM with this block-diagonal matrix costs s times the useful multiply-adds, but
    reads the activations once, in the order they lie in memory under channels_last; mixing the
    channel axis of a (C, s) split directly makes torch copy all of them first (measured: about
    2 s per 512 px image on 2 cores).
    """
    n, k, c = matrix.shape
    eye = torch.eye(subpixels, dtype=matrix.dtype, device=matrix.device)
    blocks = matrix.transpose(1, 2)[:, :, None, :, None] * eye[None, None, :, None, :]  # (n, c, s, k, s)
    return blocks.reshape(n, c * subpixels, k * subpixels)


class UnetBlockWide(nn.Module):
    """Upsample x2, join the encoder map of that scale (batch-normalised), ReLU, 3x3 conv, ReLU,
    BatchNorm."""

    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.shuf = PixelShuffleUp(cin, cout, 2, batch_norm=True)
        self.bn = nn.BatchNorm2d(skip)
        self.conv = nn.Sequential(SpectralConv2d(cout + skip, cout, 3, bias=False), nn.ReLU(),
                                  nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        joined = torch.cat([self.shuf(x), self.bn(skip)], dim=1)
        return self.conv(F.relu(joined, inplace=True))


def unet_blocks(encoder_widths: tuple[int, int, int, int]) -> nn.Sequential:
    """The three blocks, deepest first: 1/32 -> 1/16 -> 1/8 -> 1/4."""
    w = encoder_widths
    return nn.Sequential(
        UnetBlockWide(w[3], w[2], WIDTH),
        UnetBlockWide(WIDTH, w[1], WIDTH),
        UnetBlockWide(WIDTH, w[0], PIXEL_CHANNELS),
    )


def full_resolution_up() -> PixelShuffleUp:
    """The last x4 shuffle: 1/4 -> full model resolution, 256 channels (conv with bias, no BN)."""
    return PixelShuffleUp(PIXEL_CHANNELS, PIXEL_CHANNELS, 4, batch_norm=False)
