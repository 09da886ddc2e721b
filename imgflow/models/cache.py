"""The weights cache (torch.hub's checkpoint folder): location, verification, download, import.

- one cache, torch.hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), so a checkpoint
  torch.hub or torchvision already downloaded is reused and vice versa;
- a download never leaves a partial or unverified file under its final name: it goes to a
  temporary file in the cache folder, is checked against the sha256 (prefix or full digest) and
  the size, and only then renamed into place;
- machines without internet get an error that says exactly which file to fetch elsewhere and
  the command (``imgflow models import NAME FILE``) that puts it in the cache.

torch is imported only to download (torch.hub's downloader).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from imgflow.models.spec import CacheError, ChecksumError, DownloadError, ModelError, ModelSpec

DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation; torch.hub's urlopen has none of its own
_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


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
    return text[0].lower() if text and _HEX64.match(text[0].lower()) else None


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
class Fetch:
    """One download into the cache: what, from where, to where, and how to explain a failure."""

    url: str
    final: Path
    subject: str  # "model 'x'" or "weights file 'f.pth'"
    hash_prefix: str | None
    offline_fix: str  # what to do on a machine without internet


def download(job: Fetch, progress: bool, check: Callable[[Path], None] | None,
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


def _hash_error(job: Fetch, exc: Exception) -> ChecksumError | None:
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


def _download_error(job: Fetch, exc: Exception, damaged: str) -> ModelError | None:
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


def _model_job(spec: ModelSpec) -> Fetch:
    """Download job for a registered model; the full digest doubles as torch.hub's prefix."""
    return Fetch(url=spec.url, final=cache_path(spec), subject=f"model '{spec.name}'",
                  hash_prefix=spec.sha256 or spec.sha256_prefix,
                  offline_fix=f"run: imgflow models import {spec.name} FILE")


def pull(spec: ModelSpec, progress: bool = False, *, _damaged: str = "") -> Path:
    """Download ``spec`` into the cache (even if present), verified; return the cached path."""
    fix = f"the server sent a different file; check {spec.url} or report it to the plugin's authors"

    def check(tmp: Path) -> None:
        size = tmp.stat().st_size
        digest = sha256_file(tmp) if spec.size in (None, size) else ""
        _check(spec, digest, size, tmp, f"{fix}; nothing was put in the cache")
        _pin(spec, digest)

    return download(_model_job(spec), progress, check, damaged=_damaged)


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


