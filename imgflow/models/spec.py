"""What a downloadable checkpoint is (:class:`ModelSpec`) and every error the weights code raises.

A spec that could never be verified (no sha256 and no prefix) cannot exist: an unverifiable
download is never put in the cache.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from imgflow.errors import ConfigError, PluginError

HASH_IN_FILENAME = re.compile(r"-([0-9a-f]{8,})\.")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_HEX = re.compile(r"^[0-9a-f]+$")


# ----------------------------------------------------------------- errors


class ModelError(ConfigError):
    """A model weights problem the user can fix (exit code 2)."""


class UnknownModel(ModelError):
    """No registered model has this name."""


class DownloadError(ModelError):
    """The weights are not cached and could not be downloaded (network, HTTP error, timeout)."""


class CacheError(ModelError):
    """The cache folder cannot be created or written."""


class ChecksumError(ModelError):
    """A file's sha256 or size is not the one the model spec promises."""

    def __init__(self, message: str, *, expected: str, actual: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class WeightsError(ModelError):
    """A checkpoint file could not be turned into a plain state dict."""


class CorruptWeights(WeightsError):
    """The file is truncated or is not a PyTorch checkpoint at all."""


class UnsafeWeights(WeightsError):
    """The checkpoint pickles Python objects; weights_only loading refuses it."""


class NotAStateDict(WeightsError):
    """The checkpoint loads, but is not a mapping of names to tensors."""


class StateDictMismatch(WeightsError):
    """The state dict's keys or shapes do not match what the network expects."""


class TorchVersionError(ModelError):
    """The installed torch is too old to load untrusted checkpoints safely."""


# ----------------------------------------------------------------- the spec


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One downloadable checkpoint.

    ``sha256`` is the full digest when known; ``sha256_prefix`` the torch.hub file-name
    convention (``name-<prefix>.pth``), derived from the URL when it carries one. A spec without
    either cannot exist: an unverifiable download is never put in the cache.

    Except with ``pin_on_first_use=True``, for a file whose publisher gives no digest that could
    be confirmed: the sha256 of the first download (or import) is then pinned beside the cached
    file (``<file>.sha256``), and every later download, import and use must match it. Give
    ``size`` with it, so a truncated first download cannot be pinned.

    ``size`` is the exact byte count and is checked like the hash; ``approx_size`` (bytes, give
    or take a few kB, e.g. from torchvision's published MiB) is only shown by ``imgflow models
    list``, so a user knows what a download costs before starting it. ``layout`` builds the
    untrained network whose ``state_dict()`` has this checkpoint's keys and shapes (it imports
    torch when called): ``imgflow models random`` uses it to write a random-weights checkpoint
    for trying a pipeline out without the download.
    """

    name: str
    url: str
    license: str  # shown by `imgflow models list`: users must know what they download
    stage: str  # the stage that uses it
    sha256: str | None = None
    sha256_prefix: str | None = None
    size: int | None = None
    description: str = ""
    approx_size: int | None = None
    layout: Callable[[], Any] | None = field(default=None, compare=False, repr=False)
    pin_on_first_use: bool = False

    def __post_init__(self) -> None:
        """Normalise the digests and refuse specs that could never be verified."""
        subject = f"model spec '{self.name}'"
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise PluginError(f"{subject}: name must be lowercase letters, digits, '.', '_' or '-' "
                              "(fix: rename it, e.g. 'colorize-eccv16')")
        scheme = urlparse(self.url).scheme if isinstance(self.url, str) else ""
        if scheme not in ("http", "https") or not self.filename:
            raise PluginError(f"{subject}: url must be an http(s) URL ending in a file name, "
                              f"got {self.url!r}")
        sha256 = _normal_hex(self.sha256, subject, "sha256", exact=64)
        prefix = _normal_hex(self.sha256_prefix, subject, "sha256_prefix", minimum=8)
        if prefix is None:
            match = HASH_IN_FILENAME.search(self.filename)
            prefix = match.group(1) if match else None
        if self.pin_on_first_use and (sha256 is not None or prefix is not None):
            raise PluginError(f"{subject}: pin_on_first_use is for files without a published digest, "
                              "but a sha256 is given (fix: drop pin_on_first_use and verify against it)")
        if sha256 is None and prefix is None and not self.pin_on_first_use:
            raise PluginError(f"{subject}: no sha256 and no sha256_prefix, so a download could not be "
                              "verified (fix: give sha256=<full hex digest> of the checkpoint, or "
                              "pin_on_first_use=True when none is published)")
        if sha256 is not None and prefix is not None and not sha256.startswith(prefix):
            raise PluginError(f"{subject}: sha256 {sha256} does not start with sha256_prefix {prefix} "
                              "(fix: correct one of them)")
        if self.size is not None and (not isinstance(self.size, int) or self.size <= 0):
            raise PluginError(f"{subject}: size must be a positive number of bytes, got {self.size!r}")
        if self.approx_size is not None and (not isinstance(self.approx_size, int) or self.approx_size <= 0):
            raise PluginError(f"{subject}: approx_size must be a positive number of bytes, got {self.approx_size!r}")
        if self.layout is not None and not callable(self.layout):
            raise PluginError(f"{subject}: layout must be a function that builds the network, got {self.layout!r}")
        object.__setattr__(self, "sha256", sha256)
        object.__setattr__(self, "sha256_prefix", prefix)

    @property
    def filename(self) -> str:
        """The cache file name: the URL's basename, as torch.hub names it."""
        return os.path.basename(urlparse(self.url).path)

    @property
    def expected_digest(self) -> str:
        """The strongest digest known: the full sha256, else the prefix."""
        return self.sha256 or self.sha256_prefix or ""


def _normal_hex(value: str | None, subject: str, field: str, *, exact: int = 0,
                minimum: int = 0) -> str | None:
    """Lower-case a hex digest and check its length, so comparisons never fail on case."""
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    bad_length = (exact and len(text) != exact) or len(text) < minimum or len(text) > 64
    if not _HEX.match(text) or bad_length:
        want = f"{exact} hex digits" if exact else f"{minimum} to 64 hex digits"
        raise PluginError(f"{subject}: {field} must be {want}, got {value!r}")
    return text

