"""Batches through the stage chain, or through one chain per GPU when a run has several.

``[run] device = "cuda"`` (or ``"auto"`` with CUDA present) uses every visible GPU, and a list
(``["cuda:0", "cuda:1"]``) the GPUs it names. The run's own chain takes the first device; one
more chain, with its own stage instances and weights, is set up on each other device. Each chain
then runs in a thread of its own (torch releases the GIL while the GPU works), taking batches
from one shared queue as it becomes free, so a slower GPU simply takes fewer batches. Results go
back to the executor's main thread, the only one that records items. With one device (one GPU,
or the CPU) there is no thread: the batch runs at once in the caller's thread, as before.

Outputs do not depend on which GPU ran an item: every chain is set up from the same pipeline and
seed, and randomness is drawn per item (:meth:`imgflow.batch.Item.generator`).

Before a chain sees a batch, the run's :class:`~imgflow.executors.decode_route.DecodeRoute`
decodes its JPEGs left for the GPU on that chain's device. When a chain halves its batches after
running out of GPU memory (:mod:`imgflow.engine.oom`), the run says so once per device.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.engine.chain import ChainInput, ChainResult, StageChain
    from imgflow.executors.base import Job
    from imgflow.executors.decode_route import DecodeRoute

_STOP = object()
_POLL_S = 0.05


def extra_devices(spec: str | list[str], first: Any) -> list[str]:
    """The devices beyond the run's own chain's (``first``, already resolved) that ``spec`` asks for."""
    if isinstance(spec, list):
        return list(spec[1:])
    if spec in ("auto", "cuda") and first.type == "cuda":
        import torch

        return [f"cuda:{index}" for index in range(1, torch.cuda.device_count())]
    return []


class ChainRunner:
    """Runs batches on the run's chains; see the module docstring. Use as a context manager."""

    def __init__(self, chains: Sequence[StageChain], route: DecodeRoute | None = None,
                 echo: Callable[[str], None] | None = None, owned: Sequence[StageChain] = ()) -> None:
        self.chains = list(chains)
        self.route = route
        self.echo = echo or (lambda message: None)
        self._owned = list(owned)  # set up here, so torn down here
        self._done: queue.Queue = queue.Queue()
        self._todo: queue.Queue = queue.Queue(maxsize=len(self.chains))
        self._in_flight = 0
        self._said: set[str] = set()
        self._threads = [threading.Thread(target=self._serve, args=(chain,), name=f"imgflow-chain-{index}",
                                          daemon=True)
                         for index, chain in enumerate(self.chains)] if len(self.chains) > 1 else []
        for thread in self._threads:
            thread.start()

    @classmethod
    def start(cls, job: Job, route: DecodeRoute | None = None) -> ChainRunner:
        """The job's chain (set up) plus one chain per further device; ``route`` checked or chosen."""
        from imgflow.engine.chain import StageChain

        run = job.pipeline.run
        job.chain.setup()
        owned: list[StageChain] = []
        try:
            for device in extra_devices(run.device, job.chain.device):
                chain = StageChain(job.pipeline.build_stages(), device=device, seed=run.seed)
                owned.append(chain)
                chain.setup()
            if route is not None:
                route.settle(job.chain.device, run.workers, job.chain.batch_size(run.batch_size), job.echo)
        except BaseException:
            for chain in owned:
                chain.teardown()
            raise
        if owned:
            names = ", ".join(str(c.device) for c in [job.chain, *owned])
            job.echo(f"imgflow: {len(owned) + 1} stage chains, one per GPU: {names}")
        return cls([job.chain, *owned], route, job.echo, owned)

    def __enter__(self) -> ChainRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the executor's side (its main thread)

    def submit(self, inputs: list[ChainInput]) -> list[list[ChainResult]]:
        """Hand a batch to the next free chain; returns the results finished so far (with one
        chain: this batch's, at once)."""
        if not self._threads:
            results = self._run(self.chains[0], inputs)
            self._say_halvings()
            return [results]
        finished: list[list[ChainResult]] = []
        while True:
            try:
                self._todo.put(inputs, timeout=_POLL_S)
                break
            except queue.Full:
                finished.extend(self.poll())
        self._in_flight += 1
        return finished + self.poll()

    def poll(self) -> list[list[ChainResult]]:
        """The results of batches finished since the last call (never waits)."""
        return self._collect(wait_all=False)

    def finish(self) -> list[list[ChainResult]]:
        """Wait for every batch handed out; their results."""
        return self._collect(wait_all=True)

    def _collect(self, wait_all: bool) -> list[list[ChainResult]]:
        """Finished batches' results; what a chain's thread raised is raised here."""
        finished = []
        while self._in_flight:
            try:
                outcome = self._done.get(timeout=_POLL_S) if wait_all else self._done.get_nowait()
            except queue.Empty:
                if wait_all:
                    continue
                break
            self._in_flight -= 1
            if isinstance(outcome, BaseException):
                raise outcome
            finished.append(outcome)
        self._say_halvings()
        return finished

    def close(self) -> None:
        """Stop the threads (a batch being run is finished first), tear down the chains set up
        here, and stop the route's CPU decode worker."""
        if self._threads:
            while True:  # batches not started are dropped: the run is ending
                try:
                    self._todo.get_nowait()
                except queue.Empty:
                    break
            for _ in self._threads:
                self._todo.put(_STOP)
            for thread in self._threads:
                thread.join()
            self._threads = []
        for chain in self._owned:
            chain.teardown()
        self._owned = []
        if self.route is not None:
            self.route.close()

    # -- the chains' side

    def _serve(self, chain: StageChain) -> None:
        """A chain's thread: batches from the shared queue until told to stop."""
        import torch

        if chain.device is not None and chain.device.type == "cuda":
            # So that "cuda" means this chain's GPU in its stages; the run's own chain may hold
            # plain "cuda" (no index: the default GPU, 0), which set_device does not take.
            torch.cuda.set_device(chain.device.index if chain.device.index is not None else 0)
        while (inputs := self._todo.get()) is not _STOP:
            try:
                self._done.put(self._run(chain, inputs))
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
                self._done.put(exc)

    def _run(self, chain: StageChain, inputs: list[ChainInput]) -> list[ChainResult]:
        """GPU-decode what waits for it, then the chain; one result per input."""
        failed: list[ChainResult] = []
        if self.route is not None:
            assert chain.device is not None
            inputs, failed = self.route.resolve(inputs, chain.device)
        return failed + (chain.run(inputs) if inputs else [])

    def _say_halvings(self) -> None:
        """Once per device: its batches were halved after running out of GPU memory."""
        for chain in self.chains:
            device = str(chain.device)
            if chain.max_inputs is not None and device not in self._said:
                self._said.add(device)
                self.echo(f"imgflow: warning: {device} ran out of memory on a batch; its batches now hold at "
                          f"most {chain.max_inputs} image(s) (fix: lower [run] batch_size to avoid the retries)")
