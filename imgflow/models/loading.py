"""Loading checkpoints safely: always ``torch.load(..., weights_only=True)``.

A checkpoint is data, never code: one that pickles Python objects is refused, and so are a
truncated file, a hash mismatch, and a state dict with missing, extra or mis-shaped keys, each
with its own message. torch is imported inside the functions.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from imgflow.models.cache import Fetch, cache_dir, download, ensure, sha256_file
from imgflow.models.registry import registry, unknown_message
from imgflow.models.spec import (
    HASH_IN_FILENAME,
    CorruptWeights,
    ModelSpec,
    NotAStateDict,
    StateDictMismatch,
    TorchVersionError,
    UnknownModel,
    UnsafeWeights,
    WeightsError,
)

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

MIN_TORCH = (2, 10)  # older torch.load(weights_only=True) had known bypasses
_MAX_LISTED = 10
_WEIGHT_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt", ".tar", ".pkl"}


def check_torch_version(version: str | None = None) -> None:
    """Refuse torch older than 2.10, whose weights_only loader had known bypasses."""
    if version is None:
        import torch

        version = torch.__version__
    match = re.match(r"^(\d+)\.(\d+)", str(version))
    found = (int(match.group(1)), int(match.group(2))) if match else None
    if found is None or found < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        raise TorchVersionError(f"torch {version} is too old to load checkpoints safely: imgflow needs "
                                f"torch >= {need} (earlier weights_only loaders had bypasses) "
                                f"(fix: uv pip install 'torch>={need}')")


def _resolve_source(source: str | Path | ModelSpec, progress: bool) -> tuple[Path, str]:
    """(local file, subject for messages) for a spec, a registry name, a URL or a path."""
    if isinstance(source, ModelSpec):
        return ensure(source, progress), f"model '{source.name}'"
    if isinstance(source, Path):
        return _local_file(source), str(source)
    text = str(source)
    if urlparse(text).scheme in ("http", "https"):
        return _url_file(text, progress), text
    known = registry()
    if text in known:
        return ensure(known[text], progress), f"model '{text}'"
    path = Path(text).expanduser()
    if path.exists() or os.sep in text or path.suffix in _WEIGHT_SUFFIXES:
        return _local_file(path), text
    raise UnknownModel(unknown_message(text, list(known)) + " (or give a file path or an http(s) URL)")


def _local_file(path: Path) -> Path:
    """A checkpoint path that exists, or an error naming it."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist or is not a file "
                           "(fix: check the path, or use a registered model name; see imgflow models list)")
    return path


def _url_file(url: str, progress: bool) -> Path:
    """The cached file for a bare URL, downloaded like torch.hub's load_state_dict_from_url
    (with its prefix check when the file name carries one)."""
    filename = os.path.basename(urlparse(url).path)
    if not filename:
        raise WeightsError(f"weights URL {url} does not end in a file name (fix: give the checkpoint's URL)")
    final = cache_dir() / filename
    match = HASH_IN_FILENAME.search(filename)
    prefix = match.group(1) if match else None
    if final.is_file() and (prefix is None or sha256_file(final).startswith(prefix)):
        return final
    job = Fetch(url=url, final=final, subject=f"weights file '{filename}'", hash_prefix=prefix,
                 offline_fix=f"copy it to {final}")
    return download(job, progress, check=None)


def load_checkpoint(path: Path, subject: str) -> Any:
    """A checkpoint file's contents, read with ``weights_only=True``: tensors, numbers, strings,
    lists and dicts only, never code.

    For files that are more than a state dict (a classifier's ``model.pt`` with its classes); every
    failure is worded as for the state dicts :func:`load_state_dict` reads, so a pickled object is
    "contains Python objects" and a damaged file "truncated or corrupt" for every stage alike.
    """
    check_torch_version()
    return _torch_load(_local_file(path), subject)


def _torch_load(path: Path, subject: str, mmap: bool = False) -> Any:
    """torch.load with weights_only=True, its failures turned into messages a user can act on.

    ``mmap``: map the file instead of reading it (see :func:`load_state_dict`); a file in the
    legacy (non-zip) format cannot be mapped and is read as before.
    """
    import pickle

    import torch

    try:
        if mmap and _is_zip(path):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc) or not _looks_like_checkpoint(path):
            raise _corrupt(path, subject, exc) from exc
        raise _unsafe(path, subject, exc) from exc
    except (PermissionError, IsADirectoryError) as exc:
        raise WeightsError(f"{subject}: cannot read {path}: {exc.strerror} (fix: check its permissions)") from exc
    except Exception as exc:  # EOFError, RuntimeError (zip), KeyError/IndexError (legacy pickle)
        raise _corrupt(path, subject, exc) from exc


def _is_zip(path: Path) -> bool:
    """torch.save's zip format, the only one torch.load can map."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _looks_like_checkpoint(path: Path) -> bool:
    """A zip (torch.save) or a pickle (a PROTO opcode first): the weights-only unpickler refusing
    one of those means Python objects; refusing anything else means the file is not a checkpoint."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return head.startswith((b"PK\x03\x04", b"\x80"))


def _corrupt(path: Path, subject: str, exc: BaseException) -> CorruptWeights:
    """A truncated or foreign file: say so, and that downloading again is the fix."""
    reason = str(exc).split(". ")[0].strip() or type(exc).__name__
    return CorruptWeights(f"{subject}: {path} is not a readable PyTorch checkpoint (truncated or corrupt: "
                          f"{type(exc).__name__}: {reason}) (fix: delete it and download or export it again)")


def _unsafe(path: Path, subject: str, exc: BaseException) -> UnsafeWeights:
    """A pickle of Python objects: refuse, name the offending class, explain the export."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    what = f" (it references {found.group(1)})" if found else ""
    return UnsafeWeights(f"{subject}: {path} contains Python objects, not only tensors{what}; imgflow loads "
                         "plain state dicts only (fix: in a trusted environment load it and save "
                         "model.state_dict() with torch.save)")


def _unwrap(obj: Any, path: Path, subject: str) -> Mapping[str, Any]:
    """The state dict itself: the object, or the one a training checkpoint wraps under
    'state_dict' or 'model' (the common Lightning / training-script layouts) or 'params'
    (BasicSR's, e.g. DDColor's released checkpoints)."""
    if not isinstance(obj, Mapping):
        raise NotAStateDict(f"{subject}: {path} holds a {type(obj).__name__}, not a state dict "
                            "(fix: save model.state_dict() with torch.save)")
    for key in ("state_dict", "model", "params"):
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            return inner
    return obj


def _require_tensors(state: Mapping[str, Any], path: Path, subject: str) -> None:
    """Every key a string, every value a tensor: anything else is not a plain state dict."""
    import torch

    bad = [f"{k!r} ({type(v).__name__})" for k, v in state.items()
           if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise NotAStateDict(f"{subject}: {path} is not a plain state dict: {len(bad)} entries are not "
                            f"tensors: {_listing(bad)} (fix: save model.state_dict(), or wrap it under "
                            "'state_dict' with other data beside it)")


def _listing(items: list[str]) -> str:
    """Up to ten items, then how many more."""
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def check_keys(state: Mapping[str, Tensor], expected: Mapping[str, tuple[int, ...]], *,
               subject: str = "state dict") -> None:
    """Compare a state dict with the names and shapes a network expects; report missing keys,
    unexpected keys and shape mismatches together (up to ten of each)."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    shapes = [f"{k}: expected {tuple(expected[k])}, got {tuple(state[k].shape)}"
              for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    parts = [f"{len(items)} {label}: {_listing(items)}" for label, items in
             (("missing keys", missing), ("unexpected keys", extra), ("shape mismatches", shapes)) if items]
    if parts:
        raise StateDictMismatch(f"{subject}: the weights do not fit the network: " + "; ".join(parts)
                                + " (fix: use the checkpoint made for this model and its settings)")


def load_state_dict(source: str | Path | ModelSpec, *, progress: bool = False,
                    expected: Mapping[str, tuple[int, ...]] | None = None, mmap: bool = False) -> dict[str, Tensor]:
    """Load a plain state dict from a registry name, spec, local path or http(s) URL.

    Always ``torch.load(path, map_location="cpu", weights_only=True)``: a checkpoint is never
    allowed to run code, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says (it only overrides
    calls that leave weights_only unset). A checkpoint that wraps its state dict under
    "state_dict" or "model" is unwrapped. With ``expected`` (name -> shape) the keys and shapes
    are checked, so a wrong file fails with a list instead of a stack trace from
    ``load_state_dict``.

    ``mmap=True`` maps the file rather than reading it (0.3 s less for a 137 MB checkpoint on a
    busy 2-core machine), for a caller that copies every tensor it keeps (a layout conversion,
    a move to the GPU) or drops the state right after: the tensors are views of the file, and a
    file truncated while one is still in use would kill the process (SIGBUS).
    """
    check_torch_version()
    path, subject = _resolve_source(source, progress)
    state = _unwrap(_torch_load(path, subject, mmap), path, subject)
    _require_tensors(state, path, subject)
    if expected is not None:
        check_keys(state, expected, subject=f"{subject} ({path})")
    return dict(state)


