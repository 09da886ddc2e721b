"""imgflow.parallel.map_per_core: same results as a loop, modes carried over, threads restored."""

from __future__ import annotations

import threading

import pytest
import torch

from imgflow.parallel import map_per_core


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_results_in_order_equal_to_a_loop_and_threads_restored(two_threads):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3)
    images = [torch.rand(1, 3, 20 + i, 30) for i in range(7)]
    with torch.inference_mode():
        want = [conv(x) for x in images]
        seen_threads: set[str] = set()

        def forward(x):
            seen_threads.add(threading.current_thread().name)
            assert torch.is_inference_mode_enabled() and torch.get_num_threads() == 1
            return conv(x)

        got = map_per_core(forward, images)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got, want, strict=True))
    assert len(seen_threads) == 2 and all(n.startswith("imgflow-core") for n in seen_threads)
    assert torch.get_num_threads() == 2


def test_grad_mode_is_carried_and_errors_propagate_with_threads_restored(two_threads):
    with torch.no_grad():
        assert map_per_core(lambda _: torch.is_grad_enabled(), [1, 2]) == [False, False]
    assert map_per_core(lambda _: torch.is_grad_enabled(), [1, 2]) == [True, True]

    def fail(x):
        raise ValueError(f"bad {x}")

    with pytest.raises(ValueError, match="bad"):
        map_per_core(fail, [1, 2, 3])
    assert torch.get_num_threads() == 2


def test_one_input_or_one_core_runs_inline():
    assert map_per_core(lambda _: threading.current_thread().name, ["a"]) == [threading.current_thread().name]
