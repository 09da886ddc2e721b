"""imgflow's augmentation stages: flips, random resized crop, colour jitter, resize, center crop
and ``augment`` (compositions with N copies per input).

Registered through the ``imgflow`` entry point ``augment``. This module stays light: the stage
module is imported inside the hook and torch only when a batch is processed, so ``imgflow --help``
does not pay for either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from imgflow import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from imgflow import Stage


@hookimpl
def register_stages(register: Callable[[type[Stage]], None]) -> None:
    """Register the seven augmentation stages."""
    from imgflow_augment import compose  # lazy: keeps `imgflow --help` fast

    for cls in compose.ALL:
        register(cls)
