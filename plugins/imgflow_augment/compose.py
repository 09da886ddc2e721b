"""``augment``: N random copies of each input, each made by running the other augmenters in turn.

Each entry of ``ops`` names one of the single-op stages of :mod:`.stages` and its parameters,
plus a gate ``p``; the entry is validated as that stage's own parameters would be, so a typo
reads the same here as in a stage of its own. The copies reuse the stages' ``draw``/``apply``
halves, so a composed flip is the same flip, drawn from the copy's own generator.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, field_validator

from imgflow import Params, Stage, StageContext
from imgflow_augment.stages import (
    Augmenter,
    CenterCrop,
    ColorJitter,
    FlipHorizontal,
    FlipVertical,
    RandomResizedCrop,
    Resize,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Batch


#: The stages ``augment`` can compose, by name.
OPS: dict[str, type[Augmenter]] = {
    cls.name: cls
    for cls in (FlipHorizontal, FlipVertical, RandomResizedCrop, ColorJitter, Resize, CenterCrop)
}


@dataclass(frozen=True)
class OpSpec:
    """One validated entry of ``augment.ops``: the stage class, its params and its gate ``p``."""

    cls: type[Augmenter]
    params: Params
    p: float


def _gate_default(cls: type[Augmenter]) -> float:
    """An op's default ``p``: a stage with its own ``p`` (flips) keeps that default, others 1.0."""
    field = cls.Params.model_fields.get("p")
    return float(field.default) if field is not None else 1.0


def parse_op(index: int, raw: Any) -> OpSpec:
    """Validate ``ops[index]``; raises ValueError with every problem of that entry.

    ``p`` is the probability that the op runs at all. For a stage whose own parameters have a
    ``p`` (the flips), that gate *is* its probability: the op runs with its own p = 1, so
    ``{op = "flip_horizontal", p = 0.5}`` flips half the copies, not a quarter.
    """
    where = f"ops[{index}]"
    if not isinstance(raw, dict):
        raise ValueError(f'{where}: expected a table, got {raw!r} (fix: write each op as a table, e.g. '
                         '{op = "flip_horizontal", p = 0.5})')
    name = raw.get("op")
    if not isinstance(name, str) or name not in OPS:
        raise ValueError(f"{where}: {_unknown_op(name)}")
    cls = OPS[name]
    p = raw.get("p", _gate_default(cls))
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"{where}.p ({name}): expected a probability in [0, 1], got {p!r} "
                         "(fix: e.g. p = 0.5 runs the op on half the copies)")
    rest = {k: v for k, v in raw.items() if k not in ("op", "p")}
    if "p" in cls.Params.model_fields:
        rest["p"] = 1.0
    try:
        params = cls.Params(**rest)
    except ValidationError as exc:
        raise ValueError("; ".join(_describe(where, name, err) for err in exc.errors())) from None
    return OpSpec(cls, params, float(p))


def _unknown_op(name: Any) -> str:
    """The message for a missing or unknown op name, suggesting the closest known one."""
    known = ", ".join(OPS)
    if name is None:
        return f"missing 'op' (fix: set op to one of {known})"
    close = difflib.get_close_matches(str(name), list(OPS), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown op {name!r}{hint} (fix: choose one of {known})"


def _describe(where: str, name: str, err: Any) -> str:
    """One nested pydantic error as ``ops[i].key (op): message``, with a fix for unknown keys."""
    key = ".".join(str(part) for part in err["loc"])
    head = f"{where}.{key} ({name})"
    if err["type"] == "value_error":  # our own validators already say what they got
        return f"{head}: {err['ctx']['error']}"
    if err["type"] == "missing":
        return f"{head}: required (fix: set {key})"
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(["p", *(k for k in OPS[name].Params.model_fields if k != "p")])
        return f"{head}: unknown parameter (fix: {name} takes {allowed})"
    return f"{head}: {err['msg']}, got {err['input']!r} (fix: see `imgflow stages show {name}`)"


class AugmentParams(Params):
    copies: int = Field(1, ge=1, description="Random copies per input image, named name_aug0, name_aug1, ...")
    ops: list[dict[str, Any]] = Field(
        ...,
        min_length=1,
        description=(
            'Ops applied in order to each copy, e.g. [{op = "flip_horizontal", p = 0.5}, '
            '{op = "random_resized_crop", size = 200}]. Other keys are that stage\'s parameters; '
            "p is the chance the op runs at all (default 1.0; a flip's default is its own 0.5)."
        ),
    )

    @field_validator("ops")
    @classmethod
    def _ops_valid(cls, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from imgflow.display import capped

        problems = []
        for i, raw in enumerate(ops):
            try:
                parse_op(i, raw)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:  # a long list of bad ops reads as its first few and a count
            raise ValueError("; ".join(capped(problems, more="more problems in ops")))
        return ops


@dataclass
class _BoundOp:
    stage: Augmenter
    p: float


class Augment(Augmenter):
    name = "augment"
    train_only = True  # random: in training runs, never applied to validation batches
    description = "Make N randomly augmented copies of each image by composing the other augmenters."
    reads = ("image", "alpha")
    writes = ("image", "alpha")
    fans_out = True
    Params = AugmentParams

    def __init__(self, params: Params, context: StageContext) -> None:
        super().__init__(params, context)
        self._ops = []
        for i, raw in enumerate(self.params.ops):
            spec = parse_op(i, raw)
            sub_context = dataclasses.replace(
                context, stage_id=f"{context.stage_id}.ops[{i}].{spec.cls.name}"
            )
            self._ops.append(_BoundOp(spec.cls(spec.params, sub_context), spec.p))

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        for op in self._ops:
            op.stage.setup(device)

    @property
    def working_copies(self) -> float:  # type: ignore[override]
        return 1.0 + max(op.stage.working_copies for op in self._ops)

    @property
    def works_on_uint8(self) -> bool:  # type: ignore[override]
        return all(op.stage.works_on_uint8 for op in self._ops)

    def uint8_on(self, device: torch.device) -> bool:
        return all(op.stage.uint8_on(device) for op in self._ops)

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``copies`` images per input, each as large as the ops can leave it.

        An op that always runs (``p = 1``) sets the size; one that may be skipped leaves the
        larger of its input and output size possible.
        """
        for op in self._ops:
            out_height, out_width, _ = op.stage.output_shape(height, width)
            if op.p >= 1.0:
                height, width = out_height, out_width
            else:
                height, width = max(height, out_height), max(width, out_width)
        return height, width, self.params.copies

    def process(self, batch: Batch) -> Batch:
        """Fan each item out into ``copies`` derived items and run the ops on them in order.

        Each copy's key differs (``_aug{k}``), so each has its own generator; it is consumed in
        op order: the gate draw, then the op's own parameters (drawn against the copy's current
        size, since an earlier crop may have changed it).
        """
        from imgflow_augment import ops

        copies = [
            item.derive(None, f"_aug{k}", uint8=item.uint8)
            if item.uint8 is not None and self.uint8_on(item.uint8.device)
            else item.derive(item.image, f"_aug{k}", item.alpha)
            for item in batch
            for k in range(self.params.copies)
        ]
        gens = [copy.generator(self.id) for copy in copies]
        for op in self._ops:
            chosen = [i for i, gen in enumerate(gens) if ops.draw_chance(gen, op.p)]
            if not chosen:
                continue
            targets = [copies[i] for i in chosen]
            if op.stage.random:
                params = [op.stage.draw(gens[i], *copies[i].size) for i in chosen]
            else:
                params = [None] * len(chosen)
            op.stage.apply(targets, params)
        return batch.with_items(copies)


#: Every stage this plugin registers.
ALL: tuple[type[Stage], ...] = (*OPS.values(), Augment)
