"""imgflow.inference.fold_batch_norms: same outputs, fewer modules, only where it is exact."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation, FrozenBatchNorm2d

from imgflow.inference import fold_batch_norms


def randomise_norm(norm: nn.Module, gen: torch.Generator) -> None:
    """Statistics far from the identity, so a wrong fold shows."""
    c = norm.running_mean.numel()
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(c, generator=gen))
        norm.running_var.copy_(torch.rand(c, generator=gen) * 3 + 0.1)
        norm.weight.copy_(torch.randn(c, generator=gen))
        norm.bias.copy_(torch.randn(c, generator=gen))


def test_folding_keeps_outputs_for_batchnorm_and_frozen_batchnorm():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(
        Conv2dNormActivation(3, 8, norm_layer=nn.BatchNorm2d),
        Conv2dNormActivation(8, 8, groups=8, norm_layer=FrozenBatchNorm2d),  # depthwise, no conv bias
        nn.Conv2d(8, 4, 3, bias=True), nn.BatchNorm2d(4),
    ).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d | FrozenBatchNorm2d):
            randomise_norm(module, gen)
    x = torch.randn(2, 3, 17, 23, generator=gen)
    with torch.no_grad():
        want = model(x)
    assert fold_batch_norms(model) == 3
    assert not any(isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d) for m in model.modules())
    with torch.no_grad():
        got = model(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_norms_in_training_mode_or_not_after_a_conv_are_left_alone():
    training = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    assert fold_batch_norms(training) == 0
    norm_first = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1)).eval()
    assert fold_batch_norms(norm_first) == 0
    assert isinstance(norm_first[0], nn.BatchNorm2d)
