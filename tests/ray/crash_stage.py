"""A test stage that kills its own worker process (SIGSEGV) on chosen inputs.

A stage that *raises* is isolated by the chain; this one stands for what the chain cannot catch:
a native extension that segfaults, or the OOM killer. Registered in-process by the tests and
imported by reference in Ray's workers (the session cluster has the repository on PYTHONPATH).
"""

from __future__ import annotations

import os
import signal
import time

from pydantic import Field

from imgflow import Batch, Params, Stage, hookimpl


class SegvOn(Stage):
    name = "segv_on"
    description = "kills its process with SIGSEGV for inputs whose path contains a marker (test stage)"

    class Params(Params):
        marker: str = Field("segv", description="substring of the input path that kills the worker")

    def process(self, batch: Batch) -> Batch:
        for item in batch.items:
            if self.params.marker in item.source:
                os.kill(os.getpid(), signal.SIGSEGV)
                time.sleep(5)
        return batch


class CrashPlugin:
    @hookimpl
    def register_stages(self, register):
        register(SegvOn)
