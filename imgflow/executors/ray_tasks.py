"""What runs inside Ray workers: decode actors and stage actors (callable classes for map_batches).

Rows flow through Ray Data as Arrow tables with plain columns:

  dispatched  index (the driver's handle), path (absolute, as bytes), relpath
  decoded     index, relpath, info (pickled :class:`DecodeInfo`), pixels (raw bytes; empty on failure)
  outcome     index, outcome (pickled :class:`Outcome`)

Pixels travel as raw bytes with their shape and dtype beside them, so a batch may mix 8- and
16-bit images of any size, and the stage actor reads them without a copy (``np.frombuffer`` on
the Arrow buffer; the chain's ``to_item`` only reads them).

Neither actor raises for one item: a decoder that crashes is the decode pool's business
(``decoder_crash``, one file), a stage that raises is the chain's (``stage_error``, one input),
and a write that fails is that input's ``write_error``. A worker process that dies outright fails
its block; the driver notices the missing indexes and retries them one at a time
(:mod:`imgflow.executors.ray`).

This module imports neither Ray nor torch at import time.
"""

from __future__ import annotations

import os
import pickle
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imgflow.errors import ImgflowError, ItemError

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.config import Pipeline
    from imgflow.engine.writer import StagedOutput
    from imgflow.io.decode import DecodeLimits


@dataclass
class DecodeInfo:
    """A decode's outcome without its pixels: meta, hash and layout, or the error."""

    seconds: float
    error: ItemError | None = None
    meta: Any = None  # imgflow.batch.ImageMeta
    content_hash: str | None = None
    shape: tuple[int, ...] = ()
    dtype: str = "|u1"


@dataclass
class Outcome:
    """What became of one input in the workers; the driver commits and records it."""

    error: ItemError | None
    timings: dict[str, float]
    staged: list[StagedOutput] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    content_hash: str | None = None
    fatal: tuple[str, int] | None = None  # (message, exit code): the stage actor could not set up


def apply_env(env: dict[str, str]) -> None:
    """The driver's forwarded variables (IMGFLOW_*, TORCH_HOME) in this worker's environment.

    A worker of a cluster that was started before the run does not inherit the driver's
    environment; decode pools copy their test hook from here into their processes.
    """
    os.environ.update(env)


class DecodeActor:
    """Decodes with imgflow's own decoder in a :class:`~imgflow.io.decodepool.DecodePool`.

    The pool's worker processes are this actor's children: a file that crashes or hangs its
    decoder costs that file (``decoder_crash`` / ``decoder_timeout``), exactly as locally.
    """

    def __init__(self, limits: DecodeLimits, timeout_s: float, workers: int, env: dict[str, str]) -> None:
        from imgflow.io.decodepool import DecodePool

        apply_env(env)
        self.pool = DecodePool(workers=workers, limits=limits, timeout_s=timeout_s)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        tasks = [(int(index), os.fsdecode(bytes(path))) for index, path in zip(batch["index"], batch["path"])]
        decoded = {key: (outcome, seconds) for key, outcome, seconds in self.pool.imap_unordered(tasks)}
        infos, pixels = [], []
        for index, _path in tasks:
            outcome, seconds = decoded[index]
            if isinstance(outcome, ItemError):
                infos.append(pickle.dumps(DecodeInfo(seconds, error=outcome)))
                pixels.append(b"")
            else:
                array = outcome.pixels
                infos.append(pickle.dumps(DecodeInfo(seconds, meta=outcome.meta, content_hash=outcome.content_hash,
                                                     shape=tuple(array.shape), dtype=array.dtype.str)))
                pixels.append(array.tobytes())
        return {"index": batch["index"], "relpath": batch["relpath"], "info": _objects(infos),
                "pixels": _objects(pixels)}

    def __del__(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()


class StageActor:
    """The pipeline's stages set up once (weights load once per actor), then batch after batch.

    Each input's outputs are staged (encoded, fsynced temp files beside their final names) here,
    in ``[run] workers`` threads; the driver claims the names and renames them into place.
    """

    def __init__(self, pipeline: Pipeline, env: dict[str, str]) -> None:
        from imgflow.engine.chain import StageChain
        from imgflow.engine.writer import OutputClaims, OutputWriter

        apply_env(env)
        self.seed = pipeline.run.seed
        self.chain = StageChain(pipeline.build_stages(), device=pipeline.run.device, seed=pipeline.run.seed)
        self.fatal: tuple[str, int] | None = None
        try:
            self.chain.setup()
        except ImgflowError as exc:
            # A stage that cannot set up (weights, device) stops the run with exit 2, as locally.
            # Raised here, Ray would keep only its text; handed back, the driver raises it.
            self.fatal = (str(exc), exc.exit_code)
        self.writer = OutputWriter(pipeline.output_path, pipeline.output, OutputClaims(lambda rel: None))
        # Encoding threads, as the local executor's writer threads: [run] workers of them.
        self.encoders = ThreadPoolExecutor(max_workers=pipeline.run.workers, thread_name_prefix="imgflow-encode")

    def __call__(self, table: Any) -> dict[str, Any]:
        from imgflow.engine.chain import ChainInput

        indexes = table.column("index").to_pylist()
        if self.fatal is not None:
            fatal = pickle.dumps(Outcome(None, {}, fatal=self.fatal))
            return {"index": indexes, "outcome": _objects([fatal] * len(indexes))}
        relpaths = table.column("relpath").to_pylist()
        infos = [pickle.loads(blob) for blob in table.column("info").to_pylist()]
        pixels = _buffers(table.column("pixels"))
        outcomes: dict[int, Outcome] = {}
        inputs: list[ChainInput] = []
        for index, relpath, info, buffer in zip(indexes, relpaths, infos, pixels):
            timings = {"decode_s": round(info.seconds, 4)}
            if info.error is not None:
                outcomes[index] = Outcome(info.error, timings)
            else:
                inputs.append(ChainInput((index, info, timings), relpath, _decoded(info, buffer)))
        if inputs:
            results = self.chain.run(inputs)
            staged = self.encoders.map(self._stage, results)  # Pillow encodes without the GIL
            for result, outcome in zip(results, staged):
                outcomes[result.input.key[0]] = outcome
        return {"index": indexes, "outcome": _objects([pickle.dumps(outcomes[i]) for i in indexes])}

    def _stage(self, result: Any) -> Outcome:
        """Encode and stage one input's outputs; any failure is that input's."""
        from imgflow.executors.local import merge_results

        _index, info, timings = result.input.key
        timings = {**timings, "stages_s": round(result.stages_s, 4)}
        if result.error is not None:
            return Outcome(result.error, timings)
        started = time.perf_counter()
        try:
            staged = self.writer.stage(result.input.relpath, info.meta, result.items)
        except ItemError as exc:
            return Outcome(exc, timings)
        except Exception as exc:  # noqa: BLE001 - an encoder bug fails this input, not the batch
            return Outcome(ItemError("write_error", f"{type(exc).__name__}: {exc}"), timings)
        timings["write_s"] = round(time.perf_counter() - started, 4)
        return Outcome(None, timings, staged=staged, results=merge_results(result.items),
                       meta=info.meta.to_dict(), content_hash=info.content_hash)

    def __del__(self) -> None:
        chain = getattr(self, "chain", None)
        if chain is not None:
            chain.teardown()
        encoders = getattr(self, "encoders", None)
        if encoders is not None:
            encoders.shutdown(wait=False)


def _objects(values: list[Any]) -> Any:
    """A 1-D object array (numpy would otherwise try to stack equal-length bytes)."""
    import numpy as np

    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _buffers(column: Any) -> list[Any]:
    """Each value of an Arrow binary column as a buffer, without copying the bytes."""
    out = []
    for chunk in column.chunks:
        out.extend(value.as_buffer() if value.is_valid else None for value in chunk)
    return out


def _decoded(info: DecodeInfo, buffer: Any) -> Any:
    """Pixels from the Arrow buffer (read-only, no copy) with the decode's meta and hash."""
    import numpy as np

    from imgflow.io.decode import Decoded

    pixels = np.frombuffer(buffer, dtype=np.dtype(info.dtype)).reshape(info.shape)
    return Decoded(pixels=pixels, meta=info.meta, content_hash=info.content_hash)
