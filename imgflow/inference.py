"""Inference-time rewrites of a loaded model that change speed, not results.

``fold_batch_norms``: a convolution followed by a batch norm in eval mode is one affine map per
output channel, so the norm can be folded into the convolution's weight and bias and replaced by
an identity. torchvision's detection backbones use ``FrozenBatchNorm2d``, a separate elementwise
pass over every feature map; folding it away measured Faster R-CNN MobileNetV3 407 -> 363 ms
and SSDlite 35 -> 30 ms per image on 2 CPU cores, with identical scores.

Only for inference: the folded model's state dict no longer has the norms' keys, so fold after
loading weights, and never train or save a folded model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

_NORM_ATTRS = ("weight", "bias", "running_mean", "running_var", "eps")


def _is_frozen_norm(module: nn.Module) -> bool:
    """A 2-d batch norm that uses running statistics: eval-mode BatchNorm2d or FrozenBatchNorm2d.

    Duck-typed so the core does not import torchvision (FrozenBatchNorm2d lives there).
    """
    from torch import nn

    if isinstance(module, nn.BatchNorm2d):
        return not module.training and module.track_running_stats and module.affine
    return type(module).__name__ == "FrozenBatchNorm2d" and all(hasattr(module, a) for a in _NORM_ATTRS)


def fold_batch_norms(model: nn.Module) -> int:
    """Fold every Conv2d immediately followed by a frozen batch norm (as siblings, in
    registration order: ``Sequential`` blocks such as torchvision's ``Conv2dNormActivation``).
    Returns how many were folded."""
    import torch
    from torch import nn

    folded = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (norm_name, norm) in zip(children, children[1:], strict=False):
            if not (isinstance(conv, nn.Conv2d) and _is_frozen_norm(norm)):
                continue
            with torch.no_grad():
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
                conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
                conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias, requires_grad=False)
            setattr(parent, norm_name, nn.Identity())
            folded += 1
    return folded
