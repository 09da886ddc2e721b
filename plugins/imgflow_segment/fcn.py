"""d2l.ai's fully convolutional network on ResNet-18 (SPEC.md section 5), and its arithmetic.

The network, as the book builds it (so its state-dict keys are the book's: ``0.*`` ... ``7.*`` for
the trunk, ``final_conv.*``, ``transpose_conv.*``):

  trunk           ResNet-18 without its global pooling and fully connected layer: stride 32,
                  512 channels (children 0-7: conv1, bn1, relu, maxpool, layer1..layer4);
  final_conv      a 1x1 convolution 512 -> classes (Xavier-uniform, as the book says);
  transpose_conv  ConvTranspose2d(classes, classes, kernel 64, padding 16, stride 32), initialised
                  as bilinear upsampling: back to the input's size, (in - 1) * 32 - 32 + 64 = 32 * in.

:class:`PaddedFCN` runs it on any image size: the input is zero-padded to a multiple of 32 and the
logits cropped back, so every pixel gets a prediction (the book crops its test images instead).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

KERNEL, STRIDE, PADDING = 64, 32, 16
TRUNK_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def transposed_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """The transposed convolution's output length: (in - 1) * stride - 2 * padding + kernel."""
    return (size - 1) * stride - 2 * padding + kernel


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    """A ``(in, out, k, k)`` ConvTranspose2d weight that upsamples each channel bilinearly.

    factor = (k + 1) // 2, centre = factor - 1 (k odd) or factor - 0.5 (k even),
    w[i, j] = (1 - |i - centre| / factor) * (1 - |j - centre| / factor) on the channel diagonal.
    """
    factor = (kernel_size + 1) // 2
    centre = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt = (1 - torch.abs(og.reshape(-1, 1) - centre) / factor) * (1 - torch.abs(og.reshape(1, -1) - centre) / factor)
    weight = torch.zeros((in_channels, out_channels, kernel_size, kernel_size))
    channels = range(min(in_channels, out_channels))
    weight[list(channels), list(channels), :, :] = filt
    return weight


def fcn_resnet18(num_classes: int) -> nn.Sequential:
    """The book's FCN for ``num_classes`` (background included), randomly initialised trunk."""
    from torchvision.models import resnet18

    trunk = resnet18(weights=None)
    net = nn.Sequential(*(getattr(trunk, name) for name in TRUNK_CHILDREN))
    net.add_module("final_conv", nn.Conv2d(512, num_classes, kernel_size=1))
    net.add_module("transpose_conv", nn.ConvTranspose2d(num_classes, num_classes, kernel_size=KERNEL,
                                                         padding=PADDING, stride=STRIDE))
    nn.init.xavier_uniform_(net.final_conv.weight)
    nn.init.zeros_(net.final_conv.bias)
    with torch.no_grad():
        net.transpose_conv.weight.copy_(bilinear_kernel(num_classes, num_classes, KERNEL))
        net.transpose_conv.bias.zero_()  # a pure bilinear upsampling to start from
    return net


def trunk_state_from_resnet18(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ImageNet ResNet-18 state dict renamed to the FCN's trunk keys (fc dropped)."""
    index = {name: str(i) for i, name in enumerate(TRUNK_CHILDREN)}
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in index:
            out[f"{index[head]}.{rest}"] = value
    return out


def padded_forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The logits of any input size: zero-padded to a multiple of 32, cropped back after."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % STRIDE, (-width) % STRIDE
    if pad_h or pad_w:
        x = F.pad(x, [0, pad_w, 0, pad_h])
    return net(x)[..., :height, :width]


class PaddedFCN(nn.Module):
    """The FCN on any input size, with torchvision's segmentation interface (``{"out": logits}``)."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": padded_forward(self.net, x)}
