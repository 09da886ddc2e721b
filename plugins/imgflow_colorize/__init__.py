"""imgflow's colorization plugin: the ``colorize`` stage (Zhang et al. ECCV16 and SIGGRAPH17) and
the two official checkpoints in the shared weights registry.

Registered through the ``imgflow`` entry point ``colorize``. This module stays light: the stage
module is imported inside the hook and torch only in ``setup``/``process``, so ``imgflow --help``
pays for neither.
"""

from __future__ import annotations

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


@hookimpl
def register_stages(register: Callable[[type[Stage]], None]) -> None:
    """Register the ``colorize`` stage and the ``train.colorizer`` trainer."""
    from imgflow_colorize.stage import Colorize  # lazy: keeps `imgflow --help` fast
    from imgflow_colorize.train import TrainColorizer

    register(Colorize)
    register(TrainColorizer)


@hookimpl
def register_models(register: Callable[..., Any]) -> None:
    """Register the two official colorizer checkpoints (sizes are not known exactly here)."""
    from imgflow.models import ModelSpec

    for name, (url, prefix, description) in MODELS.items():
        register(ModelSpec(name=name, url=url, sha256_prefix=prefix, size=None, license=LICENSE,
                           stage="colorize", description=description))
