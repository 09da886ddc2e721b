"""The plugin manager: loads ``imgflow`` entry points and builds the stage registry.

Loading is forgiving (llm's lesson): a plugin that fails to import is recorded with its
distribution's name and a fix, and everything else keeps working. The stage registry is strict
(datasette's rule): two plugins registering one stage name is an error naming both.

``IMGFLOW_LOAD_PLUGINS`` selects what loads: unset loads every installed plugin; an empty value
loads none; otherwise a comma-separated list of entry-point names (``augment``) or distribution
names (``imgflow-foo``).
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from imgflow import hookspecs
from imgflow.errors import PluginError

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.stage import Stage

ENTRY_POINT_GROUP = "imgflow"
ENV_LOAD_PLUGINS = "IMGFLOW_LOAD_PLUGINS"


@dataclass(frozen=True)
class LoadFailure:
    """A plugin that could not be loaded, and what to do about it."""

    plugin: str
    distribution: str
    error: str

    def __str__(self) -> str:
        return (
            f"plugin '{self.plugin}' (distribution '{self.distribution}') failed to load: "
            f"{self.error} (fix: reinstall or upgrade '{self.distribution}', or leave it out "
            f"with {ENV_LOAD_PLUGINS})"
        )


@dataclass(frozen=True)
class UnknownSelection(LoadFailure):
    """A name in IMGFLOW_LOAD_PLUGINS that no installed plugin has (a typo, or not installed)."""

    def __str__(self) -> str:
        return f"{ENV_LOAD_PLUGINS} names '{self.plugin}', which is not an installed plugin{self.error}"


def _unknown_selections(wanted: set[str], eps: list[metadata.EntryPoint]) -> list[LoadFailure]:
    """One failure per selected name that matches no entry point or distribution, with a hint."""
    import difflib

    known: set[str] = set()
    for ep in eps:
        known.add(ep.name)
        if ep.dist is not None:
            known.update({ep.dist.name, ep.dist.name.replace("_", "-")})
    failures: list[LoadFailure] = []
    for name in sorted(wanted - known):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        fix = f" (fix: installed: {', '.join(sorted(ep.name for ep in eps)) or 'none'}; see imgflow plugins)"
        failures.append(UnknownSelection(name, "", hint + fix))
    return failures


@dataclass(frozen=True)
class StageEntry:
    """A registered stage class and the plugin that provided it."""

    cls: type[Stage]
    plugin: str
    distribution: str
    version: str


@dataclass
class PluginState:
    """Everything loaded: the pluggy manager, failures, and (lazily) the stage registry."""

    manager: pluggy.PluginManager
    failures: list[LoadFailure] = field(default_factory=list)
    dists: dict[str, tuple[str, str]] = field(default_factory=dict)  # plugin -> (dist, version)
    _stages: dict[str, StageEntry] | None = None
    _stage_problems: list[str] = field(default_factory=list)


_lock = threading.Lock()
_state: PluginState | None = None


def _selected(ep: metadata.EntryPoint, wanted: set[str] | None) -> bool:
    if wanted is None:
        return True
    dist = ep.dist.name if ep.dist is not None else ""
    return ep.name in wanted or dist in wanted or dist.replace("_", "-") in wanted


def _wanted_from_env() -> set[str] | None:
    raw = os.environ.get(ENV_LOAD_PLUGINS)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _load() -> PluginState:
    manager = pluggy.PluginManager("imgflow")
    manager.add_hookspecs(hookspecs)
    state = PluginState(manager=manager)
    wanted = _wanted_from_env()
    eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    if wanted:
        state.failures.extend(_unknown_selections(wanted, eps))
    for ep in eps:
        if not _selected(ep, wanted):
            continue
        dist = ep.dist.name if ep.dist is not None else "unknown"
        version = ep.dist.version if ep.dist is not None else "0"
        if manager.has_plugin(ep.name):
            continue
        try:
            module = ep.load()
            manager.register(module, name=ep.name)
        except Exception as exc:  # any import-time failure is the plugin's, not ours
            state.failures.append(LoadFailure(ep.name, dist, f"{type(exc).__name__}: {exc}"))
            continue
        state.dists[ep.name] = (dist, version)
    return state


def get_state() -> PluginState:
    """The process-wide plugin state, loaded on first use."""
    global _state
    with _lock:
        if _state is None:
            _state = _load()
        return _state


def get_plugin_manager() -> pluggy.PluginManager:
    return get_state().manager


def reset() -> None:
    """Forget loaded plugins (tests, or after changing IMGFLOW_LOAD_PLUGINS)."""
    global _state
    with _lock:
        _state = None


def register_plugin(plugin: Any, name: str, distribution: str = "local", version: str = "0") -> None:
    """Register an in-process plugin object (a module or class with hookimpls)."""
    state = get_state()
    state.manager.register(plugin, name=name)
    state.dists[name] = (distribution, version)
    state._stages = None


def unregister_plugin(name: str) -> None:
    state = get_state()
    plugin = state.manager.get_plugin(name)
    if plugin is not None:
        state.manager.unregister(plugin, name=name)
    state.dists.pop(name, None)
    state._stages = None


def _collect_stages(state: PluginState) -> None:
    from imgflow.stage import Stage

    stages: dict[str, StageEntry] = {}
    problems: list[str] = []
    for plugin_name, plugin in state.manager.list_name_plugin():
        impl = getattr(plugin, "register_stages", None)
        if impl is None:
            continue
        dist, version = state.dists.get(plugin_name, ("local", "0"))
        found: list[type] = []
        try:
            impl(register=found.append)
        except Exception as exc:
            state.failures.append(
                LoadFailure(plugin_name, dist, f"register_stages raised {type(exc).__name__}: {exc}")
            )
            continue
        for cls in found:
            name = getattr(cls, "name", "")
            if not (isinstance(cls, type) and issubclass(cls, Stage)) or not name:
                problems.append(
                    f"plugin '{plugin_name}' registered {cls!r}, which is not a Stage subclass "
                    "with a name (fix: subclass imgflow.Stage and set name)"
                )
                continue
            if name in stages and stages[name].cls is not cls:
                other = stages[name]
                problems.append(
                    f"stage '{name}' is registered by two plugins: '{other.plugin}' "
                    f"({other.distribution}) and '{plugin_name}' ({dist}) (fix: uninstall one, "
                    f"or leave one out with {ENV_LOAD_PLUGINS})"
                )
                continue
            stages[name] = StageEntry(cls, plugin_name, dist, version)
    state._stages = stages
    state._stage_problems = problems


def stage_registry() -> dict[str, StageEntry]:
    """Every registered stage by name. Raises PluginError on duplicates or bad registrations."""
    state = get_state()
    if state._stages is None:
        _collect_stages(state)
    if state._stage_problems:
        raise PluginError("\n".join(state._stage_problems))
    assert state._stages is not None
    return state._stages


def stage_problems() -> list[str]:
    state = get_state()
    if state._stages is None:
        _collect_stages(state)
    return list(state._stage_problems)


def load_failures() -> list[LoadFailure]:
    state = get_state()
    if state._stages is None:
        _collect_stages(state)
    return list(state.failures)


def plugins_info() -> list[dict[str, Any]]:
    """Installed plugins with version, implemented hooks and stages (``imgflow plugins``)."""
    state = get_state()
    if state._stages is None:
        _collect_stages(state)
    by_plugin: dict[str, list[str]] = {}
    for name, entry in (state._stages or {}).items():
        by_plugin.setdefault(entry.plugin, []).append(name)
    info = []
    for plugin_name, plugin in sorted(state.manager.list_name_plugin(), key=lambda p: p[0]):
        dist, version = state.dists.get(plugin_name, ("local", "0"))
        hooks = sorted(h.name for h in state.manager.get_hookcallers(plugin) or [])
        info.append(
            {
                "name": plugin_name,
                "distribution": dist,
                "version": version,
                "hooks": hooks,
                "stages": sorted(by_plugin.get(plugin_name, [])),
            }
        )
    return info


def call_lifecycle(hook: str, **kwargs: Any) -> list[str]:
    """Call a lifecycle hook on every plugin, isolating failures. Returns warning messages."""
    state = get_state()
    warnings: list[str] = []
    caller = getattr(state.manager.hook, hook)
    for impl in caller.get_hookimpls():
        try:
            impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
        except Exception as exc:
            warnings.append(f"plugin '{impl.plugin_name}' hook {hook} raised {type(exc).__name__}: {exc}")
    return warnings
