"""Remembering a stage's precision verdict per weights file and device, across runs.

Stages with ``autocast = "auto"`` (colorize, colorize.ddcolor) keep a reduced precision only if
a calibration forward at setup stays within tolerance of float32. The verdict depends only on
the weights, the network's settings, the device and torch, yet it cost every run two forwards:
about 3 s of a cron run's start-up for SIGGRAPH17 on a 2-core CPU. So it is computed once and
kept in ``$TORCH_HOME/hub/imgflow-precision.json`` (beside torch's checkpoint cache), keyed by
a hash of every fact it depends on:

* the weights: what the pipeline fingerprint records (registry name and hash, or a file's path,
  size and mtime, or the seed of ``random``), so replacing a checkpoint calibrates again;
* the stage's own facts (model, input side, tolerance, the candidate precisions);
* the device: its type, the CPU model and its bfloat16 support, or the GPU's name and compute
  capability; and the torch version (kernels change between releases).

The cache is an optimisation only: a missing, unreadable, corrupt or read-only file means the
calibration runs as before (and the verdict is simply not kept). Delete the file to calibrate
again (or set ``IMGFLOW_PRECISION_CACHE=off``; a path there moves the file). Writes are atomic
(temp file and rename), so two runs never leave a torn file; if they race, one verdict is lost
and computed again next time.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

CACHE_FILE = "imgflow-precision.json"
VERSION = 1
MAX_ENTRIES = 256  # oldest dropped first: a file of a few tens of kB at most


#: A path for the cache file instead of the default, or "off" to calibrate on every run (the test
#: suite sets "off", so no test depends on, or writes to, the user's cache).
ENV = "IMGFLOW_PRECISION_CACHE"


def cache_file() -> Path | None:
    """Where verdicts are kept, or None when the cache is turned off."""
    from imgflow.models.cache import hub_dir

    override = os.environ.get(ENV)
    if override is not None:
        return None if override.strip().lower() in ("", "off", "0", "false") else Path(override).expanduser()
    return hub_dir() / CACHE_FILE


def device_facts(device: torch.device) -> dict[str, Any]:
    """What makes one device compute differently from another, for the cache key."""
    import torch

    facts: dict[str, Any] = {"type": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        facts["name"] = torch.cuda.get_device_name(index)
        facts["capability"] = list(torch.cuda.get_device_capability(index))
    elif device.type == "cpu":
        facts["cpu"] = _cpu_identity()
    return facts


def _cpu_identity() -> str:
    """The CPU model and its flags' hash (bfloat16 support and vector width live in the flags)."""
    model, flags = "unknown", ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    return f"{model} / {hashlib.sha256(flags.encode()).hexdigest()[:12]}"


def cache_key(facts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def remembered_choice(facts: dict[str, Any], choose: Callable[[], str]) -> tuple[str, bool]:
    """The precision for ``facts``: the kept verdict, else ``choose()`` (then kept).

    ``choose`` returns a dtype name ("float32", "bfloat16", "float16"). Returns the name and
    whether it came from the cache (for the manifest and logs).
    """
    if cache_file() is None:
        return choose(), False
    key = cache_key(facts)
    entries = _read()
    found = entries.get(key)
    if isinstance(found, dict) and isinstance(found.get("choice"), str):
        return found["choice"], True
    choice = choose()
    entries[key] = {"choice": choice, "facts": facts}
    _write(entries)
    return choice, False


def _read() -> dict[str, Any]:
    path = cache_file()
    try:
        doc = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("entries"), dict):
        return {}
    return dict(doc["entries"])


def _write(entries: dict[str, Any]) -> None:
    """Keep the newest MAX_ENTRIES verdicts; never fail the run over the cache."""
    path = cache_file()
    if path is None:
        return
    kept = dict(list(entries.items())[-MAX_ENTRIES:])
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"version": VERSION, "entries": kept}, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
