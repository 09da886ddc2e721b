"""Fixtures the plugin test modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def one_intra_op_thread() -> Iterator[None]:
    """One intra-op thread for a module (opt in with ``pytestmark = pytest.mark.usefixtures``).

    On a loaded two-core machine OpenMP's barrier waits make every op on tiny tensors hundreds of
    times slower (measured: 8 ms vs 15 us for a hardswish), which turns a 1 s test into a minute.
    Results do not depend on it.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def stylize_plugin(imgflow_register):
    """The stylize plugin registered in-process, unless its entry point already loaded it."""
    import imgflow_stylize

    from imgflow import plugins

    if not plugins.get_plugin_manager().is_registered(imgflow_stylize):
        imgflow_register(imgflow_stylize, name="stylize")
    return imgflow_stylize
