"""A small real trainer for the engine's training-loop tests (in-process and in subprocesses).

``tiny_classifier`` learns a 2-class problem with a real torch model (conv, dropout, linear) and
SGD with a step schedule, labels from :class:`imgflow.training.labels.LabelledFolder`. It also keeps a log
of what it saw (source, split, epoch, mean pixel value) so tests can check order, splits and
per-epoch augmentation. Everything it keeps goes through ``state_dict`` so resume is exact.

Run as a script, it is the ``imgflow`` CLI with this plugin registered (for SIGKILL tests).
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any

from pydantic import Field

from imgflow import Artifact, Batch, Params, Stage, StageKind, hookimpl


class TinyClassifier(Stage):
    name = "tiny_classifier"
    kind = StageKind.TRAIN
    description = "a tiny 2-class CNN trainer (test stage)"
    consumes = True

    class Params(Params):
        epochs: int = Field(3, ge=1, description="passes over the input")
        lr: float = Field(0.5, gt=0, description="SGD learning rate")
        val_fraction: float = Field(0.0, ge=0, lt=1, description="validation fraction")
        slow_ms: int = Field(0, ge=0, description="sleep per batch (kill tests)")

    def _labels(self) -> Any:
        from imgflow.training.labels import LabelledFolder

        if getattr(self, "_labelled", None) is None:
            self._labelled = LabelledFolder.scan(self.context.input_root, val_fraction=self.params.val_fraction,
                                                 seed=self.context.seed, skip=[self.context.output_root])
        return self._labelled

    def epochs(self) -> int:
        return self.params.epochs

    def split_of(self, relpath: str) -> str | None:
        return self._labels().split_of(relpath)

    def setup(self, device: Any) -> None:
        import torch
        from torch import nn

        super().setup(device)
        self.model = nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                   nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * 64, 2)).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.params.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.7)
        self.log: list[list[Any]] = []
        self.counters = {"loss": 0.0, "n": 0, "correct": 0, "val_n": 0, "val_correct": 0}

    def start_epoch(self, epoch: int) -> None:
        self.model.train()
        self.counters = {"loss": 0.0, "n": 0, "correct": 0, "val_n": 0, "val_correct": 0}

    def _xy(self, batch: Batch) -> tuple[Any, Any]:
        import torch
        import torch.nn.functional as F

        x = torch.stack([F.interpolate(i.image[None], size=(16, 16), mode="bilinear", align_corners=False)[0]
                         for i in batch.items])
        y = torch.tensor([self._labels().label_of(i.source) for i in batch.items])
        return x, y

    def consume(self, batch: Batch) -> dict[str, float] | None:
        import time

        import torch.nn.functional as F

        if self.params.slow_ms:
            time.sleep(self.params.slow_ms / 1000)
        for item in batch.items:
            self.log.append([item.source, batch.split, item.epoch, round(float(item.image.mean()), 5)])
        x, y = self._xy(batch)
        if batch.split == "val":
            self.model.eval()
            pred = self.model(x).argmax(1)
            self.counters["val_n"] += len(y)
            self.counters["val_correct"] += int((pred == y).sum())
            self.model.train()
            return None
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.counters["loss"] += float(loss.detach()) * len(y)
        self.counters["n"] += len(y)
        self.counters["correct"] += int((logits.argmax(1) == y).sum())
        return {"loss": float(loss.detach())}

    def end_epoch(self, epoch: int) -> dict[str, float]:
        self.scheduler.step()
        c = self.counters
        out = {"loss": c["loss"] / max(1, c["n"]), "train_acc": c["correct"] / max(1, c["n"])}
        if c["val_n"]:
            out["val_acc"] = c["val_correct"] / c["val_n"]
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "log": json.dumps(self.log),
                "counters": dict(self.counters)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.log = json.loads(state["log"])
        self.counters = dict(state["counters"])

    def finalize(self) -> list[Artifact]:
        import torch

        buffer = io.BytesIO()
        torch.save(self.model.state_dict(), buffer)
        return [Artifact("model.pt", data=buffer.getvalue()),
                Artifact("seen.json", data=json.dumps(self.log).encode())]


class TrainingTestPlugin:
    @hookimpl
    def register_stages(self, register: Any) -> None:
        register(TinyClassifier)


def main() -> None:
    """``python training_stages.py run PIPELINE``: the CLI with this plugin registered."""
    from imgflow import plugins
    from imgflow.cli import main as cli_main

    plugins.register_plugin(TrainingTestPlugin(), name="imgflow-training-tests")
    sys.argv = ["imgflow", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
