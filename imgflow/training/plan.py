"""Which files a training run trains and validates on, and in which order each epoch."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgflow.errors import ConfigError
from imgflow.seeds import derive_seed

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.config import Pipeline
    from imgflow.io.source import SourceFile
    from imgflow.stage import Stage


@dataclass
class TrainingPlan:
    """The labelled input files of a training run, split once."""

    train: list[SourceFile]
    val: list[SourceFile]
    left_out: int
    refused: list[SourceFile]  # matched, but never opened (links outside, FIFOs: io/links.py)

    def order(self, seed: int, epoch: int) -> list[SourceFile]:
        """The training files shuffled for ``epoch``: fixed by seed and epoch, nothing else."""
        files = list(self.train)
        random.Random(derive_seed(seed, "epoch-order", epoch)).shuffle(files)
        return files


def plan_training(pipeline: Pipeline, trainer: Stage) -> TrainingPlan:
    """Walk the input once and ask the trainer which split each file belongs to."""
    from imgflow.engine.plan import walk_pipeline_inputs

    train: list[SourceFile] = []
    val: list[SourceFile] = []
    left_out = 0
    refused: list[SourceFile] = []
    for sf in walk_pipeline_inputs(pipeline):
        if sf.refusal is not None:
            refused.append(sf)
            continue
        split = trainer.split_of(sf.relpath)
        if split == "train":
            train.append(sf)
        elif split == "val":
            val.append(sf)
        elif split is None:
            left_out += 1
        else:
            raise ConfigError(f"stage '{trainer.id}' put {sf.relpath} in split {split!r} "
                              "(a stage bug: split_of must return 'train', 'val' or None)")
    if not train:
        raise ConfigError(f"{pipeline.input_path}: no training images found for stage '{trainer.id}' "
                          f"({len(val)} validation, {left_out} unlabelled) (fix: check [input] path "
                          "and include, and the folder layout the stage expects)")
    val.sort(key=lambda sf: sf.relpath)
    return TrainingPlan(train=train, val=val, left_out=left_out, refused=refused)
