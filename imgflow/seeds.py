"""Reproducible randomness: seeds derived from the pipeline seed and an item's identity.

Every random draw in imgflow (augmentation parameters, training order, validation splits) comes
from a seed derived here, so a rerun draws the same numbers for the same item whatever the batch
size, the worker count or the executor. Imports nothing heavy: validation uses it too.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from parts (pipeline seed, stage id, item key, epoch...).

    Stable across processes and Python versions (unlike ``hash()``), so reruns draw the same
    random numbers for the same item regardless of batch composition or worker count.
    """
    text = "\x1f".join(str(p) for p in parts).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1
