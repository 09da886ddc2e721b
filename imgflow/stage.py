"""The Stage contract every plugin stage implements (DESIGN.md §4).

A stage is a class. The engine instantiates it once per run with validated parameters, calls
``setup(device)`` once, ``process(batch)`` for each batch, and ``teardown()`` at the end.
``__init__`` must stay cheap and side-effect free (no file I/O, no weights, no GPU) so that
``imgflow validate`` can check any pipeline on any machine.

This module imports no torch: plugins are loaded for ``imgflow --help`` and ``validate``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ConfigDict

from imgflow.scalars import ScalarRules
from imgflow.seeds import derive_seed

__all__ = ["DecodeHint", "Params", "Stage", "StageContext", "StageKind", "derive_seed"]

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Artifact, Batch, Targets
    from imgflow.errors import Notice


@dataclass(frozen=True)
class DecodeHint:
    """The smallest image the first stage needs, so the decoder may decode JPEGs smaller.

    JPEG can be decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (Pillow's ``draft``) for a
    fraction of the cost of a full decode. The decoder picks the largest reduction that still
    leaves the image at least this big: ``edge="longer"``/``"shorter"`` with an int ``size``
    (that edge must stay >= size), or ``edge="exact"`` with ``size=(height, width)``.
    """

    edge: str
    size: int | tuple[int, int]


class StageKind(str, enum.Enum):
    """What family a stage belongs to; ``imgflow stages list --kind`` filters on it."""

    AUGMENT = "augment"
    DETECT = "detect"
    SEGMENT = "segment"
    STYLIZE = "stylize"
    COLORIZE = "colorize"
    TRAIN = "train"
    OTHER = "other"


class Params(ScalarRules):
    """Base for a stage's parameters: typed, documented, unknown keys rejected.

    Declare fields with ``pydantic.Field(default, description=...)``; the description is what
    ``imgflow stages show`` prints. Inherited rules (:mod:`imgflow.scalars`): floats must be
    finite, integers fit 64 bits, and ``true``/``false`` are refused where a number is expected.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


@dataclass(frozen=True)
class StageContext:
    """What a stage may know about the run it is part of, given at construction.

    ``pipeline_dir`` resolves parameters that are paths (relative to the pipeline file);
    ``output_root`` is where consuming stages write their artefacts; ``input_root`` is the
    input folder (trainers read class names from its layout).
    """

    stage_id: str
    seed: int = 0
    pipeline_dir: Path = field(default_factory=Path.cwd)
    output_root: Path | None = None
    input_root: Path | None = None

    def resolve(self, path: str | Path) -> Path:
        """A path parameter made absolute against the pipeline file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.pipeline_dir / p)


class Stage:
    """Base class of every stage.

    Class attributes a stage sets:
      name         lowercase unique name used in ``[[stages]] use = "..."``
      kind         a :class:`StageKind`
      description  one line for ``imgflow stages list``
      reads/writes batch keys (``image``, ``alpha``, or a results key) the stage uses/produces
      device       "any" (runs on the pipeline's device) or "cpu" (always on the CPU)
      batch_size   preferred batch size, or None to follow ``[run] batch_size``
      consumes     True for trainers: they take the whole stream, epoch after epoch, and
                   ``finalize()`` at the end (the training protocol below)
      fans_out     True when one input may become several items (augment copies)
      train_only   True for random augmenters: applied to training batches, never to
                   validation batches of a training run (augmentation is for training only)
      needs_grad   True when ``process()`` itself optimises (style by optimisation): the engine
                   then runs it with autograd on instead of under ``torch.inference_mode()``
      fingerprint_code  True while developing a plugin: the source files of the stage's package
                   join the pipeline fingerprint, so editing the code re-runs finished items
                   (by default only the plugin's version does; see :meth:`fingerprint`)
      works_on_uint8  True when ``process()`` handles items that hold 8-bit pixels
                   (``item.uint8``, see :class:`imgflow.batch.Item`) without reading
                   ``item.image``: no float32 copy is made for it (flips, crops, resize)
      working_copies  extra images the size of its output the stage holds at its peak, for the
                   run's memory budget (default 2; see :meth:`output_shape`)
      Params       the parameter model (a :class:`Params` subclass)
    """

    name: ClassVar[str] = ""
    kind: ClassVar[StageKind] = StageKind.OTHER
    description: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...]] = ("image",)
    writes: ClassVar[tuple[str, ...]] = ("image",)
    device: ClassVar[str] = "any"
    batch_size: ClassVar[int | None] = None
    consumes: ClassVar[bool] = False
    fans_out: ClassVar[bool] = False
    train_only: ClassVar[bool] = False
    needs_grad: ClassVar[bool] = False
    fingerprint_code: ClassVar[bool] = False
    works_on_uint8: ClassVar[bool] = False
    working_copies: ClassVar[float] = 2.0
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params, context: StageContext) -> None:
        self.params = params
        self.context = context

    @property
    def id(self) -> str:
        return self.context.stage_id

    def setup(self, device: torch.device) -> None:
        """Load weights and move them to ``device``. Called once, before the first batch."""
        self.torch_device = device

    def process(self, batch: Batch) -> Batch:
        """Transform a batch and return it. Keys this stage does not write pass through."""
        raise NotImplementedError(f"stage {self.name!r} does not implement process()")

    # -- the training protocol (consuming stages, ``consumes = True``) ------------------------
    #
    # The engine (imgflow.training) owns the loop, so every trainer resumes the same way:
    #   resume: if ``<output>/checkpoints/<stage id>.pt`` exists for this configuration, the
    #           engine calls ``load_state_dict`` with what ``state_dict`` returned, restores the
    #           torch RNG states and skips what that checkpoint had already consumed;
    #   for epoch in range(first, epochs()):
    #       start_epoch(epoch)
    #       item.targets = targets_of(relpath, height, width) for every decoded item
    #       consume(batch) for every training batch (shuffled from seed and epoch; items carry
    #                      ``item.epoch`` so upstream augmenters draw fresh, reproducible values),
    #                      then for every validation batch (``batch.split == "val"``, in name order,
    #                      ``train_only`` stages not applied)
    #       end_epoch(epoch) -> epoch metrics; then a checkpoint is written
    #   finalize() -> final artefacts (e.g. model.pt)
    # Training batches never mix with validation batches. ``consume`` runs with autograd on.

    def epochs(self) -> int:
        """How many passes over the input this trainer wants (the engine re-reads the source)."""
        return 1

    def split_of(self, relpath: str) -> str | None:
        """``"train"``, ``"val"``, or None to leave the file out; asked once per input file."""
        return "train"

    def targets_of(self, relpath: str, height: int, width: int) -> Targets | None:
        """The training labels (boxes, mask) of one decoded input, or None (a classifier's labels
        need no moving). Asked for every item of every epoch, train and validation, before the
        upstream stages run, so geometric augmenters move them with the pixels. ``height`` and
        ``width`` are the decoded image's. Raise :class:`imgflow.ItemError` for a label file that
        cannot be read: that input then fails alone."""
        return None

    def start_epoch(self, epoch: int) -> None:
        """Called before the first batch of each epoch (epochs count from 0)."""

    def consume(self, batch: Batch) -> dict[str, float] | None:
        """Consuming stages receive every batch here instead of ``process``.

        For a training batch return that step's metrics (e.g. ``{"loss": 0.7}``): the engine logs
        them as a step record in the manifest and ``steps.csv``. Validation batches return None.
        """
        raise NotImplementedError(f"stage {self.name!r} does not consume batches")

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Epoch metrics (loss, train_acc, val_acc, ...); the engine adds images/s and seconds."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (model, optimiser, scheduler, counters).

        Saved with ``torch.save`` and read back with ``weights_only=True``: tensors, numbers,
        strings, and lists/dicts of those only (optimizer/scheduler ``state_dict()`` qualify).
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; called after ``setup()``."""

    def finalize(self) -> list[Artifact]:
        """Consuming stages return the artefacts (checkpoints, metrics) to write at the end."""
        return []

    def export(self, records: Iterator[dict[str, Any]]) -> list[Artifact]:
        """Run-level files built from every done item's manifest record (e.g. one COCO JSON).

        Called at the end of every run, also when every item was skipped, with the records of
        ALL items done so far in this output folder (streamed from the state store; each has
        ``input``, ``outputs``, ``meta`` and ``results``). Must not need ``setup()``: it works on
        the JSON results alone. Default: nothing.
        """
        return []

    def teardown(self) -> None:
        """Release memory (models, caches). Called once, even after errors."""

    def decode_hint(self) -> DecodeHint | None:
        """Only asked of the first stage: the smallest image it needs (None: full resolution).

        A stage that shrinks every image to a known size (a resize) returns one, and JPEGs are
        then decoded directly at a reduced scale. Pixels differ slightly from a full decode
        followed by the stage's own resampling; ``[run] decode_downscale = false`` turns it off.
        """
        return None

    def decoder_op(self) -> Any:
        """This stage's work done by the decode worker instead, on 8-bit pixels (None: not possible).

        For a deterministic geometric op that Pillow does on 8-bit pixels within one level of
        ``process()`` (a resize, a crop): a picklable object whose ``apply(pixels)`` takes and
        returns ``(H, W, C)`` uint8 numpy arrays (alpha as the 4th channel, straight), importing
        only numpy and Pillow. When every stage of a pipeline has one, the local executor runs
        them in the decode workers and the main process never imports torch for 8-bit inputs
        (:mod:`imgflow.io.decoder_ops`).
        """
        return None

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(height, width, count) of the images this stage returns for one input of that size.

        Only used to estimate an item's memory before it is decoded (the run's memory budget,
        :mod:`imgflow.memory`). The default, the same size once, is right for most stages; a
        stage that shrinks (resize, crops) or fans out (``augment``) says so, and its items then
        reserve less, or more.
        """
        return height, width, 1

    def fingerprint(self) -> dict[str, Any]:
        """Extra facts that change outputs beyond the parameters, e.g. weight file hashes.

        Part of the pipeline fingerprint: when it changes, finished items run again. Your own
        code is not part of it (a plugin's version is): while developing a plugin, set
        ``fingerprint_code = True`` on the class, or return e.g. ``{"code": code_hash(my_module)}``
        (:func:`imgflow.code_hash`) here, so editing the code re-runs what it made. Facts with
        ``"untrained": True`` (:func:`imgflow.models.random_fingerprint`) make the summary line
        say the stage ran on random weights.
        """
        return {}

    def preflight(self) -> list[Notice]:
        """What ``imgflow validate`` and the start of every run can check without loading anything.

        Return :class:`imgflow.preflight.Notice` s: an error for a file a parameter names that does
        not exist (the run stops with exit code 2 before any image), a warning for weights the run
        will download (say which ``imgflow models pull``/``import`` to run). Called after
        ``__init__``, before ``setup``; must stay cheap (no weights, no torch). Default: nothing.
        """
        return []
