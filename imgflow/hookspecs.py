"""Hook specifications: the points where a plugin plugs into imgflow.

A plugin is a module (usually registered through the ``imgflow`` entry-point group) that defines
functions decorated with :data:`imgflow.hookimpl` whose names match the specifications below.
Argument names must match; a plugin may accept fewer arguments than a spec offers.

Registration hooks take a ``register`` callback (the llm convention), so one plugin can register
any number of things and the order of plugins never matters. Lifecycle hooks observe a run; they
must not change it, and an exception raised in one is reported as a warning and then ignored, so a
broken notifier never costs finished work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click

    from imgflow.stage import Stage

hookspec = pluggy.HookspecMarker("imgflow")
hookimpl = pluggy.HookimplMarker("imgflow")


@hookspec
def register_stages(register: Callable[[type[Stage]], None]) -> None:
    """Register stage classes.

    Call ``register(StageClass)`` once per stage. The class must subclass
    :class:`imgflow.Stage` and set a unique lowercase ``name``. Two plugins registering the same
    name is an error that names both plugins.

    Keep the module that defines this hook light: import heavy libraries (torch, torchvision)
    inside the hook or in the stage module it imports, so ``imgflow --help`` stays fast.
    """


@hookspec
def register_models(register: Callable[..., None]) -> None:
    """Register downloadable model weights in the shared registry (imgflow.models).

    Call ``register(ModelSpec(name=..., url=..., sha256=..., size=..., license=..., stage=...))``
    once per checkpoint. Names are unique across plugins (a duplicate names both plugins). The
    registry gives every stage the same cache (torch.hub's checkpoint folder), download with hash
    verification, ``imgflow models import`` for machines without internet, and safe loading.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``imgflow`` command line.

    ``cli`` is the top-level click group; decorate functions with ``@cli.command()`` (or add a
    group) inside this hook.
    """


@hookspec
def pipeline_start(run: dict[str, Any]) -> None:
    """Called once when a run starts, before any item is read.

    ``run`` holds ``run_id``, ``pipeline`` (name), ``pipeline_path``, ``input``, ``output``,
    ``fingerprint`` and ``stages`` (a list of stage ids). Return value ignored.
    """


@hookspec
def item_done(record: dict[str, Any]) -> None:
    """Called once per input item that this run finished, done or failed.

    ``record`` is exactly the item's manifest record (see the README's manifest reference): it
    holds ``input``, ``status`` ("done" or "failed"), ``outputs``, ``error`` and ``results``.
    Skipped items (already done in an earlier run) are not reported. Return value ignored.
    """


@hookspec
def pipeline_finish(run: dict[str, Any], summary: dict[str, Any]) -> None:
    """Called once when a run ends, also when it ends early on an error.

    ``summary`` is the run summary written to ``run-summary.json`` (counts by status, timings,
    exit code). Return value ignored.
    """
