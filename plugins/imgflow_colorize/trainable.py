"""Which layers of the two colorizers a fine-tune trains, and ECCV16's forward split at its logits.

Blocks, in the order the image flows through them (the names are the official state-dict
prefixes, see :mod:`.networks`):

  eccv16      model1 .. model7 (encoder), model8 (decoder, ending in the 313-bin logits).
              ``model_out``, the 1x1 conv that decodes a distribution into ab, holds the bin
              centres and never trains: the classification loss is defined on those bins.
  siggraph17  model1 .. model7 (encoder), then three decoder stages, each an upsampling, its skip
              connection and its convs (model8up + model3short8 + model8, model9up +
              model2short9 + model9, model10up + model1short10 + model10), and model_out.
              ``model_class`` (an unused classification head) never trains.

``train_layers`` picks the trained blocks: "all", "decoder" (eccv16: model8; siggraph17: the
three decoder stages and model_out), or an integer k, the last k blocks. Frozen blocks get no
gradient and keep their batch-norm statistics (they stay in eval mode while the rest trains).

Imports torch at import time; the trainer imports it lazily.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

BLOCKS: dict[str, list[tuple[str, ...]]] = {
    "eccv16": [(f"model{i}",) for i in range(1, 9)],
    "siggraph17": [(f"model{i}",) for i in range(1, 8)] + [
        ("model8up", "model3short8", "model8"),
        ("model9up", "model2short9", "model9"),
        ("model10up", "model1short10", "model10"),
        ("model_out",),
    ],
}
DECODER_BLOCKS = {"eccv16": 1, "siggraph17": 4}
ENCODER_ORDER = [f"model{i}" for i in range(1, 9)]


def block_count(model: str) -> int:
    return len(BLOCKS[model])


def trained_modules(model: str, train_layers: str | int) -> list[str]:
    """The top-level module names that train for a ``train_layers`` setting."""
    blocks = BLOCKS[model]
    if train_layers == "all":
        chosen = blocks
    elif train_layers == "decoder":
        chosen = blocks[-DECODER_BLOCKS[model]:]
    else:
        chosen = blocks[-int(train_layers):]
    return [name for block in chosen for name in block]


def freeze_except(net: nn.Module, names: list[str]) -> int:
    """Turn gradients off outside ``names``; return how many parameters still train."""
    trained = 0
    for module_name, module in net.named_children():
        train = module_name in names
        for param in module.parameters():
            param.requires_grad_(train)
            trained += param.numel() if train else 0
    return trained


def set_mode(net: nn.Module, names: list[str], train: bool) -> None:
    """Train mode for the trained blocks only (when ``train``); frozen ones stay in eval mode,
    so their batch-norm running statistics never move."""
    net.eval()
    if train:
        for module_name, module in net.named_children():
            if module_name in names:
                module.train()


def eccv16_logits(net: Any, l_norm: torch.Tensor) -> torch.Tensor:
    """model1 .. model8 of an ECCV16 generator: the 313-bin logits at 1/4 resolution."""
    x = l_norm
    for name in ENCODER_ORDER:
        x = getattr(net, name)(x)
    return x


def eccv16_decode(net: Any, logits: torch.Tensor) -> torch.Tensor:
    """The rest of ECCV16's forward: softmax, the bin-centre decoding, x4 bilinear (ab / 110)."""
    ab = net.model_out(torch.softmax(logits, dim=1))
    return F.interpolate(ab, scale_factor=4, mode="bilinear", align_corners=False)


def decoding_weight(centres: torch.Tensor) -> torch.Tensor:
    """``model_out.weight`` for the bin centres: ``(2, Q, 1, 1)``, ab / 110."""
    return (centres.float() / 110.0).t().reshape(2, -1, 1, 1).contiguous()
