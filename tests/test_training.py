"""Training runs: epochs, order, splits, per-epoch randomness, metrics, checkpoints and resume.

The trainer is ``tiny_classifier`` from tests/training_stages.py: a real (small) torch model
trained with SGD on a generated two-class folder, so these tests exercise the engine's loop
and not a particular plugin.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from imgflow.cli import cli
from imgflow.errors import ConfigError
from imgflow.training.labels import LabelledFolder
from tests.helpers import write_pipeline
from tests.training_stages import TrainingTestPlugin

STAGES_SCRIPT = Path(__file__).with_name("training_stages.py")


@pytest.fixture
def trainer_plugin(imgflow_register):
    imgflow_register(TrainingTestPlugin(), name="imgflow-training-tests")


def write_two_classes(root: Path, per_class: int, *, split: str | None = "train", seed: int = 0,
                      size: int = 20) -> None:
    """Reddish images in class ``red``, bluish in ``blue``: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    base = root / split if split else root
    for name, channel in (("red", 0), ("blue", 2)):
        folder = base / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
            pixels[..., channel] = rng.integers(140, 256, (size, size), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}{i:03d}.png")


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    write_two_classes(root, 12, split="train", seed=1)
    write_two_classes(root, 4, split="val", seed=2)
    return root


def training_pipeline(tmp_path: Path, data: Path, out: str = "out", *, epochs: int = 3, upstream=(),
                      run: dict | None = None, **params) -> Path:
    stages = [*upstream, {"use": "tiny_classifier", "id": "fit", "epochs": epochs, **params}]
    return write_pipeline(tmp_path / f"{out}.toml", input=data, output=tmp_path / out, stages=stages,
                          run={"batch_size": 5, "seed": 3, **(run or {})})


def test_each_epoch_feeds_every_training_image_shuffled_then_validation(tmp_path, dataset, trainer_plugin):
    jitter = {"use": "color_jitter", "brightness": 0.5}
    pipe = training_pipeline(tmp_path, dataset, upstream=[jitter])
    code, output = invoke("run", pipe)
    assert code == 0, output
    seen = json.loads((tmp_path / "out" / "seen.json").read_text())
    train_orders = []
    for epoch in range(3):
        rows = [r for r in seen if r[2] == epoch]
        splits = [r[1] for r in rows]
        assert splits == ["train"] * 24 + ["val"] * 8, "training batches first, then validation"
        train = [r[0] for r in rows if r[1] == "train"]
        assert sorted(train) == sorted(f"train/{c}/{c}{i:03d}.png" for c in ("red", "blue") for i in range(12))
        assert [r[0] for r in rows if r[1] == "val"] == sorted(r[0] for r in rows if r[1] == "val")
        train_orders.append(train)
    assert len({tuple(o) for o in train_orders}) == 3, "a fresh shuffle every epoch"
    means: dict[str, set] = {}
    for source, split, _, mean in seen:
        means.setdefault((source, split), set()).add(mean)
    assert all(len(v) == 3 for (s, split), v in means.items() if split == "train"), \
        "the upstream augmenter draws new values every epoch"
    assert all(len(v) == 1 for (s, split), v in means.items() if split == "val"), \
        "train_only augmenters never touch validation images"
    # reproducible from the seed: training again from scratch sees exactly the same stream
    assert invoke("run", pipe, "--force")[0] == 0
    assert json.loads((tmp_path / "out" / "seen.json").read_text()) == seen


def test_metrics_files_manifest_records_and_learning(tmp_path, dataset, trainer_plugin):
    pipe = training_pipeline(tmp_path, dataset, epochs=4)
    code, output = invoke("run", pipe)
    assert code == 0, output
    out = tmp_path / "out"
    assert "epoch 4/4" in output and "val_acc" in output
    assert "trained 4 epoch(s): 96 training images at" in output
    lines = (out / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[:2] == ["epoch", "run_id"]
    assert {"loss", "train_acc", "val_acc", "images", "images_per_s", "seconds"} <= set(header)
    assert len(lines) == 1 + 4
    steps = (out / "steps.csv").read_text().splitlines()
    assert len(steps) == 1 + 4 * 5  # 24 images in batches of 5: 5 steps per epoch
    with Image.open(out / "metrics.png") as im:
        assert im.format == "PNG" and im.width >= 500
    recs = records(out)
    items = [r for r in recs if "input" in r]
    assert len(items) == 32 and all(r["status"] == "done" for r in items)
    assert Counter(r["results"]["split"] for r in items) == {"train": 24, "val": 8}
    epochs = [r for r in recs if r.get("record") == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3]
    assert all(r["images"] == 24 and r["images_per_s"] > 0 for r in epochs)
    assert len([r for r in recs if r.get("record") == "step"]) == 20
    assert epochs[-1]["train_acc"] >= 0.9 and epochs[-1]["val_acc"] >= 0.85, epochs[-1]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    code, status = invoke("status", out)
    assert code == 0 and "training fit: 4 epoch(s), 20 step(s) logged; last epoch: loss" in status
    report = json.loads(invoke("status", out, "--json")[1])
    assert report["training"][0]["last_epoch"]["epoch"] == 3


def test_finished_training_is_not_redone_and_force_retrains_identically(tmp_path, dataset, trainer_plugin):
    pipe = training_pipeline(tmp_path, dataset, epochs=2)
    assert invoke("run", pipe)[0] == 0
    model = tmp_path / "out" / "model.pt"
    first = torch.load(model, weights_only=True)
    stamp = model.stat().st_mtime_ns
    code, output = invoke("run", pipe)
    assert code == 0 and "already finished" in output and "32 skipped" in output
    assert model.stat().st_mtime_ns == stamp
    assert invoke("run", pipe, "--force")[0] == 0
    again = torch.load(model, weights_only=True)
    assert all(torch.equal(first[k], again[k]) for k in first)
    # on a terminal (here forced): a progress bar per epoch, with the step's metrics
    code, output = invoke("run", pipe, "--force", "--progress")
    assert code == 0 and "epoch 1/2: 100%" in output and "epoch 2/2: 100%" in output and "loss=" in output
    # a changed parameter is another training: it starts over instead of resuming
    code, output = invoke("run", pipe, "-p", "fit.lr=0.2")
    assert code == 0 and "starts over" in output and "epoch 2/2" in output


def test_unreadable_image_fails_alone_and_once(tmp_path, dataset, trainer_plugin):
    (dataset / "train" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    pipe = training_pipeline(tmp_path, dataset, epochs=2)
    code, output = invoke("run", pipe)
    assert code == 1, output
    assert "1 failed" in output
    failed = [r for r in records(tmp_path / "out") if r.get("status") == "failed"]
    assert [r["input"] for r in failed] == ["train/red/broken.png"]
    assert (tmp_path / "out" / "model.pt").exists()


def test_no_training_images_is_a_config_error(tmp_path, trainer_plugin):
    data = tmp_path / "data"
    write_two_classes(data, 3, split="val")
    (data / "train" / "red").mkdir(parents=True)
    (data / "train" / "blue").mkdir(parents=True)
    code, output = invoke("run", training_pipeline(tmp_path, data))
    assert code == 2 and "no training images found" in output


def _run_script(args: list[object], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(STAGES_SCRIPT.parent.parent)}
    return subprocess.Popen([sys.executable, str(STAGES_SCRIPT), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_killed_training_resumes_to_the_same_model_as_an_uninterrupted_run(tmp_path, dataset):
    params = {"epochs": 3, "val_fraction": 0.0, "slow_ms": 40}
    reference = training_pipeline(tmp_path, dataset, "reference", run={"checkpoint_every": 2}, **params)
    done = _run_script(["run", reference])
    assert done.wait(timeout=300) == 0, done.stderr.read()
    pipe = training_pipeline(tmp_path, dataset, "out", run={"checkpoint_every": 2}, **params)
    checkpoint = tmp_path / "out" / "checkpoints" / "fit.pt"
    kills = 0
    for wanted_steps in (3, 8):  # kill mid-epoch 1, then again mid-epoch 2
        proc = _run_script(["run", pipe])
        steps_csv = tmp_path / "out" / "steps.csv"
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            saved = torch.load(checkpoint, weights_only=True) if checkpoint.exists() else None
            if saved is not None and saved["cursor"]["step"] >= wanted_steps:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
        assert not steps_csv.exists() or steps_csv.read_text()
    assert kills == 2, "the kills must land mid-training for this test to mean anything"
    final = _run_script(["run", pipe])
    assert final.wait(timeout=300) == 0
    assert "resuming 'fit'" in final.stderr.read()
    got = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    want = torch.load(tmp_path / "reference" / "model.pt", weights_only=True)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), "resumed training must end bit-identical"
    assert (tmp_path / "out" / "seen.json").read_text() == (tmp_path / "reference" / "seen.json").read_text()

    def step_losses(out: str) -> list[tuple]:
        return [(r["epoch"], r["step"], r["loss"]) for r in records(tmp_path / out) if r.get("record") == "step"]

    assert step_losses("out") == step_losses("reference"), "steps logged once each, same values"


# -- labels


def test_labels_from_split_folders(dataset):
    labelled = LabelledFolder.scan(dataset)
    assert labelled.classes == ["blue", "red"] and labelled.layout == "split-folders"
    assert labelled.label_of("train/red/red001.png") == 1
    assert labelled.split_of("val/blue/blue000.png") == "val"
    assert labelled.split_of("train/blue/blue000.png") == "train"
    assert labelled.split_of("stray.png") is None


def test_an_output_folder_inside_the_input_is_neither_a_class_nor_an_input(tmp_path, trainer_plugin):
    data = tmp_path / "data"
    write_two_classes(data, 6, split=None)
    pipe = write_pipeline(tmp_path / "p.toml", input=data, output=data / "trained",
                          stages=[{"use": "tiny_classifier", "id": "fit", "epochs": 1, "val_fraction": 0.25}],
                          run={"batch_size": 4})
    for _ in range(2):  # the second run sees the first one's outputs inside the input folder
        code, output = invoke("run", pipe, "--force")
        assert code == 0, output
    seen = json.loads((data / "trained" / "seen.json").read_text())
    assert {r[0].split("/")[0] for r in seen} == {"red", "blue"} and len(seen) == 12


def test_labels_from_class_folders_with_a_stable_validation_fraction(tmp_path):
    write_two_classes(tmp_path, 100, split=None, size=4)
    labelled = LabelledFolder.scan(tmp_path, val_fraction=0.2, seed=5)
    files = [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*.png"))]
    splits = [labelled.split_of(f) for f in files]
    assert 25 <= splits.count("val") <= 55  # 20 % of 200, by hash
    again = LabelledFolder.scan(tmp_path, val_fraction=0.2, seed=5)
    assert [again.split_of(f) for f in files] == splits
    assert [LabelledFolder.scan(tmp_path, val_fraction=0.2, seed=6).split_of(f) for f in files] != splits


def test_labels_from_csv_and_its_errors(tmp_path):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label,split\na.png,cat,train\nb.png,dog,test\nc.png,cat,\n")
    labelled = LabelledFolder.scan(tmp_path, labels_csv=csv_path)
    assert labelled.classes == ["cat", "dog"]
    assert [labelled.split_of(p) for p in ("a.png", "b.png", "c.png", "d.png")] == ["train", "val", "train", None]
    csv_path.write_text("file,class\na.png,cat\n")
    with pytest.raises(ConfigError, match="path,label"):
        LabelledFolder.scan(tmp_path, labels_csv=csv_path)
    only = tmp_path / "one"
    (only / "cats").mkdir(parents=True)
    with pytest.raises(ConfigError, match="at least two classes"):
        LabelledFolder.scan(only)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_cuda_checkpoints_cpu_loadable_state(tmp_path, dataset, trainer_plugin):
    pipe = training_pipeline(tmp_path, dataset, epochs=2, run={"device": "cuda"})
    code, output = invoke("run", pipe)
    assert code == 0, output
    saved = torch.load(tmp_path / "out" / "checkpoints" / "fit.pt", map_location="cpu", weights_only=True)
    assert saved["cursor"]["finished"] and saved["rng"]["cuda"], "CUDA RNG states are saved"
    epochs = [r for r in records(tmp_path / "out") if r.get("record") == "epoch"]
    assert len(epochs) == 2 and epochs[-1]["train_acc"] >= 0.5
