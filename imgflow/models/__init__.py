"""Model weights shared by every model-using stage: registry, cache, download, verify, import, load.

Plugins describe checkpoints with :class:`ModelSpec` in their ``register_models`` hook; stages
then call :func:`ensure` (or :func:`load_state_dict`) in ``setup``. Everything lives in one
place so every stage gets the same guarantees:

  spec.py       ModelSpec (name, URL, sha256, size, licence) and the errors
  registry.py   the shared registry filled by plugins' ``register_models`` hooks
  cache.py      torch.hub's checkpoint folder: verify, download (hash-checked), import
  loading.py    ``torch.load(weights_only=True)`` always, key and shape checks
  weights.py    the ``weights = "name | path | URL"`` parameter and its fingerprint
  untrained.py  ``weights = "random"`` and random-weights checkpoints, labelled as untrained

torch is imported inside functions only, so ``imgflow --help`` and ``imgflow models list`` stay
fast.
"""

from __future__ import annotations

from imgflow.models.cache import (
    DOWNLOAD_TIMEOUT_S,
    cache_dir,
    cache_path,
    cached_file,
    ensure,
    hub_dir,
    import_file,
    is_cached,
    pin_path,
    pinned_digest,
    pull,
    sha256_file,
    verify_file,
)
from imgflow.models.loading import MIN_TORCH, check_keys, check_torch_version, load_checkpoint, load_state_dict
from imgflow.models.registry import ModelEntry, describe, entries, get, registry
from imgflow.models.spec import (
    HASH_IN_FILENAME,
    CacheError,
    ChecksumError,
    CorruptWeights,
    DownloadError,
    ModelError,
    ModelSpec,
    NotAStateDict,
    StateDictMismatch,
    TorchVersionError,
    UnknownModel,
    UnsafeWeights,
    WeightsError,
)
from imgflow.models.untrained import (
    RANDOM,
    random_fingerprint,
    save_random_checkpoint,
    says_untrained,
    weights_label,
)
from imgflow.models.weights import is_registered, is_url, resolve_weights, weights_fingerprint

__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "HASH_IN_FILENAME",
    "MIN_TORCH",
    "CacheError",
    "ChecksumError",
    "CorruptWeights",
    "DownloadError",
    "ModelEntry",
    "ModelError",
    "ModelSpec",
    "NotAStateDict",
    "RANDOM",
    "StateDictMismatch",
    "TorchVersionError",
    "UnknownModel",
    "UnsafeWeights",
    "WeightsError",
    "cache_dir",
    "cache_path",
    "cached_file",
    "check_keys",
    "check_torch_version",
    "describe",
    "ensure",
    "entries",
    "get",
    "hub_dir",
    "import_file",
    "is_cached",
    "is_registered",
    "is_url",
    "load_checkpoint",
    "load_state_dict",
    "pin_path",
    "pinned_digest",
    "pull",
    "random_fingerprint",
    "registry",
    "resolve_weights",
    "save_random_checkpoint",
    "says_untrained",
    "sha256_file",
    "verify_file",
    "weights_fingerprint",
    "weights_label",
]
