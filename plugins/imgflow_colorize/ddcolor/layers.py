"""Small layers DDColor is built from: a spectrally normalised convolution and channels-first
LayerNorm.

The released checkpoints were trained with ``torch.nn.utils.spectral_norm`` on the decoder's
convolutions, so they store ``weight_orig`` plus the power-iteration vectors ``weight_u`` and
``weight_v`` instead of ``weight``. In eval mode that wrapper uses the stored vectors as they are:
``sigma = u . (W v)`` with ``W`` the weight viewed as ``(out, in * kh * kw)``, and convolves with
``weight_orig / sigma``. :class:`SpectralConv2d` keeps exactly those three tensors (so the state
dict has the release's keys) and does that one computation; :func:`freeze_spectral_convs` turns
each into a plain ``nn.Conv2d`` once the weights are loaded, so inference divides once instead
of on every forward.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SpectralConv2d(nn.Module):
    """A stride-1 convolution whose weight is ``weight_orig / sigma`` (eval-mode spectral norm).

    Padding keeps the spatial size ("same" for odd kernels), as every such conv in DDColor does.
    """

    def __init__(self, cin: int, cout: int, kernel: int, *, bias: bool) -> None:
        super().__init__()
        self.padding = (kernel - 1) // 2
        self.weight_orig = nn.Parameter(torch.empty(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.register_buffer("weight_u", torch.empty(cout))
        self.register_buffer("weight_v", torch.empty(cin * kernel * kernel))
        if not self.weight_orig.is_meta:
            nn.init.kaiming_normal_(self.weight_orig)
            _init_singular_vectors(self)

    def normalised_weight(self) -> torch.Tensor:
        """``weight_orig`` divided by its spectral norm as estimated by the stored vectors."""
        matrix = self.weight_orig.flatten(1)
        sigma = torch.dot(self.weight_u, torch.mv(matrix, self.weight_v))
        return self.weight_orig / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.normalised_weight(), self.bias, padding=self.padding)

    def frozen(self) -> nn.Conv2d:
        """An equivalent plain ``nn.Conv2d`` (same device and dtype) for inference."""
        weight = self.normalised_weight().detach()
        cout, cin, kh, kw = weight.shape
        conv = nn.Conv2d(cin, cout, (kh, kw), padding=self.padding, bias=self.bias is not None,
                         device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv.requires_grad_(False)


def _init_singular_vectors(conv: SpectralConv2d) -> None:
    """A few power iterations, so a freshly built (untrained) conv already has a sensible sigma.

    Only generated weights rely on this; a checkpoint brings its own ``weight_u``/``weight_v``.
    """
    with torch.no_grad():
        matrix = conv.weight_orig.flatten(1)
        v = F.normalize(torch.randn(matrix.shape[1]), dim=0)
        u = F.normalize(torch.mv(matrix, v), dim=0)
        for _ in range(3):
            v = F.normalize(torch.mv(matrix.t(), u), dim=0)
            u = F.normalize(torch.mv(matrix, v), dim=0)
        conv.weight_u.copy_(u)
        conv.weight_v.copy_(v)


def embedding(count: int, dim: int) -> nn.Embedding:
    """``nn.Embedding`` initialised N(0, 1) as usual, but left uninitialised on the meta device.

    The network is built on the meta device before a checkpoint is assigned, and the first
    ``normal_`` there costs over 2 s of one-time imports in torch, for values nobody reads.
    """
    weight = torch.empty(count, dim)
    if not weight.is_meta:
        nn.init.normal_(weight)
    return nn.Embedding(count, dim, _weight=weight)


def freeze_spectral_convs(model: nn.Module) -> int:
    """Replace every :class:`SpectralConv2d` in ``model`` by its frozen ``nn.Conv2d``.

    Inference only: the state dict then has ``weight`` where the release has ``weight_orig``, so
    load weights first and never save a frozen model. Returns how many were replaced.
    """
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SpectralConv2d):
                setattr(parent, name, child.frozen())
                replaced += 1
    return replaced


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``(N, C, H, W)`` (ConvNeXt's downsampling and output
    norms). Computed on the channels-last view, which is contiguous under ``channels_last``."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)
