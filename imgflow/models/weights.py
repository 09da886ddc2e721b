"""The ``weights`` parameter every model-using stage takes: one meaning everywhere.

``weights = "name | path | URL"`` (or a stage keyword such as "random"): these helpers resolve
it, and say which weights produced an output, for the pipeline fingerprint (what makes finished
items run again).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from imgflow.errors import ImgflowError
from imgflow.models.registry import get, registry
from imgflow.models.spec import HASH_IN_FILENAME
from imgflow.models.untrained import UNTRAINED, is_untrained_file


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
    size and mtime (replacing a fine-tuned checkpoint re-runs the items), and ``untrained`` when
    ``imgflow models random`` wrote it (see :mod:`imgflow.models.untrained`). ``known_urls``
    (name -> URL) answers for a plugin's own models when the registry cannot (plugin not
    loaded), so fingerprinting never fails a ``validate``.
    """
    if isinstance(source, Path):
        try:
            st = source.stat()
        except OSError:
            return {"weights": str(source), "missing": True}
        facts: dict[str, Any] = {"weights": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if is_untrained_file(source):
            facts[UNTRAINED] = True
        return facts
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
