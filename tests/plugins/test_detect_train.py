"""``train.detector`` (plugins/imgflow_detect/train.py, labels.py, networks.py) and ``detect`` with
the detector.pt it writes.

Labels in the three formats are made with the code that writes them (detect's COCO and YOLO
outputs) or as d2l.ai's banana CSV; data comes from ``imgflow datasets make-bananas`` at 64 px.
torchvision detectors are fine-tuned from COCO-layout state dicts made here (random init, loaded
through the real path). Training runs go through the CLI; the SIGKILL test is a real process.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from imgflow_detect import networks
from imgflow_detect.bananas import BananaSpec, make_bananas
from imgflow_detect.categories import trained
from imgflow_detect.detect import Detect, DetectParams
from imgflow_detect.labels import BoxLabels
from imgflow_detect.outputs import Detection, build_coco, yolo_classes_artifact, yolo_lines
from imgflow_detect.train import TrainDetector, TrainDetectorParams
from PIL import Image

from imgflow import ConfigError, ItemError, StageContext
from imgflow.batch import Batch
from imgflow.cli import cli
from imgflow.testing import make_item
from tests.helpers import write_pipeline

REPO = Path(__file__).resolve().parents[2]
IMGFLOW = str(Path(sys.executable).parent / "imgflow")
CPU = torch.device("cpu")
TAXONOMY = trained(["banana", "coin"])
OBJECTS = {  # relpath -> (class index, box in pixels) of 80 x 60 pictures
    "train/a.jpg": [(0, (10.0, 5.0, 40.0, 30.0)), (1, (50.0, 20.0, 78.0, 58.0))],
    "train/b.jpg": [(1, (0.0, 0.0, 20.0, 16.0))],
    "val/c.jpg": [],
}

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def bananas(tmp_path_factory) -> Path:
    """A small generated set: 96 + 24 pictures of 64 px with one or two objects each."""
    root = tmp_path_factory.mktemp("bananas")
    make_bananas(root, BananaSpec(train=96, val=24, size=64))
    return root


def test_importing_the_trainer_modules_does_not_import_torch():
    code = ("import sys, imgflow_detect.train, imgflow_detect.labels, imgflow_detect.networks, imgflow_detect.bananas, "
            "imgflow_detect.evaluate, imgflow_segment.train, imgflow_segment.masks, imgflow_finetune.kit; "
            "bad = [m for m in ('torch', 'torchvision', 'numpy', 'pycocotools') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---------------------------------------------------------------------------------------------
# labels: COCO (as detect writes it), YOLO (as detect writes it), d2l's CSV
# ---------------------------------------------------------------------------------------------


def detections_of(relpath: str) -> list[Detection]:
    return [Detection(box=box, category_id=k + 1, label=TAXONOMY.name(k + 1), score=0.9) for k, box in OBJECTS[relpath]]


def write_coco(path: Path) -> Path:
    records = [{"input": rel, "meta": {"width": 80, "height": 60},
                "results": {"detect": {"width": 80, "height": 60,
                                       "detections": [d.to_result() for d in detections_of(rel)]}}}
               for rel in OBJECTS]
    path.write_text(json.dumps(build_coco(iter(records), "detect", TAXONOMY)))
    return path


def write_yolo(folder: Path) -> Path:
    for rel in OBJECTS:
        target = folder / Path(rel).with_suffix(".txt")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yolo_lines(detections_of(rel), 80, 60, TAXONOMY))
    (folder / "classes.txt").write_bytes(yolo_classes_artifact(TAXONOMY).data)
    return folder


def write_csv(path: Path) -> Path:
    rows = ["img_name,label,xmin,ymin,xmax,ymax"]  # d2l.ai's banana header
    for rel, objects in OBJECTS.items():
        rows += [f"{rel},{['banana', 'coin'][k]},{','.join(str(v) for v in box)}" for k, box in objects] or [f"{rel},,,,,"]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_coco_yolo_and_csv_labels_give_the_same_targets(tmp_path):
    sources = [write_coco(tmp_path / "coco.json"), write_yolo(tmp_path / "labels"), write_csv(tmp_path / "b.csv")]
    for source in sources:
        labels = BoxLabels.read(source)
        assert labels.classes == ["banana", "coin"], source
        for rel, objects in OBJECTS.items():
            t = labels.targets(rel, 60, 80)
            assert t.labels.tolist() == [k for k, _ in objects], (source, rel)
            assert torch.allclose(t.boxes, torch.tensor([b for _, b in objects]).reshape(-1, 4), atol=1e-3), source
        assert labels.key_of("train/unknown.jpg") is None
    only_coins = BoxLabels.read(sources[2], classes=["coin"])
    assert only_coins.targets("train/a.jpg", 60, 80).labels.tolist() == [0]  # bananas ignored, coin is class 0
    assert BoxLabels.find(tmp_path).format == "coco"  # coco.json is looked for first


def test_label_problems_name_the_file_and_the_fix(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,what\na.jpg,x\n")
    with pytest.raises(ConfigError, match=r"bad.csv: the header has no 'path' column.*fix:"):
        BoxLabels.read(bad)
    bad.write_text("path,label,x1,y1,x2,y2\na.jpg,cat,10,10,5,20\n")
    with pytest.raises(ConfigError, match=r"bad.csv:2: box .* has no area"):
        BoxLabels.read(bad)
    with pytest.raises(ConfigError, match=r"classes \['dog'\] do not occur"):
        BoxLabels.read(write_csv(tmp_path / "ok.csv"), classes=["dog"])
    yolo = write_yolo(tmp_path / "labels")
    (yolo / "train" / "b.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ItemError, match="class index below 2") as info:
        BoxLabels.read(yolo).targets("train/b.jpg", 60, 80)
    assert info.value.code == "label_error"
    with pytest.raises(ConfigError, match="no labels found"):
        BoxLabels.find(tmp_path / "labels" / "val")


def test_splits_follow_folders_then_the_csv_column_then_the_fraction(tmp_path):
    (tmp_path / "l.csv").write_text("path,label,x1,y1,x2,y2,split\nx.jpg,a,0,0,5,5,val\ny.jpg,a,0,0,5,5,\n"
                                    "train/z.jpg,a,0,0,5,5,\n" + "".join(f"n{i}.jpg,a,0,0,5,5,\n" for i in range(40)))
    stage = TrainDetector(TrainDetectorParams(labels="l.csv", val_fraction=0.25),
                          StageContext(stage_id="detector", pipeline_dir=tmp_path, input_root=tmp_path))
    assert stage.split_of("x.jpg") == "val" and stage.split_of("train/z.jpg") == "train"
    assert stage.split_of("nothing.jpg") is None
    fraction = sum(stage.split_of(f"n{i}.jpg") == "val" for i in range(40)) / 40
    assert 0.1 <= fraction <= 0.45
    assert [stage.split_of(f"n{i}.jpg") for i in range(40)] == [stage.split_of(f"n{i}.jpg") for i in range(40)]


def test_parameters_follow_the_recipes_and_refuse_contradictions():
    tiny = TrainDetectorParams()
    assert (tiny.model, tiny.epochs, tiny.image_size, tiny.weight_decay) == ("tiny_ssd", 20, 256, 5e-4)
    assert tiny.recipe() == {"lr": 0.2, "momentum": 0.0}  # SPEC section 4
    assert TrainDetectorParams(model="ssdlite320_mobilenet_v3_large").recipe() == {"lr": 0.005, "momentum": 0.9}
    for bad in ({"weights": "coco.pth"}, {"pretrained": False}, {"image_size": 32}, {"classes": []},
                {"model": "ssd300_vgg16", "pretrained": False, "weights": "x.pth"}):
        with pytest.raises(ValueError):
            TrainDetectorParams(**bad)


# ---------------------------------------------------------------------------------------------
# the trainer, as the engine calls it
# ---------------------------------------------------------------------------------------------


def tiny_trainer(bananas: Path, **params) -> TrainDetector:
    stage = TrainDetector(TrainDetectorParams(image_size=64, **params),
                          StageContext(stage_id="detector", input_root=bananas, pipeline_dir=bananas))
    torch.manual_seed(0)
    stage.setup(CPU)
    return stage


def labelled_batch(stage: TrainDetector, names: list[str], split: str = "train", epoch: int = 0) -> Batch:
    items = []
    for name in names:
        item = make_item(64, 64, source=name, seed=len(items))
        item.epoch = epoch
        item.targets = stage.targets_of(name, 64, 64)
        items.append(item)
    return Batch(items=items, split=split)


def test_tiny_ssd_state_dict_round_trip_continues_exactly(bananas):
    names = [f"train/img_{i:04d}.jpg" for i in range(8)]
    first = tiny_trainer(bananas)
    first.start_epoch(0)
    first.consume(labelled_batch(first, names[:4]))
    saved = first.state_dict()
    went_on = first.consume(labelled_batch(first, names[4:]))
    second = tiny_trainer(bananas)
    torch.manual_seed(5)
    for param in second.net.parameters():  # another starting point: the state must replace it
        torch.nn.init.normal_(param)
    second.load_state_dict(saved)
    assert second.consume(labelled_batch(second, names[4:])) == went_on
    for key, value in first.net.state_dict().items():
        assert torch.equal(value, second.net.state_dict()[key]), key
    assert set(first.end_epoch(0)) == {"loss", "class_err", "bbox_mae", "lr"}
    with pytest.raises(ConfigError, match="made for classes"):
        tiny_trainer(bananas, classes=["coin"]).load_state_dict(saved)


def test_validation_measures_map_without_training(bananas):
    stage = tiny_trainer(bananas, previews=2)
    stage.start_epoch(0)
    stage.consume(labelled_batch(stage, [f"train/img_{i:04d}.jpg" for i in range(4)]))
    before = {k: v.clone() for k, v in stage.net.state_dict().items()}
    with torch.no_grad():
        assert stage.consume(labelled_batch(stage, [f"val/img_{i:04d}.jpg" for i in range(3)], split="val")) is None
    assert all(torch.equal(v, stage.net.state_dict()[k]) for k, v in before.items())
    metrics = stage.end_epoch(0)
    assert 0.0 <= metrics["val_map"] <= metrics["val_map50"] <= 1.0
    assert len(stage._shown) == 2


def test_map_is_one_for_perfect_detections_and_zero_for_misses():
    from imgflow_detect.evaluate import MapAccumulator

    truth = torch.tensor([[10.0, 10.0, 40.0, 40.0], [50.0, 5.0, 70.0, 30.0]])
    labels = torch.tensor([0, 1])
    perfect = MapAccumulator(["banana", "coin"])
    perfect.add(60, 80, truth, labels, truth, torch.tensor([0.9, 0.8]), labels + 1)
    assert perfect.result() == {"map": pytest.approx(1.0), "map50": pytest.approx(1.0)}
    wrong_class = MapAccumulator(["banana", "coin"])
    wrong_class.add(60, 80, truth, labels, truth, torch.tensor([0.9, 0.8]), 2 - labels)
    assert wrong_class.result()["map50"] == pytest.approx(0.0)
    nothing = MapAccumulator(["banana", "coin"])
    nothing.add(60, 80, truth, labels, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert nothing.result() == {"map": 0.0, "map50": 0.0}


# ---------------------------------------------------------------------------------------------
# torchvision fine-tuning
# ---------------------------------------------------------------------------------------------

SSDLITE = "ssdlite320_mobilenet_v3_large"


def test_fine_tuning_keeps_coco_weights_but_the_class_head_and_detect_uses_the_names(bananas, tmp_path):
    from torchvision.models import detection

    torch.manual_seed(3)
    coco = detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=91).state_dict()
    torch.save(coco, tmp_path / "coco.pth")
    stage = TrainDetector(TrainDetectorParams(model=SSDLITE, weights=str(tmp_path / "coco.pth"), freeze_backbone=True),
                          StageContext(stage_id="detector", input_root=bananas, pipeline_dir=tmp_path))
    stage.setup(CPU)
    own = stage.net.state_dict()
    assert all(torch.equal(own[k], coco[k]) for k in own if not k.startswith("head.classification_head."))
    logits = "head.classification_head.module_list.0.1.weight"  # 6 anchors x (2 classes + background)
    assert own[logits].shape[0] == 6 * 3 and coco[logits].shape[0] == 6 * 91
    backbone = {k: v.clone() for k, v in stage.net.backbone.state_dict().items()}
    stage.start_epoch(0)
    metrics = stage.consume(labelled_batch(stage, ["train/img_0000.jpg", "train/img_0001.jpg"]))
    assert {"loss", "bbox_regression", "classification"} <= set(metrics) and metrics["loss"] > 0
    assert all(torch.equal(v, stage.net.backbone.state_dict()[k]) for k, v in backbone.items())  # frozen, BN too
    (tmp_path / "detector.pt").write_bytes(stage.finalize()[0].data)
    from imgflow_finetune import kit

    assert kit.imgflow_checkpoint(tmp_path / "coco.pth", networks.FORMAT, networks.REQUIRED) is None  # plain
    assert kit.imgflow_checkpoint(tmp_path / "detector.pt", networks.FORMAT, networks.REQUIRED)["model"] == SSDLITE

    detect = Detect(DetectParams(weights=str(tmp_path / "detector.pt"), score_threshold=0.0, max_detections=5,
                                 classes=["coin"]), StageContext(stage_id="detect", pipeline_dir=tmp_path))
    detect.setup(CPU)
    batch = Batch(items=[make_item(64, 64)])
    with torch.inference_mode():
        detect.process(batch)
    found = batch.items[0].results["detect"]
    assert found["model"] == SSDLITE and len(found["detections"]) == 5
    assert {d["label"] for d in found["detections"]} == {"coin"} and {d["category_id"] for d in found["detections"]} == {2}
    with pytest.raises(ConfigError, match="holds a trained ssdlite320"):
        Detect(DetectParams(weights=str(tmp_path / "detector.pt"), model="ssd300_vgg16"),
               StageContext(stage_id="detect", pipeline_dir=tmp_path)).setup(CPU)


def test_a_checkpoint_of_another_architecture_is_refused_with_the_difference(bananas, tmp_path):
    from imgflow_detect.tiny_ssd import TinySSD

    torch.save(TinySSD(90).state_dict(), tmp_path / "wrong.pth")
    stage = TrainDetector(TrainDetectorParams(model=SSDLITE, weights="wrong.pth"),
                          StageContext(stage_id="detector", input_root=bananas, pipeline_dir=tmp_path))
    with pytest.raises(ConfigError, match=r"wrong.pth: the weights do not fit the network: \d+ unexpected keys: blk_0"):
        stage.setup(CPU)


# ---------------------------------------------------------------------------------------------
# end to end through the CLI: the shipped pipelines
# ---------------------------------------------------------------------------------------------

# 8 epochs of 96 pictures at 64 px: AdamW converges in far fewer steps than the book's plain SGD
TEST_TRAINING = ["-p", "detector.image_size=64", "-p", "detector.epochs=8", "-p", 'detector.optimizer="adamw"',
                 "-p", "detector.lr=0.003", "-p", "detector.previews=3", "-b", "8", "--device", "cpu"]


def test_train_detector_then_detect_bananas_through_the_cli(bananas, tmp_path):
    out = tmp_path / "trained"
    code, text = invoke("run", REPO / "pipelines" / "train_detector.toml", "-i", bananas, "-o", out, *TEST_TRAINING)
    assert code == 0, text
    epochs = read_csv(out / "metrics.csv")
    assert [int(r["epoch"]) for r in epochs] == list(range(8))
    assert {"loss", "class_err", "bbox_mae", "val_map50", "val_map", "images_per_s"} <= set(epochs[0])
    first, last = float(epochs[0]["val_map50"]), float(epochs[-1]["val_map50"])
    assert first < 0.05 and last > 0.15, epochs  # after one epoch it guesses (about 0.01); then it finds them
    assert float(epochs[-1]["loss"]) < float(epochs[0]["loss"])
    preview = Image.open(out / "previews" / "epoch_008.png")
    assert preview.size[0] >= 3 * 64 and preview.mode == "RGB"
    doc = torch.load(out / "detector.pt", weights_only=True)
    assert doc["format"] == "imgflow-detector" and doc["classes"] == ["banana", "coin"] and doc["image_size"] == 64

    found = tmp_path / "found"
    code, text = invoke("run", REPO / "pipelines" / "detect_bananas.toml", "-i", bananas / "val", "-o", found,
                        "-p", f"detect.weights={json.dumps(str(out / 'detector.pt'))}", "--device", "cpu")
    assert code == 0, text
    coco = json.loads((found / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["banana", "coin"]
    assert (found / "labels" / "classes.txt").read_text() == "banana\ncoin\n"
    records = [json.loads(line) for line in (found / "manifest.jsonl").read_text().splitlines()]
    labels = {d["label"] for r in records for d in r["results"]["detect"]["detections"]}
    assert len(records) == 24 and labels and labels <= {"banana", "coin"}
    assert Image.open(found / "img_0000.jpg").size == (64, 64)


def test_resume_after_sigkill_ends_with_the_uninterrupted_detector(tmp_path):
    data = tmp_path / "data"
    make_bananas(data, BananaSpec(train=16, val=4, size=64, seed=5))
    stage = {"use": "train.detector", "id": "detector", "image_size": 64, "epochs": 2, "previews": 1}
    run = {"device": "cpu", "batch_size": 4, "checkpoint_every": 1, "seed": 2}

    def pipeline(name: str) -> Path:
        return write_pipeline(tmp_path / f"{name}.toml", input=data, output=tmp_path / name, run=run,
                              stages=[{"use": "flip_horizontal"}, stage])  # masks/*.png: left out, no labels

    code, text = invoke("run", pipeline("whole"))
    assert code == 0, text
    killed = pipeline("killed")
    checkpoint = tmp_path / "killed" / "checkpoints" / "detector.pt"
    proc = subprocess.Popen([IMGFLOW, "run", str(killed)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert torch.load(checkpoint, weights_only=True)["cursor"]["finished"] is False
    code, text = invoke("run", killed)
    assert code == 0 and "resuming 'detector'" in text, text
    a = torch.load(tmp_path / "whole" / "detector.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "killed" / "detector.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_map50"] for r in read_csv(tmp_path / "whole" / "metrics.csv")] == \
           [r["val_map50"] for r in read_csv(tmp_path / "killed" / "metrics.csv")]


def test_an_image_whose_labels_are_broken_fails_alone(bananas, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("banana\ncoin\n")
    rows = [r for r in read_csv(bananas / "labels.csv") if r["path"].startswith(("train/img_000", "val/img_000"))]
    for rel in sorted({r["path"] for r in rows}):
        lines = [f"{['banana', 'coin'].index(r['label'])} {(float(r['x1']) + float(r['x2'])) / 128:.4f} "
                 f"{(float(r['y1']) + float(r['y2'])) / 128:.4f} {(float(r['x2']) - float(r['x1'])) / 64:.4f} "
                 f"{(float(r['y2']) - float(r['y1'])) / 64:.4f}" for r in rows if r["path"] == rel]
        target = labels / Path(rel).with_suffix(".txt")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(lines) + "\n")
    (labels / "train" / "img_0003.txt").write_text("banana is not a number\n")
    pipe = write_pipeline(tmp_path / "p.toml", input=bananas, output=tmp_path / "out", run={"device": "cpu", "batch_size": 4},
                          stages=[{"use": "train.detector", "id": "detector", "image_size": 64, "epochs": 1,
                                   "labels": str(labels), "previews": 0}])
    code, text = invoke("run", pipe)
    assert code == 1, text  # the run finished; one item failed
    records = {r["input"]: r for r in map(json.loads, (tmp_path / "out" / "manifest.jsonl").read_text().splitlines())
               if "input" in r}
    broken = records["train/img_0003.jpg"]
    assert broken["status"] == "failed" and broken["error"]["code"] == "label_error"
    assert "img_0003.txt:1" in broken["error"]["message"]
    assert sum(r["status"] == "done" for r in records.values()) == 19  # 10 + 10 labelled, one broken
    assert (tmp_path / "out" / "detector.pt").exists()



# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", ["tiny_ssd", SSDLITE])
def test_cuda_training_with_mixed_precision_then_detect_on_the_cpu(bananas, tmp_path, model):
    out = tmp_path / "trained"
    stage = {"use": "train.detector", "id": "detector", "model": model, "epochs": 2, "amp": True}
    stage.update({"image_size": 64} if model == "tiny_ssd" else {"pretrained": False})
    code, text = invoke("run", write_pipeline(tmp_path / "t.toml", input=bananas, output=out, stages=[stage],
                                              run={"device": "cuda", "batch_size": 8}))
    assert code == 0, text
    epochs = read_csv(out / "metrics.csv")
    assert len(epochs) == 2 and all(float(r["loss"]) == float(r["loss"]) for r in epochs)  # finite, not NaN
    doc = torch.load(out / "detector.pt", map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in doc["state_dict"].values())
    code, text = invoke("run", REPO / "pipelines" / "detect_bananas.toml", "-i", bananas / "val", "-o", tmp_path / "found",
                        "-p", f"detect.weights={json.dumps(str(out / 'detector.pt'))}", "--device", "cpu")
    assert code == 0, text
