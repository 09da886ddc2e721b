"""Connecting the driver to Ray: start a local Ray for one run, or join a cluster.

Kept apart from the executor so the one place that imports Ray says what to do when it is
missing (exit 2 with the install command), and so Ray's own chatter (progress bars, INFO logs)
stays off a cron run's stderr.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from imgflow.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.config.executor import RaySection

INSTALL_HINT = "uv sync --extra ray, or pip install 'imgflow[ray]'"

#: Variables the driver forwards to every actor: imgflow's own (including the decode pool's test
#: hook) and torch's weight cache. Workers of a cluster started earlier would not see them.
FORWARDED_PREFIXES = ("IMGFLOW_",)
FORWARDED_NAMES = ("TORCH_HOME",)


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigError (exit 2) naming the install command."""
    # When the driver runs under `uv run`, Ray would start every worker through `uv run` too
    # (a sync per worker). The workers of a local Ray already use this interpreter.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
        import ray.data  # noqa: F401  (part of the extra; fail here, not mid-run)
    except ImportError as exc:
        raise ConfigError(f"[run] executor = \"ray\" needs Ray, which is not installed ({exc}) "
                          f"(fix: {INSTALL_HINT}; or run with --executor local)") from None
    return ray


def forwarded_env() -> dict[str, str]:
    """The driver's variables every actor gets (see FORWARDED_PREFIXES)."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES) or k in FORWARDED_NAMES}


@contextmanager
def ray_session(settings: RaySection) -> Iterator[Any]:
    """Ray connected for the duration of a run; a Ray this run started is shut down after it.

    A driver that already called ``ray.init`` (a notebook, the test suite) keeps its connection.
    """
    ray = import_ray()
    owned = not ray.is_initialized()
    if owned:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": "ERROR"}
        if settings.address is not None:
            kwargs["address"] = settings.address
        elif settings.object_store_mb is not None:
            kwargs["object_store_memory"] = settings.object_store_mb * 1024 * 1024
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise ConfigError(f"[run.ray] address = {settings.address!r}: cannot connect to a Ray cluster "
                              f"({exc}) (fix: start one with `ray start --head`, or unset address to start "
                              "a local Ray for this run; a cluster with token authentication also needs "
                              "RAY_AUTH_MODE=token here and its token in ~/.ray/auth_token)") from None
    quiet_ray_data()
    try:
        yield ray
    finally:
        if owned:
            ray.shutdown()


def quiet_ray_data() -> None:
    """No progress bars, INFO lines or block tracebacks from Ray Data on the driver's stderr.

    A cron run's mail stays short (Ray's core may still print a line of its own). Every per-file
    failure is in the manifest, and the executor says when it retries inputs a dead worker took
    with it; Ray keeps its own logs in its session folder (/tmp/ray/session_latest/logs).
    """
    import logging

    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
