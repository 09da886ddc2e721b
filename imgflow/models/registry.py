"""The shared model registry: every plugin's ``register_models`` hook, collected once.

Names are unique across plugins (a duplicate names both plugins); a broken plugin costs its own
models, not everyone's. The collection is cached and rebuilt when the set of registered plugins
changes.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imgflow.errors import PluginError
from imgflow.models.cache import cache_path, is_cached, pinned_digest
from imgflow.models.spec import ModelSpec, UnknownModel

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.plugins import PluginState


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
    raise UnknownModel(unknown_message(name, list(known)))


def unknown_message(name: str, known: list[str]) -> str:
    """'unknown model' with the closest names, so a typo costs one glance."""
    if not known:
        return (f"unknown model '{name}': no models are registered (fix: install or enable the plugin "
                "that provides it; see imgflow plugins)")
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown model '{name}'{hint} (fix: see imgflow models list)"


# ----------------------------------------------------------------- describe


def describe(spec: ModelSpec) -> dict[str, Any]:
    """A JSON-ready summary for ``imgflow models list``."""
    entry = _entries_quiet().get(spec.name)
    return {
        "name": spec.name,
        "stage": spec.stage,
        "size": spec.size,
        "approx_size": spec.approx_size,
        "license": spec.license,
        "url": spec.url,
        "sha256": spec.sha256,
        "sha256_prefix": spec.sha256_prefix,
        "pin_on_first_use": spec.pin_on_first_use,
        "pinned_sha256": pinned_digest(spec),
        "description": spec.description,
        "plugin": entry.plugin if entry else None,
        "random_layout": spec.layout is not None,
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


