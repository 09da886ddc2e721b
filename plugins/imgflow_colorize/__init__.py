"""imgflow's colorization plugin: the ``colorize`` stage (Zhang et al. ECCV16 and SIGGRAPH17), the
``colorize.ddcolor`` stage (DDColor tiny and large, see the ``ddcolor`` sub-package), and their
published checkpoints in the shared weights registry.

Registered through the ``imgflow`` entry point ``colorize``. This module stays light: the stage
module is imported inside the hook and torch only in ``setup``/``process``, so ``imgflow --help``
pays for neither.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from imgflow import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from imgflow import Stage

LICENSE = "BSD-2-Clause (richzhang/colorization)"

# Registry name -> (url, sha256 prefix, description). The prefix is the one torch.hub checks
# (it is part of the file name). Full sha256 values reported by a third party, NOT verified here
# and deliberately not used for checking:
#   colorize-eccv16     9b330a0bae53f4ded77b1e23defbf78beaa09c10ebc4c4999e8e4f4a160b93f9
#   colorize-siggraph17 df00044c0a4d7c3edcecf6f75437ce346a66e7a42612d9b968e1a7e17dbc6f66
MODELS: dict[str, tuple[str, str, str]] = {
    "colorize-eccv16": (
        "https://colorizers.s3.us-east-2.amazonaws.com/colorization_release_v2-9b330a0b.pth",
        "9b330a0b",
        "Zhang et al. ECCV 2016 automatic colorizer (313-bin classification), about 129 MB",
    ),
    "colorize-siggraph17": (
        "https://colorizers.s3.us-east-2.amazonaws.com/siggraph17-df00044c.pth",
        "df00044c",
        "Zhang et al. SIGGRAPH 2017 user-guided colorizer (accepts point hints), about 137 MB",
    ),
}

# Bytes of each checkpoint's tensors (the file adds a few kB), for `imgflow models list`.
APPROX_SIZES = {"colorize-eccv16": 128_990_000, "colorize-siggraph17": 136_800_000}


def network_layout(name: str) -> Any:
    """The untrained network of registry model ``name`` (for ``imgflow models random``)."""
    from imgflow_colorize import networks

    return networks.build(name.removeprefix("colorize-"))


@hookimpl
def register_stages(register: Callable[[type[Stage]], None]) -> None:
    """Register the ``colorize`` and ``colorize.ddcolor`` stages and the ``train.colorizer`` trainer."""
    from imgflow_colorize.ddcolor.stage import ColorizeDDColor  # lazy: keeps `imgflow --help` fast
    from imgflow_colorize.stage import Colorize
    from imgflow_colorize.train import TrainColorizer

    register(Colorize)
    register(ColorizeDDColor)
    register(TrainColorizer)


@hookimpl
def register_models(register: Callable[..., Any]) -> None:
    """Register the two official colorizer checkpoints (sizes are known approximately)."""
    from imgflow.models import ModelSpec

    for name, (url, prefix, description) in MODELS.items():
        register(ModelSpec(name=name, url=url, sha256_prefix=prefix, size=None, license=LICENSE,
                           stage="colorize", description=description, approx_size=APPROX_SIZES.get(name),
                           layout=functools.partial(network_layout, name)))
    register_ddcolor_models(register)


def ddcolor_layout(size: str) -> Any:
    """The untrained DDColor network of ``size`` (for ``imgflow models random``)."""
    from imgflow_colorize.ddcolor import model

    return model.build(size)


def register_ddcolor_models(register: Callable[..., Any]) -> None:
    """The four published DDColor sets. No digest could be confirmed for them, so each pins the
    sha256 of its first download (see imgflow_colorize.ddcolor for what is known)."""
    from imgflow.models import ModelSpec
    from imgflow_colorize.ddcolor import LICENSE as DDCOLOR_LICENSE
    from imgflow_colorize.ddcolor import PUBLISHED

    for weights in PUBLISHED.values():
        approx = weights.bytes or (911_950_059 if weights.size == "large" else 220_393_145)
        register(ModelSpec(name=weights.name, url=weights.url, size=weights.bytes, license=DDCOLOR_LICENSE,
                           stage="colorize.ddcolor", description=weights.description, pin_on_first_use=True,
                           approx_size=approx, layout=functools.partial(ddcolor_layout, weights.size)))
