"""The networks of the stylize plugin: Johnson's TransformerNet and the VGG feature extractors.

This module is inherently about tensors, so it imports torch at the top; the stage modules import
it only inside ``setup``/``process`` so that listing and validating pipelines never pay for it.

TransformerNet follows SPEC §2 exactly (key names included) so that checkpoints trained by
``pytorch/examples`` ``fast_neural_style`` load strictly: reflection-padded convolutions,
InstanceNorm2d(affine=True), five residual blocks, nearest x2 upsampling followed by a padded
convolution (no ConvTranspose, which leaves checkerboard artefacts).

The VGG extractors hold only ``features`` (the convolutional part): the classifier of a VGG
checkpoint is ~90% of its bytes and of no use for perceptual losses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

#: Widths of published TransformerNet checkpoints (channels of the first conv).
WIDTHS = (32, 16, 8)
#: InstanceNorm running statistics that PyTorch < 0.4 saved although they are never used.
STALE_NORM_KEY = re.compile(r"in\d+\.running_(mean|var)$")
#: The network halves the resolution twice and doubles it back twice.
STRIDE = 4
#: Smallest side the padded network input may have: the 9x9 reflection pad needs more than 4
#: pixels, and the residual blocks' 3x3 pads need 2 pixels at a quarter of the size.
MIN_SIDE = 8

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: VGG19 features kept for style by optimisation (SPEC §3): up to conv5_1 (index 28).
VGG19_DEPTH = 29
#: VGG16 features kept for the perceptual loss (SPEC §2): up to relu4_3 (index 22).
VGG16_DEPTH = 23
#: The four VGG16 slices of the perceptual loss: relu1_2, relu2_2, relu3_3, relu4_3 (end indices).
VGG16_SLICES = (4, 9, 16, 23)
VGG16_SLICE_NAMES = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
#: The slice whose output is the content target (relu2_2).
VGG16_CONTENT_SLICE = 1


# ---------------------------------------------------------------------------------------------
# TransformerNet
# ---------------------------------------------------------------------------------------------


class ConvLayer(nn.Module):
    """Reflection padding of ``kernel // 2`` then a convolution: the border is mirrored, not
    zero-filled, so the stylised image has no dark frame."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.reflection_pad = nn.ReflectionPad2d(kernel // 2)
        self.conv2d = nn.Conv2d(channels_in, channels_out, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(self.reflection_pad(x))


class UpsampleConvLayer(nn.Module):
    """Nearest-neighbour x``upsample`` followed by a :class:`ConvLayer`'s padding and convolution
    (the key names ``deconvN.conv2d.*`` are those of the released checkpoints)."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, upsample: int) -> None:
        super().__init__()
        self.upsample = upsample
        self.reflection_pad = nn.ReflectionPad2d(kernel // 2)
        self.conv2d = nn.Conv2d(channels_in, channels_out, kernel, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
        return self.conv2d(self.reflection_pad(x))


class ResidualBlock(nn.Module):
    """conv-IN-ReLU-conv-IN plus the input, no ReLU after the sum (Johnson et al.'s choice,
    following Gross and Wilber's ResNet study)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3, 1)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, 3, 1)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.in1(self.conv1(x)))
        return self.in2(self.conv2(out)) + x


class TransformerNet(nn.Module):
    """Johnson et al.'s image transformation network; ``width`` channels after the first conv.

    Input and output are RGB in 0..255 (no ImageNet normalisation); the output is not clamped
    here (training needs the raw values), callers clamp. Sizes that are not multiples of 4 come
    back larger by up to 3 pixels: use :func:`stylize_any_size` for exact sizes.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.width = width
        self.conv1 = ConvLayer(3, w, 9, 1)
        self.in1 = nn.InstanceNorm2d(w, affine=True)
        self.conv2 = ConvLayer(w, 2 * w, 3, 2)
        self.in2 = nn.InstanceNorm2d(2 * w, affine=True)
        self.conv3 = ConvLayer(2 * w, 4 * w, 3, 2)
        self.in3 = nn.InstanceNorm2d(4 * w, affine=True)
        self.res1 = ResidualBlock(4 * w)
        self.res2 = ResidualBlock(4 * w)
        self.res3 = ResidualBlock(4 * w)
        self.res4 = ResidualBlock(4 * w)
        self.res5 = ResidualBlock(4 * w)
        self.deconv1 = UpsampleConvLayer(4 * w, 2 * w, 3, 2)
        self.in4 = nn.InstanceNorm2d(2 * w, affine=True)
        self.deconv2 = UpsampleConvLayer(2 * w, w, 3, 2)
        self.in5 = nn.InstanceNorm2d(w, affine=True)
        self.deconv3 = ConvLayer(w, 3, 9, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.in1(self.conv1(x)))
        y = F.relu(self.in2(self.conv2(y)))
        y = F.relu(self.in3(self.conv3(y)))
        y = self.res5(self.res4(self.res3(self.res2(self.res1(y)))))
        y = F.relu(self.in4(self.deconv1(y)))
        y = F.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def drop_stale_norm_stats(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without InstanceNorm ``running_mean``/``running_var`` entries.

    Checkpoints saved by PyTorch 0.3 carry them although affine InstanceNorm without
    ``track_running_stats`` never reads them; a strict load would refuse them as unexpected.
    """
    return {k: v for k, v in state.items() if not STALE_NORM_KEY.search(k)}


def width_of(state: Mapping[str, torch.Tensor]) -> int | None:
    """The TransformerNet width a state dict was trained with (conv1's output channels)."""
    weight = state.get("conv1.conv2d.weight")
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 4 else None


def padded_side(side: int) -> int:
    """The side the network actually sees: the next multiple of 4, at least :data:`MIN_SIDE`."""
    return max(MIN_SIDE, -(-side // STRIDE) * STRIDE)


def pad_for_network(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W) padded at the bottom and right to :func:`padded_side` sizes.

    Reflection where the image is big enough (a mirrored border continues the picture's
    texture, so the network sees no artificial edge), replication where it is not (reflection
    cannot pad by as much as the side itself, e.g. a 1x1 or 3x5 image).
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = padded_side(height) - height, padded_side(width) - width
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def stylize_any_size(net: TransformerNet, x255: torch.Tensor) -> torch.Tensor:
    """The network's output for ``x255`` (N, 3, H, W in 0..255) at exactly (H, W), clamped to 0..255.

    Odd sizes would otherwise come back rounded up to a multiple of 4 (two stride-2 convolutions
    round up, two x2 upsamplings double); padding first and cropping after keeps every output
    pixel aligned with its input pixel.
    """
    height, width = x255.shape[-2:]
    out = net(pad_for_network(x255))
    return out[..., :height, :width].clamp(0.0, 255.0)


# ---------------------------------------------------------------------------------------------
# VGG features
# ---------------------------------------------------------------------------------------------


def build_vgg_features(arch: str, depth: int, device: torch.device | str = "meta") -> nn.Sequential:
    """``torchvision.models.<arch>(weights=None).features[:depth]`` with ReLUs not in place.

    Built on the meta device by default: no memory and no random initialisation for weights that
    a checkpoint replaces (load with ``assign=True``). In-place ReLUs would overwrite the conv
    outputs that style by optimisation reads *before* the ReLU (SPEC §3), so they are replaced.
    """
    from torchvision import models as tv_models

    builder = {"vgg19": tv_models.vgg19, "vgg16": tv_models.vgg16}[arch]
    with torch.device(device):
        features = builder(weights=None).features[:depth]
    for index, layer in enumerate(features):
        if isinstance(layer, nn.ReLU):
            features[index] = nn.ReLU(inplace=False)
    return features


def init_vgg_random(features: nn.Sequential, seed: int = 0, device: torch.device | str = "cpu") -> nn.Sequential:
    """Materialise ``features`` on ``device`` with torchvision's VGG initialisation (He normal,
    fan-out, zero biases), seeded, leaving the global RNG untouched: tests and benchmarks get
    the same untrained network every time without any download."""
    features = features.to_empty(device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in features:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)
    return features


def vgg_feature_state(state: Mapping[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """The ``features.N.*`` entries of a full VGG checkpoint with N < ``depth``, renamed ``N.*``.

    A checkpoint that holds only the features (keys already ``N.*``) is accepted too.
    """
    prefixed = any(key.startswith("features.") for key in state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if prefixed and not key.startswith("features."):
            continue  # the classifier: unused by perceptual losses
        name = key.removeprefix("features.")
        index = name.split(".", 1)[0]
        if not index.isdigit() or int(index) < depth:
            out[name] = value  # a non-numeric key stays, so a strict check reports it
    return out


def freeze(net: nn.Module) -> nn.Module:
    """Evaluation mode, no parameter gradients: the loss network is a fixed measuring device."""
    net.eval()
    for param in net.parameters():
        param.requires_grad_(False)
    return net


def imagenet_normalize(x01: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over the channel axis (dim -3), for images in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=x01.device, dtype=x01.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x01.device, dtype=x01.dtype).view(3, 1, 1)
    return (x01 - mean) / std


def imagenet_denormalize(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`imagenet_normalize` (not clamped)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(3, 1, 1)
    return x * std + mean


def extract_layers(features: nn.Sequential, x: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """The outputs of ``features[i]`` for every i in ``layers``, running only as deep as needed."""
    wanted = set(layers)
    last = max(wanted)
    found: dict[int, torch.Tensor] = {}
    for index, layer in enumerate(features):
        x = layer(x)
        if index in wanted:
            found[index] = x
        if index >= last:
            break
    return found


def vgg16_slices(features: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """The four perceptual-loss activations relu1_2, relu2_2, relu3_3, relu4_3 (SPEC §2)."""
    outs = []
    start = 0
    for end in VGG16_SLICES:
        for layer in features[start:end]:
            x = layer(x)
        outs.append(x)
        start = end
    return outs
