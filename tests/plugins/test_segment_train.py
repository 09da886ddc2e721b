"""``train.segmenter`` (plugins/imgflow_segment/train.py, networks.py) and ``segment`` with the
segmenter.pt it writes.

Data comes from ``imgflow datasets make-bananas`` (masks under masks/, classes.json); torchvision
segmenters are fine-tuned from VOC-layout state dicts made here (random init, loaded through the
real path). The shipped pipelines run through the CLI.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from imgflow_detect.bananas import PALETTE, BananaSpec, make_bananas
from imgflow_segment.stage import Segment, SegmentParams
from imgflow_segment.train import TrainSegmenter, TrainSegmenterParams, scores_of
from PIL import Image

from imgflow import ConfigError, StageContext
from imgflow.batch import Batch
from imgflow.cli import cli
from imgflow.testing import make_item
from tests.helpers import write_pipeline

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def bananas(tmp_path_factory) -> Path:
    """64 + 16 pictures of 128 px with their masks and classes.json."""
    root = tmp_path_factory.mktemp("bananas")
    make_bananas(root, BananaSpec(train=64, val=16, size=128))
    return root


def trainer(root: Path, **params) -> TrainSegmenter:
    stage = TrainSegmenter(TrainSegmenterParams(**{"pretrained": False, "crop": [64, 64], **params}),
                           StageContext(stage_id="segmenter", input_root=root, pipeline_dir=root))
    torch.manual_seed(0)
    stage.setup(CPU)
    return stage


def masked_batch(stage: TrainSegmenter, names: list[str], split: str = "train") -> Batch:
    items = []
    for name in names:
        item = make_item(128, 128, source=name, seed=len(items))
        item.targets = stage.targets_of(name, 128, 128)
        items.append(item)
    return Batch(items=items, split=split)


def test_defaults_are_the_books_recipe_and_contradictions_are_refused():
    p = TrainSegmenterParams()
    assert (p.model, p.epochs, p.crop, p.pretrained) == ("fcn_resnet18", 5, (320, 480), True)
    assert p.recipe() == {"lr": 1e-3, "momentum": 0.0, "weight_decay": 1e-3, "reduction": "sum"}  # SPEC section 5
    assert TrainSegmenterParams(model="lraspp_mobilenet_v3_large").recipe()["reduction"] == "mean"
    for bad in ({"crop": [16, 64]}, {"pretrained": False, "weights": "x.pth"}, {"freeze_backbone": True, "pretrained": False},
                {"model": "unet"}):
        with pytest.raises(ValueError):
            TrainSegmenterParams(**bad)


def test_splits_come_from_the_folders_and_masks_are_no_inputs(bananas):
    stage = TrainSegmenter(TrainSegmenterParams(), StageContext(stage_id="s", input_root=bananas, pipeline_dir=bananas))
    assert stage.split_of("train/img_0000.jpg") == "train" and stage.split_of("val/img_0003.jpg") == "val"
    assert stage.split_of("masks/train/img_0000.png") is None  # a label, not an image
    assert stage.split_of("train/unlabelled.jpg") is None
    assert stage.classes.names == ("background", "banana", "coin")  # classes.json in the input folder
    assert stage.classes.palette == PALETTE
    missing = TrainSegmenter(TrainSegmenterParams(masks="nowhere"), StageContext(stage_id="s", input_root=bananas,
                                                                                   pipeline_dir=bananas))
    with pytest.raises(ConfigError, match="nowhere: no masks folder"):
        missing.split_of("train/img_0000.jpg")


def test_scores_are_pixel_accuracy_and_mean_iou():
    confusion = torch.tensor([[50, 10, 0], [5, 20, 0], [0, 0, 0]])  # rows truth, columns prediction
    scores = scores_of(confusion)
    assert scores["pixel_acc"] == pytest.approx(70 / 85)
    assert scores["miou"] == pytest.approx((50 / 65 + 20 / 35) / 2)  # class 2 never occurs: left out


def test_state_dict_round_trip_continues_exactly(bananas):
    names = [f"train/img_{i:04d}.jpg" for i in range(6)]
    first = trainer(bananas)
    first.start_epoch(0)
    first.consume(masked_batch(first, names[:3]))
    saved = first.state_dict()
    went_on = first.consume(masked_batch(first, names[3:]))
    second = trainer(bananas)
    for param in second.net.parameters():
        torch.nn.init.normal_(param)
    second.load_state_dict(saved)
    assert second.consume(masked_batch(second, names[3:])) == went_on
    for key, value in first.net.state_dict().items():
        assert torch.equal(value, second.net.state_dict()[key]), key
    first.consume(masked_batch(first, ["val/img_0000.jpg", "val/img_0001.jpg"], split="val"))
    metrics = first.end_epoch(0)
    assert set(metrics) == {"loss", "pixel_acc", "val_loss", "val_pixel_acc", "val_miou", "lr"}
    assert 0 <= metrics["val_miou"] <= 1


def test_fine_tuning_keeps_voc_weights_but_the_classifier_and_segment_uses_the_palette(bananas, tmp_path):
    from torchvision.models import segmentation

    torch.manual_seed(2)
    voc = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21).state_dict()
    torch.save(voc, tmp_path / "voc.pth")
    stage = trainer(bananas, model="lraspp_mobilenet_v3_large", pretrained=True, weights=str(tmp_path / "voc.pth"))
    own = stage.net.state_dict()
    fresh = [k for k in own if k.startswith(("classifier.low_classifier.", "classifier.high_classifier."))]
    assert own["classifier.low_classifier.weight"].shape[0] == 3 and len(fresh) == 4
    assert all(torch.equal(own[k], voc[k]) for k in own if k not in fresh and not k.endswith("num_batches_tracked"))
    stage.start_epoch(0)
    assert stage.consume(masked_batch(stage, ["train/img_0000.jpg", "train/img_0001.jpg"]))["loss"] > 0
    (tmp_path / "segmenter.pt").write_bytes(stage.finalize()[0].data)

    segment = Segment(SegmentParams(weights=str(tmp_path / "segmenter.pt")), StageContext(stage_id="segment"))
    segment.setup(CPU)
    item = make_item(40, 56)
    with torch.inference_mode():
        segment.process(Batch(items=[item]))
    assert item.image.shape == (3, 40, 56) and set(item.results["segment"]["classes"]) <= {"background", "banana", "coin"}
    (mask,) = [a for a in item.artifacts if a.relpath.startswith("masks/")]
    png = Image.open(io.BytesIO(mask.data))
    assert png.size == (56, 40) and png.getpalette()[:9] == [v for c in PALETTE for v in c]
    assert segment.short is None  # a trained segmenter sees images at their own size


def test_train_segmenter_then_segment_bananas_through_the_cli(bananas, tmp_path):
    out = tmp_path / "trained"
    code, text = invoke("run", REPO / "pipelines" / "train_segmenter.toml", "-i", bananas, "-o", out, "--device", "cpu",
                        "-b", "4", "-p", "segmenter.epochs=5", "-p", "segmenter.crop=[128, 128]",
                        "-p", "segmenter.previews=2")
    assert code == 0, text
    with open(out / "metrics.csv", newline="") as fh:
        epochs = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in epochs] == list(range(5))
    last = float(epochs[-1]["val_miou"])
    assert last > 0.4, epochs  # calling every pixel background scores about 0.3 here
    assert float(epochs[-1]["loss"]) < float(epochs[0]["loss"])
    assert Image.open(out / "previews" / "epoch_005.png").size == (2 * 128 + 4, 2 * 128 + 4)
    doc = torch.load(out / "segmenter.pt", weights_only=True)
    assert doc["format"] == "imgflow-segmenter" and doc["classes"] == ["background", "banana", "coin"]

    found = tmp_path / "found"
    code, text = invoke("run", REPO / "pipelines" / "segment_bananas.toml", "-i", bananas / "val", "-o", found,
                        "--device", "cpu", "-p", f"segment.weights={json.dumps(str(out / 'segmenter.pt'))}")
    assert code == 0, text
    records = [json.loads(line) for line in (found / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 16 and all(r["results"]["segment"]["model"] == "fcn_resnet18" for r in records)
    predicted = np.asarray(Image.open(found / "masks" / "img_0000.png"))
    truth = np.asarray(Image.open(bananas / "masks" / "val" / "img_0000.png"))
    assert predicted.shape == truth.shape and set(np.unique(predicted)) <= {0, 1, 2}
    agree = float(np.mean(np.stack([np.asarray(Image.open(found / "masks" / f"img_{i:04d}.png")) ==
                                    np.asarray(Image.open(bananas / "masks" / "val" / f"img_{i:04d}.png"))
                                    for i in range(16)])))
    assert agree == pytest.approx(float(epochs[-1]["val_pixel_acc"]), abs=1e-3)  # segment = the validation pass


def test_masks_follow_a_resize_and_jpegs_are_not_decoded_at_reduced_scale(bananas, tmp_path):
    """A first-stage resize would let JPEGs decode at 1/2 scale: the masks (file pixels) would no
    longer fit. Training runs with targets decode at full size, and the resize moves the masks."""
    out = tmp_path / "out"
    pipe = write_pipeline(tmp_path / "p.toml", input=bananas, output=out, run={"device": "cpu", "batch_size": 8},
                          stages=[{"use": "resize", "size": [64, 64]},
                                  {"use": "train.segmenter", "id": "segmenter", "pretrained": False, "epochs": 1,
                                   "crop": [64, 64], "previews": 1}])
    code, text = invoke("run", pipe)
    assert code == 0, text
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    done = [r for r in records if r.get("status") == "done"]
    assert len(done) == 80 and all(r["meta"]["width"] == 128 for r in done)
    assert Image.open(out / "previews" / "epoch_001.png").size == (2 * 64 + 4, 64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_with_mixed_precision_then_segment_on_the_cpu(bananas, tmp_path):
    out = tmp_path / "trained"
    code, text = invoke("run", REPO / "pipelines" / "train_segmenter.toml", "-i", bananas, "-o", out, "--device", "cuda",
                        "-b", "8", "-p", "segmenter.epochs=2", "-p", "segmenter.crop=[96, 96]", "-p", "segmenter.amp=true")
    assert code == 0, text
    doc = torch.load(out / "segmenter.pt", map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in doc["state_dict"].values())
    code, text = invoke("run", REPO / "pipelines" / "segment_bananas.toml", "-i", bananas / "val", "-o", tmp_path / "found",
                        "--device", "cpu", "-p", f"segment.weights={json.dumps(str(out / 'segmenter.pt'))}")
    assert code == 0, text
    assert len(list((tmp_path / "found" / "masks").glob("*.png"))) == 16
