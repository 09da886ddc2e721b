"""Model weights shared by every model-using stage: registry, cache, download, verify, import, load.

Plugins describe checkpoints with :class:`ModelSpec` in their ``register_models`` hook; stages
then call :func:`ensure` (or :func:`load_state_dict`) in ``setup``. Everything lives in one
place so every stage gets the same guarantees:

- one cache, torch.hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), so a checkpoint
  torch.hub or torchvision already downloaded is reused and vice versa;
- a download never leaves a partial or unverified file under its final name: it goes to a
  temporary file in the cache folder, is checked against the sha256 (prefix or full digest) and
  the size, and only then renamed into place;
- machines without internet get an error that says exactly which file to fetch elsewhere and
  the command (``imgflow models import NAME FILE``) that puts it in the cache;
- loading is ``torch.load(..., weights_only=True)`` always: a checkpoint is data, never code.

torch is imported inside functions only, so ``imgflow --help`` and ``imgflow models list`` stay
fast.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import re
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from imgflow.errors import ConfigError, ImgflowError, PluginError

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from imgflow.plugins import PluginState

MIN_TORCH = (2, 10)  # older torch.load(weights_only=True) had known bypasses
DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation; torch.hub's urlopen has none of its own
HASH_IN_FILENAME = re.compile(r"-([0-9a-f]{8,})\.")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_HEX = re.compile(r"^[0-9a-f]+$")
_CHUNK = 1 << 20
_MAX_LISTED = 10
_WEIGHT_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt", ".tar", ".pkl"}


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
    """

    name: str
    url: str
    license: str  # shown by `imgflow models list`: users must know what they download
    stage: str  # the stage that uses it
    sha256: str | None = None
    sha256_prefix: str | None = None
    size: int | None = None
    description: str = ""
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


# ----------------------------------------------------------------- registry


@dataclass(frozen=True)
class ModelEntry:
    """A registered spec and the plugin that registered it."""

    spec: ModelSpec
    plugin: str
    distribution: str


_HOOK_FAILED = "register_models raised "
_registry_lock = threading.RLock()  # re-entrant: a hook may itself look a model up
# (plugin state, registered plugins, entries, problems): rebuilt when either changes, which is
# what plugins.reset(), register_plugin() and unregister_plugin() do.
_registry_cache: tuple[Any, tuple[Any, ...], dict[str, ModelEntry], list[str]] | None = None


def _plugins_key(state: PluginState) -> tuple[Any, ...]:
    """Identity of the registered plugin set; a change invalidates the cached registry."""
    return tuple(state.manager.list_name_plugin())


def _collect_models(state: PluginState) -> tuple[dict[str, ModelEntry], list[str]]:
    """Call every plugin's register_models; duplicates and non-specs become problems."""
    from imgflow.plugins import LoadFailure

    entries: dict[str, ModelEntry] = {}
    problems: list[str] = []
    # Forget failures from an earlier collection: the plugin that caused them may be gone.
    state.failures[:] = [f for f in state.failures if not f.error.startswith(_HOOK_FAILED)]
    for plugin_name, plugin in state.manager.list_name_plugin():
        impl = getattr(plugin, "register_models", None)
        if impl is None:
            continue
        dist, _version = state.dists.get(plugin_name, ("local", "0"))
        found: list[Any] = []
        try:
            impl(register=_collector(found))
        except Exception as exc:  # a broken plugin costs its own models, not everyone's
            state.failures.append(LoadFailure(plugin_name, dist, f"{_HOOK_FAILED}{type(exc).__name__}: {exc}"))
            continue
        for spec in found:
            problem = _add_entry(entries, spec, plugin_name, dist)
            if problem:
                problems.append(problem)
    return entries, problems


def _collector(found: list[Any]) -> Callable[..., None]:
    """The ``register`` callback: accepts ``register(spec)`` or ``register(name=..., ...)``."""

    def register(spec: Any = None, **fields: Any) -> None:
        found.append(ModelSpec(**fields) if spec is None else spec)

    return register


def _add_entry(entries: dict[str, ModelEntry], spec: Any, plugin: str, dist: str) -> str | None:
    """Add one registration; return a problem message instead when it is invalid or a duplicate."""
    from imgflow.plugins import ENV_LOAD_PLUGINS

    if not isinstance(spec, ModelSpec):
        return (f"plugin '{plugin}' registered {spec!r}, which is not a ModelSpec "
                "(fix: register(imgflow.models.ModelSpec(...)))")
    other = entries.get(spec.name)
    if other is not None and other.spec != spec:
        return (f"model '{spec.name}' is registered by two plugins: '{other.plugin}' "
                f"({other.distribution}) and '{plugin}' ({dist}) (fix: uninstall one, or leave one "
                f"out with {ENV_LOAD_PLUGINS})")
    if other is None:
        entries[spec.name] = ModelEntry(spec, plugin, dist)
    return None


def entries() -> dict[str, ModelEntry]:
    """Every registered model with its plugin. Raises PluginError on duplicates or bad specs."""
    global _registry_cache
    from imgflow.plugins import get_state

    state = get_state()
    key = _plugins_key(state)
    with _registry_lock:
        cached = _registry_cache
        if cached is None or cached[0] is not state or cached[1] != key:
            found, problems = _collect_models(state)
            cached = _registry_cache = (state, key, found, problems)
    if cached[3]:
        raise PluginError("\n".join(cached[3]))
    return dict(cached[2])


def registry() -> dict[str, ModelSpec]:
    """Every registered model spec by name (see :func:`entries` for errors)."""
    return {name: entry.spec for name, entry in entries().items()}


def get(name: str) -> ModelSpec:
    """The spec registered as ``name``, or a ConfigError with a did-you-mean and the fix."""
    known = registry()
    spec = known.get(name)
    if spec is not None:
        return spec
    raise UnknownModel(_unknown_message(name, list(known)))


def _unknown_message(name: str, known: list[str]) -> str:
    """'unknown model' with the closest names, so a typo costs one glance."""
    if not known:
        return (f"unknown model '{name}': no models are registered (fix: install or enable the plugin "
                "that provides it; see imgflow plugins)")
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown model '{name}'{hint} (fix: see imgflow models list)"


# ----------------------------------------------------------------- cache location


def _hub_dir_from_env() -> Path:
    """torch.hub.get_dir()'s rule without importing torch: $TORCH_HOME/hub, else
    $XDG_CACHE_HOME/torch/hub, else ~/.cache/torch/hub."""
    xdg = os.getenv("XDG_CACHE_HOME", "~/.cache")
    torch_home = os.getenv("TORCH_HOME", os.path.join(xdg, "torch"))
    return Path(os.path.expanduser(torch_home)) / "hub"


def hub_dir() -> Path:
    """torch.hub's folder; when torch.hub is already imported, ask it (it honours set_dir())."""
    hub = sys.modules.get("torch.hub")
    if hub is not None:
        return Path(hub.get_dir())
    return _hub_dir_from_env()


def cache_dir() -> Path:
    """The checkpoint cache shared with torch.hub and torchvision."""
    return hub_dir() / "checkpoints"


def cache_path(spec: ModelSpec) -> Path:
    """Where ``spec``'s file lives once downloaded or imported (it may not exist yet)."""
    return cache_dir() / spec.filename


# ----------------------------------------------------------------- verification

_verified_lock = threading.Lock()
_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, remembered per (path, size, mtime) so a stage's every setup does
    not re-hash a 130 MB checkpoint."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _verified_lock:
        known = _verified.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    result = digest.hexdigest()
    with _verified_lock:
        _verified[key] = result
    return result


def pin_path(spec: ModelSpec) -> Path:
    """Where a pin_on_first_use spec keeps the sha256 pinned at its first download or import."""
    final = cache_path(spec)
    return final.with_name(final.name + ".sha256")


def pinned_digest(spec: ModelSpec) -> str | None:
    """The pinned sha256 of a pin_on_first_use spec, None before its first download."""
    if not spec.pin_on_first_use:
        return None
    try:
        text = pin_path(spec).read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    return text[0].lower() if text and _HEX.match(text[0].lower()) and len(text[0]) == 64 else None


def _pin(spec: ModelSpec, digest: str) -> None:
    """Record ``digest`` as the pin (``sha256sum`` format, written atomically) when none exists.

    Called before the file is renamed into place: a crash in between leaves a pin without a file,
    and the next download must then match it, which it does when the server's file is the same.
    """
    if not spec.pin_on_first_use or pinned_digest(spec) is not None:
        return
    path = pin_path(spec)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(f"{digest}  {spec.filename}\n", encoding="ascii")
        os.replace(tmp, path)
    except OSError as exc:
        raise CacheError(f"model '{spec.name}': cannot write the pinned sha256 {path}: {exc} "
                         "(fix: set TORCH_HOME to a writable folder)") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _mismatch(spec: ModelSpec, digest: str, size: int) -> tuple[str, str, str] | None:
    """(what, expected, actual) for the first check that fails, or None when all pass."""
    if spec.size is not None and size != spec.size:
        return "size", f"{spec.size} bytes", f"{size} bytes"
    pinned = pinned_digest(spec)
    if pinned is not None and digest != pinned:
        return "sha256 (pinned at its first download)", pinned, digest
    if spec.sha256 is not None and digest != spec.sha256:
        return "sha256", spec.sha256, digest
    if spec.sha256_prefix is not None and not digest.startswith(spec.sha256_prefix):
        return "sha256", f"{spec.sha256_prefix}...", digest
    return None


def _check(spec: ModelSpec, digest: str, size: int, path: Path, fix: str) -> None:
    """Raise ChecksumError naming the model, the file, expected vs actual, and ``fix``."""
    bad = _mismatch(spec, digest, size)
    if bad is None:
        return
    what, expected, actual = bad
    note = " (a truncated download?)" if what == "size" and size < (spec.size or 0) else ""
    if what.startswith("sha256 (pinned"):
        fix += (f"; if the publisher replaced the file on purpose, delete {pin_path(spec)} to pin "
                "the new one")
    raise ChecksumError(f"model '{spec.name}': {path} is not the expected file: {what} is {actual}, "
                        f"expected {expected}{note} (fix: {fix})", expected=expected, actual=actual)


def verify_file(spec: ModelSpec, path: str | Path) -> str:
    """Check ``path`` against ``spec`` (size, full sha256, prefix); return its sha256."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model '{spec.name}': {path} does not exist or is not a file "
                         f"(fix: give the path of the downloaded {spec.filename})")
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        digest = ""  # no need to hash a file whose size already proves it wrong
    else:
        digest = sha256_file(path)
    _check(spec, digest, size, path, f"download it again from {spec.url}")
    return digest


def is_cached(spec: ModelSpec) -> bool:
    """True when the cache holds a file of the right size (cheap: no hashing)."""
    path = cache_path(spec)
    try:
        size = path.stat().st_size
    except OSError:
        return False
    return path.is_file() and (spec.size is None or size == spec.size)


# ----------------------------------------------------------------- download


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Give urllib a timeout for the download unless the process already chose one: a stalled
    server must fail the run with a message, not hang a cron job forever."""
    if socket.getdefaulttimeout() is not None:
        yield
        return
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(None)


def _network_reason(exc: BaseException) -> str | None:
    """A short reason when ``exc`` is a network failure, None when it is something else."""
    import http.client
    from urllib.error import HTTPError, URLError

    if isinstance(exc, HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, URLError):
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return f"timed out after {DOWNLOAD_TIMEOUT_S:g} s"
        return str(reason)
    if isinstance(exc, TimeoutError):
        return f"timed out after {DOWNLOAD_TIMEOUT_S:g} s"
    if isinstance(exc, ConnectionError | http.client.HTTPException):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


def _make_cache_folder(folder: Path, subject: str) -> None:
    """Create the cache folder, or say how to point it somewhere writable."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"{subject}: cannot create the weights cache {folder}: {exc.strerror or exc} "
                         "(fix: set TORCH_HOME to a writable folder)") from exc


def _fsync(path: Path) -> None:
    """Flush a finished temporary file to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _Fetch:
    """One download into the cache: what, from where, to where, and how to explain a failure."""

    url: str
    final: Path
    subject: str  # "model 'x'" or "weights file 'f.pth'"
    hash_prefix: str | None
    offline_fix: str  # what to do on a machine without internet


def _download(job: _Fetch, progress: bool, check: Callable[[Path], None] | None,
              damaged: str = "") -> Path:
    """Download ``job.url`` to a temporary file beside ``job.final``, check it, rename it."""
    import torch.hub

    folder = job.final.parent
    _make_cache_folder(folder, job.subject)
    tmp = folder / f".{job.final.name}.{uuid.uuid4().hex}.download"
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            torch.hub.download_url_to_file(job.url, str(tmp), hash_prefix=job.hash_prefix, progress=progress)
        if check is not None:
            check(tmp)
        _fsync(tmp)
        os.replace(tmp, job.final)
    except ModelError:
        raise
    except Exception as exc:
        error = _hash_error(job, exc) or _download_error(job, exc, damaged)
        if error is None:
            raise  # not a download failure: a bug, keep the traceback
        raise error from exc
    finally:
        tmp.unlink(missing_ok=True)
    return job.final


def _hash_error(job: _Fetch, exc: Exception) -> ChecksumError | None:
    """torch.hub's 'invalid hash value' RuntimeError as a ChecksumError (None for anything else)."""
    text = str(exc)
    if not (isinstance(exc, RuntimeError) and text.startswith("invalid hash value")):
        return None
    got = re.search(r'got "([0-9a-f]+)"', text)
    actual = got.group(1) if got else "unknown"
    expected = job.hash_prefix or ""
    shown = expected if len(expected) == 64 else f"{expected}..."
    return ChecksumError(f"{job.subject}: the file downloaded from {job.url} has sha256 {actual}, expected "
                         f"{shown}; nothing was put in the cache ({job.final}) (fix: the server sent a "
                         "different file; check the URL, or report it to the plugin's authors)",
                         expected=expected, actual=actual)


def _download_error(job: _Fetch, exc: Exception, damaged: str) -> ModelError | None:
    """The offline message (model, cache path, URL, reason, import command); a CacheError for
    local write failures; None when ``exc`` is neither."""
    reason = _network_reason(exc)
    if reason is None and isinstance(exc, ValueError):  # e.g. urllib's "unknown url type"
        reason = str(exc)
    if reason is None and isinstance(exc, OSError):  # a local failure: disk full, permissions
        return CacheError(f"{job.subject}: could not write the download into {job.final.parent}: "
                          f"{type(exc).__name__}: {exc} (fix: free disk space, or set TORCH_HOME to a "
                          "writable folder)")
    if reason is None:
        return None
    state = (f"has a damaged file in the cache ({job.final}: {damaged})" if damaged
             else f"is not in the cache ({job.final})")
    return DownloadError(f"{job.subject} {state} and could not be downloaded from {job.url}: {reason}. "
                         f"On a machine without internet, download the file elsewhere and {job.offline_fix}")


def _model_job(spec: ModelSpec) -> _Fetch:
    """Download job for a registered model; the full digest doubles as torch.hub's prefix."""
    return _Fetch(url=spec.url, final=cache_path(spec), subject=f"model '{spec.name}'",
                  hash_prefix=spec.sha256 or spec.sha256_prefix,  # a pin is checked by pull()
                  offline_fix=f"run: imgflow models import {spec.name} FILE")


def pull(spec: ModelSpec, progress: bool = False, *, _damaged: str = "") -> Path:
    """Download ``spec`` into the cache (even if present), verified; return the cached path."""
    fix = f"the server sent a different file; check {spec.url} or report it to the plugin's authors"

    def check(tmp: Path) -> None:
        size = tmp.stat().st_size
        digest = sha256_file(tmp) if spec.size in (None, size) else ""
        _check(spec, digest, size, tmp, f"{fix}; nothing was put in the cache")
        _pin(spec, digest)

    return _download(_model_job(spec), progress, check, damaged=_damaged)


def _cache_problem(spec: ModelSpec, path: Path) -> str | None:
    """Why the cached file is unusable ('' when missing, None when valid)."""
    if not path.is_file():
        return ""
    try:
        digest = verify_file(spec, path)
    except ChecksumError as exc:
        return f"expected {exc.expected}, got {exc.actual}"
    _pin(spec, digest)  # a file that reached the cache another way: its first use pins it
    return None


def cached_file(spec: ModelSpec) -> Path | None:
    """The cached file when present and verified (size and sha256), else None; never downloads."""
    path = cache_path(spec)
    return path if _cache_problem(spec, path) is None else None


def ensure(spec: ModelSpec, progress: bool = False) -> Path:
    """The verified cached file for ``spec``, downloading it when missing or damaged (for
    instance a download truncated by an earlier crash)."""
    path = cache_path(spec)
    problem = _cache_problem(spec, path)
    if problem is None:
        return path
    return pull(spec, progress, _damaged=problem)


# ----------------------------------------------------------------- import


def _copy_hashing(src: Path, dst: Path) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` and hash the bytes on the way: one read of a large file."""
    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as reader, open(dst, "wb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return digest.hexdigest(), size


def import_file(spec: ModelSpec, file: str | Path) -> Path:
    """Copy a file fetched elsewhere into the cache under its canonical name, once it is
    proven to be ``spec``'s checkpoint. A wrong file never reaches the cache."""
    src = Path(file).expanduser()
    if not src.is_file():
        raise ModelError(f"model '{spec.name}': cannot import {src}: no such file (fix: give the path "
                         f"of the downloaded {spec.filename}, from {spec.url})")
    final = cache_path(spec)
    fix = f"this is not {spec.filename}; download it from {spec.url}; nothing was copied into the cache"
    if final.exists() and final.resolve() == src.resolve():
        size = final.stat().st_size
        digest = sha256_file(final)
        _check(spec, digest, size, src, fix)
        _pin(spec, digest)
        return final
    _make_cache_folder(final.parent, f"model '{spec.name}'")
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex}.import"
    try:
        digest, size = _copy_hashing(src, tmp)
        _check(spec, digest, size, src, fix)
        _pin(spec, digest)
        os.replace(tmp, final)
    except OSError as exc:
        raise CacheError(f"model '{spec.name}': could not copy {src} into {final.parent}: {exc} "
                         "(fix: free disk space, or set TORCH_HOME to a writable folder)") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return final


# ----------------------------------------------------------------- describe


def describe(spec: ModelSpec) -> dict[str, Any]:
    """A JSON-ready summary for ``imgflow models list``."""
    entry = _entries_quiet().get(spec.name)
    return {
        "name": spec.name,
        "stage": spec.stage,
        "size": spec.size,
        "license": spec.license,
        "url": spec.url,
        "sha256": spec.sha256,
        "sha256_prefix": spec.sha256_prefix,
        "pin_on_first_use": spec.pin_on_first_use,
        "pinned_sha256": pinned_digest(spec),
        "description": spec.description,
        "plugin": entry.plugin if entry else None,
        "cached": is_cached(spec),
        "path": str(cache_path(spec)),
    }


def _entries_quiet() -> dict[str, ModelEntry]:
    """Entries without raising on duplicates (describe must work while listing problems)."""
    try:
        return entries()
    except PluginError:
        cached = _registry_cache
        return cached[2] if cached else {}


# ----------------------------------------------------------------- loading


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
    raise UnknownModel(_unknown_message(text, list(known)) + " (or give a file path or an http(s) URL)")


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
    job = _Fetch(url=url, final=final, subject=f"weights file '{filename}'", hash_prefix=prefix,
                 offline_fix=f"copy it to {final}")
    return _download(job, progress, check=None)


def _torch_load(path: Path, subject: str) -> Any:
    """torch.load with weights_only=True, its failures turned into messages a user can act on."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise _corrupt(path, subject, exc) from exc
        raise _unsafe(path, subject, exc) from exc
    except (PermissionError, IsADirectoryError) as exc:
        raise WeightsError(f"{subject}: cannot read {path}: {exc.strerror} (fix: check its permissions)") from exc
    except Exception as exc:  # EOFError, RuntimeError (zip), KeyError/IndexError (legacy pickle)
        raise _corrupt(path, subject, exc) from exc


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
                    expected: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, Tensor]:
    """Load a plain state dict from a registry name, spec, local path or http(s) URL.

    Always ``torch.load(path, map_location="cpu", weights_only=True)``: a checkpoint is never
    allowed to run code, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says (it only overrides
    calls that leave weights_only unset). A checkpoint that wraps its state dict under
    "state_dict" or "model" is unwrapped. With ``expected`` (name -> shape) the keys and shapes
    are checked, so a wrong file fails with a list instead of a stack trace from
    ``load_state_dict``.
    """
    check_torch_version()
    path, subject = _resolve_source(source, progress)
    state = _unwrap(_torch_load(path, subject), path, subject)
    _require_tensors(state, path, subject)
    if expected is not None:
        check_keys(state, expected, subject=f"{subject} ({path})")
    return dict(state)


# ----------------------------------------------------------------------------- the `weights` parameter
# Every model-using stage takes ``weights = "name | path | URL"``; these helpers give them one
# meaning everywhere, so the fingerprint (what makes finished items run again) is the same rule.


def is_url(text: str) -> bool:
    """An http(s) URL (downloaded into the cache like torch.hub's load_state_dict_from_url)."""
    return text.startswith(("http://", "https://"))


def is_registered(name: str) -> bool:
    """True when ``name`` is a model in the shared registry (and not a file name)."""
    try:
        return name in registry()
    except ImgflowError:
        return False


def resolve_weights(value: str | None, default: str, resolve_path: Callable[[str], Path],
                    keywords: tuple[str, ...] = ()) -> str | Path:
    """What a stage's ``weights`` parameter names: the default registry model when unset, a
    keyword the stage understands (e.g. "random"), a registered name, a URL, or a local path
    made absolute by ``resolve_path`` (relative to the pipeline file)."""
    if value is None:
        return default
    if value in keywords or is_url(value) or is_registered(value):
        return value
    return resolve_path(value)


def weights_fingerprint(source: str | Path, known_urls: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Which weights produce a stage's output, for the pipeline fingerprint.

    A registered model contributes its name and hash prefix; a URL itself; a local file its path,
    size and mtime (replacing a fine-tuned checkpoint re-runs the items). ``known_urls``
    (name -> URL) answers for a plugin's own models when the registry cannot (plugin not
    loaded), so fingerprinting never fails a ``validate``.
    """
    if isinstance(source, Path):
        try:
            st = source.stat()
        except OSError:
            return {"weights": str(source), "missing": True}
        return {"weights": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if is_url(source):
        return {"weights": source}
    try:
        spec = get(source)
        # a pinned model's name stands for its content (any other file is refused), and the pin
        # must not enter the fingerprint: the first download would otherwise re-run every item
        prefix = "pinned" if spec.pin_on_first_use else spec.sha256_prefix or (spec.sha256 or "")[:8]
    except ImgflowError:
        match = HASH_IN_FILENAME.search((known_urls or {}).get(source, "").rsplit("/", 1)[-1])
        prefix = match.group(1) if match else "unregistered"
    return {"weights": f"{source}@{prefix}"}
