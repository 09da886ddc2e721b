"""One local Ray cluster for the whole test session, started by the first test that needs it.

The workers are started with the repository on PYTHONPATH so they can import the test stage in
:mod:`tests.ray.crash_stage` (a stage whose worker dies, as a segfaulting extension would).
Everything else reaches the workers the way it would in production: the pipeline is pickled to
the actors, and the driver forwards its IMGFLOW_* variables (the decode pool's crash hook).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A running 2-CPU local Ray (dashboard off); yields its address for other drivers to join."""
    os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    import ray

    from imgflow.executors.ray_cluster import quiet_ray_data

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             object_store_memory=256 * 1024 * 1024)
    quiet_ray_data()
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
