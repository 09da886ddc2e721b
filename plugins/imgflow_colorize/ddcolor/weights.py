"""Putting a DDColor checkpoint into the network: which keys, which size, strict loading, and the
inference-time rewrites that follow.

The released ``.pth`` files wrap the state dict under ``params`` (BasicSR's layout; imgflow's
loader unwraps it) and the release loads them with ``strict=False``. Ours is strict, with one
documented exception: :data:`RELEASE_IGNORED_KEYS`, the two tensors of the ConvNeXt classifier
head (``head_cls``) that the release's encoder no longer builds but its checkpoints may still carry
(chaiNNer's spandrel drops the same two before its strict load). Any other unknown, missing or
mis-shaped key is an error that lists them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgflow import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from imgflow_colorize.ddcolor.model import DDColor

RELEASE_IGNORED_KEYS = ("encoder.arch.head_cls.weight", "encoder.arch.head_cls.bias")
_STEM_KEY = "encoder.arch.downsample_layers.0.0.weight"  # (96, 3, 4, 4) tiny, (192, 3, 4, 4) large
_STEM_WIDTH = {96: "tiny", 192: "large"}


def checkpoint_size(state: dict[str, Any]) -> str | None:
    """"tiny" or "large" from the stem's width, None when the key is absent or unknown."""
    stem = state.get(_STEM_KEY)
    return _STEM_WIDTH.get(int(stem.shape[0])) if stem is not None and stem.dim() == 4 else None


def release_state(state: dict[str, Any]) -> dict[str, Any]:
    """The state dict without ``module.`` prefixes (DataParallel) and without the keys the
    release ignores."""
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if k not in RELEASE_IGNORED_KEYS}


def load_into(net: DDColor, state: dict[str, Any], described: str) -> None:
    """Strictly load ``state`` into ``net`` (built on the meta device: tensors are assigned).

    ``described`` names the checkpoint in messages. A checkpoint of the other size gets the fix
    (``size = ...``) before any key listing.
    """
    from imgflow import models

    state = release_state(state)
    found = checkpoint_size(state)
    if found is not None and found != net.size:
        raise ConfigError(f"{described}: this is a DDColor-{found} checkpoint, but size = \"{net.size}\" "
                          f"(fix: set size = \"{found}\", or use weights made for the {net.size} model)")
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    models.check_keys(state, expected, subject=f"{described} (DDColor size = \"{net.size}\")")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    net.load_state_dict(state, strict=True, assign=True)


def prepare_for_inference(net: nn.Module) -> nn.Module:
    """Eval mode, spectral norms divided out once, batch norms folded into the convs before them.

    Both rewrites keep the outputs (up to float rounding) and change the state dict's keys, so
    they come after loading, and a prepared network is never saved or trained.
    """
    from imgflow.inference import fold_batch_norms
    from imgflow_colorize.ddcolor.layers import freeze_spectral_convs

    net.eval()
    freeze_spectral_convs(net)
    fold_batch_norms(net)
    return net
