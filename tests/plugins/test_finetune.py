"""Tests for the fine-tune plugin (plugins/imgflow_finetune): data set, transforms, trainer, classify.

No network: networks are trained from scratch, or "pretrained" from ImageNet-layout state dicts
made here (random init) and loaded through the real path (imgflow.models.load_state_dict,
strict). Data comes from ``imgflow datasets make-shapes`` (scikit-image's bundled textures).
Training runs end to end are real ``imgflow run`` subprocesses at 64 px or smaller.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from imgflow import ConfigError, StageContext, models, plugins
from imgflow.batch import Batch, ImageMeta, Item
from imgflow.training.labels import LabelledFolder
from imgflow_finetune import MODELS, networks, registry_name, transforms
from imgflow_finetune.classify import Classify, ClassifyParams, safe_folder
from imgflow_finetune.shapes import ShapesSpec, make_shapes
from imgflow_finetune.train import TrainClassifier, TrainClassifierParams

from tests.helpers import write_pipeline

REPO = Path(__file__).resolve().parents[2]
IMGFLOW = str(Path(sys.executable).parent / "imgflow")
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture
def finetune_plugin(imgflow_register):
    """The plugin module registered in-process, unless its entry point already loaded it."""
    import imgflow_finetune

    if not plugins.get_plugin_manager().is_registered(imgflow_finetune):
        imgflow_register(imgflow_finetune, name="finetune")
    return imgflow_finetune


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """4 + 4 training and 2 + 2 validation pictures, 32 px: for unit tests of the stage."""
    root = tmp_path_factory.mktemp("tiny")
    make_shapes(root, ShapesSpec(train_per_class=4, val_per_class=2, size=32))
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """The default-size data set (60 + 60 training, 20 + 20 validation, 64 px)."""
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, ShapesSpec())
    return root


def run_cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([IMGFLOW, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def files_of(root: Path, split: str) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in (root / split).rglob("*.jpg"))


def load_item(root: Path, relpath: str, epoch: int = 0, seed: int = 0) -> Item:
    """An item as the engine makes it: float32 (3, H, W) in [0, 1], source = path under the root."""
    with Image.open(root / relpath) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    meta = ImageMeta(width=image.shape[2], height=image.shape[1], mode="RGB", format="JPEG")
    return Item(source=relpath, image=image, meta=meta, seed=seed, epoch=epoch)


def batch_of(root: Path, relpaths: list[str], split: str = "train", epoch: int = 0) -> Batch:
    return Batch([load_item(root, r, epoch) for r in relpaths], device=CPU, split=split)


def make_trainer(root: Path, setup: bool = True, seed: int = 0, **params) -> TrainClassifier:
    params = {"pretrained": False, "image_size": 32, "resize": 36, **params}
    context = StageContext(stage_id="classifier", seed=seed, pipeline_dir=root, input_root=root)
    stage = TrainClassifier(TrainClassifierParams(**params), context)
    if setup:
        torch.manual_seed(seed)  # as the engine does before setup()
        stage.setup(CPU)
    return stage


def imagenet_file(tmp_path: Path, model: str = "resnet18", seed: int = 3) -> Path:
    """An ImageNet-layout (1000-class) state dict with random values, saved like torchvision's."""
    torch.manual_seed(seed)
    path = tmp_path / f"{model}-imagenet.pth"
    torch.save(networks.build(model).state_dict(), path)
    return path


def params_by_name(stage: TrainClassifier) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in stage.net.named_parameters()}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def manifest(out: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return {r["input"]: r for r in records if "input" in r}


# ---------------------------------------------------------------------------------------------
# the plugin, the registry, the data set
# ---------------------------------------------------------------------------------------------


def test_importing_the_plugin_and_stage_modules_does_not_import_torch():
    code = ("import sys, imgflow_finetune, imgflow_finetune.train, imgflow_finetune.classify, "
            "imgflow_finetune.shapes, imgflow_finetune.checkpoint; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'; "
            "assert 'numpy' not in sys.modules, 'numpy imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_registered_urls_equal_torchvision_weights_enums(finetune_plugin):
    from torchvision import models as tvm

    enums = {
        "resnet18": tvm.ResNet18_Weights,
        "resnet50": tvm.ResNet50_Weights,
        "mobilenet_v3_large": tvm.MobileNet_V3_Large_Weights,
        "efficientnet_b0": tvm.EfficientNet_B0_Weights,
    }
    assert set(MODELS) == set(enums) == set(networks.ARCHITECTURES)
    for model, enum in enums.items():
        official = enum.IMAGENET1K_V1
        assert MODELS[model][0] == official.url, model
        spec = models.get(registry_name(model))
        assert spec.url == official.url and spec.stage == "train.classifier"
        assert spec.approx_size == round(official.meta["_file_size"] * 2**20)  # what models list shows
        assert spec.sha256_prefix == official.url.rsplit("-", 1)[1].removesuffix(".pth")
        # the architecture we build has exactly the key layout of the official checkpoint
        assert official.meta["num_params"] == sum(p.numel() for p in networks.build(model).parameters())


def test_make_shapes_layout_is_reproducible_and_seeded(tmp_path):
    spec = ShapesSpec(train_per_class=3, val_per_class=2, size=40)
    counts = make_shapes(tmp_path / "a", spec)
    make_shapes(tmp_path / "b", spec)
    make_shapes(tmp_path / "c", ShapesSpec(train_per_class=3, val_per_class=2, size=40, seed=1))
    assert counts == {"train": 6, "val": 4}
    files = files_of(tmp_path / "a", "train") + files_of(tmp_path / "a", "val")
    assert len(files) == 10
    assert {f.split("/")[1] for f in files} == {"brick", "grass"}
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
        with Image.open(tmp_path / "a" / rel) as im:
            assert im.mode == "RGB" and min(im.size) == 40 and max(im.size) <= 60
    assert any((tmp_path / "a" / r).read_bytes() != (tmp_path / "c" / r).read_bytes() for r in files)
    labelled = LabelledFolder.scan(tmp_path / "a")
    assert labelled.classes == ["brick", "grass"]
    assert labelled.split_of("val/grass/grass_0001.jpg") == "val"
    assert labelled.label_of("train/grass/grass_0001.jpg") == 1


def test_make_shapes_colour_and_brightness_do_not_give_the_class_away(shapes):
    """Both classes draw tint, brightness and contrast from one distribution: their mean colours
    overlap, so a classifier that beats chance has learnt the texture."""
    means = {}
    for label in ("brick", "grass"):
        rows = []
        for path in sorted((shapes / "train" / label).glob("*.jpg")):
            with Image.open(path) as im:
                rows.append(np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) / 255.0)
        means[label] = np.stack(rows)
    for channel in range(3):
        a, b = means["brick"][:, channel], means["grass"][:, channel]
        assert abs(a.mean() - b.mean()) < 0.5 * (a.std() + b.std()), channel


def test_make_shapes_command_through_the_cli(tmp_path, finetune_plugin):
    from imgflow.cli import _add_plugin_commands, cli

    _add_plugin_commands()
    result = CliRunner().invoke(cli, ["datasets", "make-shapes", str(tmp_path / "d"), "--train", "2",
                                      "--val", "1", "--size", "24"])
    assert result.exit_code == 0, result.output
    assert "wrote 4 training and 2 validation pictures" in result.output
    assert len(files_of(tmp_path / "d", "train")) == 4 and len(files_of(tmp_path / "d", "val")) == 2


# ---------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------


def test_defaults_are_the_books_recipe():
    p = TrainClassifierParams()
    assert (p.model, p.pretrained, p.epochs, p.optimizer, p.momentum) == ("resnet18", True, 5, "sgd", 0.0)
    assert (p.base_lr(), p.head_mult(), p.weight_decay) == (5e-5, 10.0, 1e-3)
    assert (p.image_size, p.resize, p.crop_scale, p.flip, p.loss_reduction) == (224, 256, (0.08, 1.0), 0.5, "sum")
    scratch = TrainClassifierParams(pretrained=False)
    assert (scratch.base_lr(), scratch.head_mult()) == (5e-4, 1.0)  # one learning rate, as the book
    assert TrainClassifierParams(pretrained=False, lr=0.1, head_lr_mult=3).head_mult() == 3
    assert TrainClassifierParams(model="mobilenet_v3").model == "mobilenet_v3_large"
    assert TrainClassifierParams(model="efficientnet").model == "efficientnet_b0"


@pytest.mark.parametrize("bad, needle", [
    ({"model": "vgg16"}, "model"),
    ({"resize": 100, "image_size": 128}, "resize (100) is smaller than image_size (128)"),
    ({"pretrained": False, "weights": "x.pth"}, "pretrained = false"),
    ({"crop_scale": [0.5, 0.2]}, "0 < min <= max <= 1"),
    ({"freeze": -1}, ">= 0"),
    ({"lr": 0}, "lr"),
    ({"no_such": 1}, "no_such"),
])
def test_bad_parameters_are_rejected_with_the_reason(bad, needle):
    with pytest.raises(pydantic.ValidationError) as info:
        TrainClassifierParams(**bad)
    assert needle in str(info.value)


# ---------------------------------------------------------------------------------------------
# networks and weights
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", networks.ARCHITECTURES)
def test_every_backbone_gets_a_new_xavier_head_for_our_classes(model):
    torch.manual_seed(0)
    net = networks.replace_head(networks.build(model), model, 3)
    head = networks.get_head(net, model)
    assert isinstance(head, torch.nn.Linear) and head.out_features == 3
    bound = math.sqrt(6.0 / (head.in_features + head.out_features))  # Xavier-uniform's limit
    largest = float(head.weight.detach().abs().max())
    assert 0.5 * bound < largest <= bound
    assert torch.equal(head.bias, torch.zeros(3))
    with torch.no_grad():
        assert net.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_pretrained_backbone_loads_the_file_strictly_and_replaces_only_the_head(tiny, tmp_path):
    source = imagenet_file(tmp_path)
    imagenet = torch.load(source, weights_only=True)
    stage = make_trainer(tiny, pretrained=True, weights=str(source))
    state = stage.net.state_dict()
    for key, value in imagenet.items():
        if key.startswith("fc."):
            continue
        assert torch.equal(state[key], value), key
    assert stage.net.fc.weight.shape == (2, 512)
    assert stage.classes == ["brick", "grass"]


def test_a_backbone_of_another_architecture_is_refused_naming_the_file(tiny, tmp_path):
    source = imagenet_file(tmp_path, "mobilenet_v3_large")
    stage = make_trainer(tiny, setup=False, pretrained=True, weights=str(source))
    with pytest.raises(models.StateDictMismatch) as info:
        stage.setup(CPU)
    assert str(source) in str(info.value) and "fix:" in str(info.value)


def test_fingerprint_names_the_backbone_and_the_labels_csv(tiny, tmp_path, finetune_plugin):
    default = make_trainer(tiny, setup=False, pretrained=True).fingerprint()
    assert default == {"backbone": {"weights": "finetune-resnet18@f37072fd"}}
    assert make_trainer(tiny, setup=False).fingerprint() == {}  # from scratch: no weights file
    (tmp_path / "labels.csv").write_text("path,label\n")
    facts = make_trainer(tiny, setup=False, labels=str(tmp_path / "labels.csv")).fingerprint()
    assert facts["labels"]["weights"] == str(tmp_path / "labels.csv") and facts["labels"]["size"] == 11


# ---------------------------------------------------------------------------------------------
# parameter groups, freezing, transforms
# ---------------------------------------------------------------------------------------------


def test_parameter_groups_really_train_at_two_learning_rates(tiny, tmp_path):
    stage = make_trainer(tiny, pretrained=True, weights=str(imagenet_file(tmp_path)), weight_decay=0.0)
    groups = {g["name"]: g for g in stage.optimizer.param_groups}
    assert set(groups) == {"backbone", "head"}
    assert groups["backbone"]["lr"] == 5e-5 and groups["head"]["lr"] == pytest.approx(5e-4)
    names = {id(p): n for n, p in stage.net.named_parameters()}
    assert sorted(names[id(p)] for p in groups["head"]["params"]) == ["fc.bias", "fc.weight"]
    assert len(groups["backbone"]["params"]) == len(names) - 2
    # one step of plain SGD moves every parameter by exactly -lr x its gradient: the head at 10x
    before = params_by_name(stage)
    metrics = stage.consume(batch_of(tiny, files_of(tiny, "train")))
    assert set(metrics) == {"loss", "acc"} and metrics["loss"] > 0
    for name, param in stage.net.named_parameters():
        lr = 5e-4 if name.startswith("fc.") else 5e-5
        expected = before[name] - lr * param.grad
        assert torch.allclose(param.detach(), expected, rtol=0, atol=1e-7), name
    assert float(stage.net.fc.weight.grad.abs().sum()) > 0 and float(stage.net.conv1.weight.grad.abs().sum()) > 0


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # epochs without steps
def test_adamw_cosine_and_step_schedules(tiny):
    stage = make_trainer(tiny, optimizer="adamw", lr=1e-3, head_lr_mult=2, schedule="cosine", epochs=4)
    assert isinstance(stage.optimizer, torch.optim.AdamW)
    lrs = []
    for epoch in range(4):
        stage.start_epoch(epoch)
        stage.consume(batch_of(tiny, files_of(tiny, "train")[:4]))
        lrs.append(stage.end_epoch(epoch)["lr"])
    assert lrs[0] == 1e-3 and lrs[1] == pytest.approx(1e-3 * (1 + math.cos(math.pi / 4)) / 2)
    assert lrs == sorted(lrs, reverse=True)
    assert stage.optimizer.param_groups[1]["lr"] == pytest.approx(2 * stage.optimizer.param_groups[0]["lr"])
    step = make_trainer(tiny, lr=0.1, schedule="step", step_epochs=2, step_gamma=0.5)
    seen = [step.end_epoch(e)["lr"] for e in range(5)]
    assert seen == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_frozen_layers_do_not_move_and_leave_the_optimiser(tiny):
    stage = make_trainer(tiny, freeze=2, lr=0.5)  # stem and layer1
    frozen = [n for n, p in stage.net.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("conv1.", "bn1.", "layer1.")) for n in frozen)
    assert not any(n.startswith("layer2.") for n in frozen)
    in_optimizer = {id(p) for g in stage.optimizer.param_groups for p in g["params"]}
    named = dict(stage.net.named_parameters())
    assert not any(id(named[n]) in in_optimizer for n in frozen)
    before = {k: v.clone() for k, v in stage.net.state_dict().items()}
    stage.consume(batch_of(tiny, files_of(tiny, "train")))
    after = stage.net.state_dict()
    for key in before:
        moved = not torch.equal(before[key], after[key])
        inside = key.startswith(("conv1.", "bn1.", "layer1."))
        if inside:
            assert not moved, key  # weights and batch-norm statistics alike
    assert not torch.equal(before["layer2.0.conv1.weight"], after["layer2.0.conv1.weight"])
    assert not torch.equal(before["layer2.0.bn1.running_mean"], after["layer2.0.bn1.running_mean"])


def test_freeze_by_name_and_its_errors(tiny):
    stage = make_trainer(tiny, freeze=["conv1", "layer3"])
    assert not stage.net.conv1.weight.requires_grad and not stage.net.layer3[0].conv1.weight.requires_grad
    assert stage.net.bn1.weight.requires_grad
    with pytest.raises(ConfigError, match="has no layer 'layer9'.*fix: use names under conv1, bn1"):
        make_trainer(tiny, freeze=["layer9"])
    with pytest.raises(ConfigError, match="would freeze the new output layer 'fc'"):
        make_trainer(tiny, freeze=["fc"])
    with pytest.raises(ConfigError, match="has 5 backbone blocks, got 6"):
        make_trainer(tiny, freeze=6)


def test_training_views_are_drawn_per_item_and_per_epoch(tiny):
    rel = files_of(tiny, "train")[0]
    pre = transforms.Preprocess(resize=36, image_size=32, mean=networks.IMAGENET_MEAN, std=networks.IMAGENET_STD)
    aug = transforms.Augment()

    def view(epoch: int) -> torch.Tensor:
        item = load_item(tiny, rel, epoch=epoch)
        return transforms.train_view(item.image, item.generator("classifier"), pre, aug)

    first, again, later = view(0), view(0), view(1)
    assert first.shape == (3, 32, 32)
    assert torch.equal(first, again)  # reproducible from seed, item and epoch
    assert not torch.equal(first, later)  # fresh randomness every epoch


def test_validation_view_equals_torchvision_resize_and_center_crop(tiny):
    from torchvision.transforms.v2 import functional as TF

    pre = transforms.Preprocess(resize=36, image_size=32, mean=networks.IMAGENET_MEAN, std=networks.IMAGENET_STD)
    for rel in files_of(tiny, "val"):
        image = load_item(tiny, rel).image
        ours = transforms.test_view(image, pre)
        theirs = TF.center_crop(TF.resize(image, [36], antialias=True), [32])
        assert ours.shape == theirs.shape == (3, 32, 32)
        assert torch.allclose(ours, theirs, atol=1e-5), rel


# ---------------------------------------------------------------------------------------------
# the training protocol, called directly
# ---------------------------------------------------------------------------------------------


def test_split_of_works_before_setup_and_follows_the_folders(tiny):
    stage = make_trainer(tiny, setup=False)
    assert stage.split_of("train/brick/brick_0000.jpg") == "train"
    assert stage.split_of("val/grass/grass_0001.jpg") == "val"
    assert stage.split_of("stray.jpg") is None
    assert stage.epochs() == 5


def test_labels_csv_relative_to_the_pipeline_gives_classes_and_splits(tiny, tmp_path):
    rows = ["path,label,split", "train/brick/brick_0000.jpg,wall,train", "train/grass/grass_0000.jpg,lawn,",
            "val/grass/grass_0001.jpg,lawn,val"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    context = StageContext(stage_id="classifier", pipeline_dir=tmp_path, input_root=tiny)
    stage = TrainClassifier(TrainClassifierParams(pretrained=False, labels="labels.csv"), context)
    assert stage.split_of("train/brick/brick_0000.jpg") == "train"
    assert stage.split_of("train/grass/grass_0000.jpg") == "train"  # no split given, val_fraction 0
    assert stage.split_of("val/grass/grass_0001.jpg") == "val"
    assert stage.split_of("train/brick/brick_0001.jpg") is None  # not listed: left out
    torch.manual_seed(0)
    stage.setup(CPU)
    assert stage.classes == ["lawn", "wall"] and stage.net.fc.out_features == 2


def test_validation_batches_count_without_changing_the_model(tiny):
    stage = make_trainer(tiny)
    stage.start_epoch(0)
    stage.consume(batch_of(tiny, files_of(tiny, "train")))
    before = {k: v.clone() for k, v in stage.net.state_dict().items()}
    with torch.no_grad():
        assert stage.consume(batch_of(tiny, files_of(tiny, "val"), split="val")) is None
    after = stage.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    metrics = stage.end_epoch(0)
    assert set(metrics) == {"loss", "train_acc", "val_loss", "val_acc", "lr"}
    assert metrics["val_acc"] in (0.0, 0.25, 0.5, 0.75, 1.0) and metrics["val_loss"] > 0
    assert stage.counters["train_seen"] == 8 and stage.counters["val_seen"] == 4
    stage.start_epoch(1)
    assert "val_acc" not in stage.end_epoch(1)  # no validation batches: no validation keys


def test_state_dict_round_trip_continues_exactly(tiny):
    """What the engine checkpoints (torch.save, weights_only load) resumes to the same weights."""
    train = files_of(tiny, "train")
    a = make_trainer(tiny, optimizer="adamw", lr=1e-3, schedule="cosine", epochs=3)
    a.start_epoch(0)
    a.consume(batch_of(tiny, train[:4]))
    buffer = io.BytesIO()
    torch.save({"stage": a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)["stage"]
    b = make_trainer(tiny, seed=7, optimizer="adamw", lr=1e-3, schedule="cosine", epochs=3)  # other init
    b.load_state_dict(saved)
    for stage in (a, b):
        stage.consume(batch_of(tiny, train[4:]))
        stage.end_epoch(0)
    assert a.counters == b.counters
    for (name, x), (_, y) in zip(a.net.state_dict().items(), b.net.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert a.scheduler.get_last_lr() == b.scheduler.get_last_lr()


def test_a_checkpoint_for_other_classes_is_refused(tiny):
    stage = make_trainer(tiny)
    state = stage.state_dict()
    state["classes"] = ["cat", "dog"]
    with pytest.raises(ConfigError, match="made for classes.*--force"):
        stage.load_state_dict(state)


def test_model_pt_is_plain_data_with_classes_and_preprocessing(tiny, tmp_path):
    stage = make_trainer(tiny)
    (art,) = stage.finalize()
    assert art.relpath == "model.pt"
    doc = torch.load(io.BytesIO(art.data), weights_only=True)
    assert doc["format"] == "imgflow-classifier" and doc["version"] == 1 and doc["model"] == "resnet18"
    assert doc["classes"] == ["brick", "grass"]
    assert doc["preprocess"] == {"resize": 36, "image_size": 32, "mean": list(networks.IMAGENET_MEAN),
                                 "std": list(networks.IMAGENET_STD), "interpolation": "bilinear"}
    assert set(doc["state_dict"]) == set(stage.net.state_dict())
    (tmp_path / "model.pt").write_bytes(art.data)  # the shared loader reads it as a state dict too
    plain = models.load_state_dict(tmp_path / "model.pt")
    assert torch.equal(plain["fc.weight"], stage.net.fc.weight.detach())


# ---------------------------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------------------------


def test_classify_top_k_and_sorted_copies(tiny, tmp_path):
    (tmp_path / "model.pt").write_bytes(make_trainer(tiny).finalize()[0].data)
    context = StageContext(stage_id="classify", pipeline_dir=tmp_path, input_root=tiny)
    stage = Classify(ClassifyParams(weights="model.pt", top_k=5, sort_into_folders=True), context)
    stage.setup(CPU)
    assert stage.decode_hint().size == 36
    rels = files_of(tiny, "val")
    batch = stage.process(batch_of(tiny, rels, split="train"))
    for item, rel in zip(batch.items, rels, strict=True):
        result = item.results["classify"]
        assert len(result["top_k"]) == 2  # at most the number of classes
        assert [t["score"] for t in result["top_k"]] == sorted((t["score"] for t in result["top_k"]), reverse=True)
        assert sum(t["score"] for t in result["top_k"]) == pytest.approx(1.0, abs=1e-5)
        assert result["label"] == result["top_k"][0]["label"] and result["score"] == result["top_k"][0]["score"]
        assert not item.write_image
        (copy,) = item.artifacts
        assert copy.relpath == f"{result['label']}/{rel}" and copy.data == (tiny / rel).read_bytes()
    assert safe_folder("../x") == ".._x" and safe_folder("..") == "_"


@pytest.mark.parametrize("content, needle", [
    (None, "no such file"),
    (b"not a checkpoint", "not a readable PyTorch checkpoint"),
    ("plain", "not an imgflow classifier checkpoint"),
    ("object", "contains Python objects"),
    ("pickle", "contains Python objects"),  # a plain pickle is not "truncated" (issue 10, item 12)
])
def test_classify_refuses_bad_weights_naming_the_file(tmp_path, content, needle):
    path = tmp_path / "model.pt"
    if content == "plain":
        torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    elif content == "object":
        torch.save({"format": "imgflow-classifier", "hook": Path("x")}, path)
    elif content == "pickle":
        path.write_bytes(pickle.dumps({"format": "imgflow-classifier", "hook": Path("x")}))
    elif content is not None:
        path.write_bytes(content)
    stage = Classify(ClassifyParams(weights=str(path)), StageContext(stage_id="classify"))
    assert stage.decode_hint() is None  # no hint; setup reports the problem
    with pytest.raises(ConfigError) as info:
        stage.setup(CPU)
    assert str(path) in str(info.value) and needle in str(info.value) and "fix:" in str(info.value)


# ---------------------------------------------------------------------------------------------
# end to end: real `imgflow run` subprocesses
# ---------------------------------------------------------------------------------------------

SCRATCH = {"use": "train.classifier", "id": "classifier", "pretrained": False, "image_size": 64, "resize": 73,
           "optimizer": "adamw", "lr": 1e-3, "loss_reduction": "mean", "schedule": "cosine", "epochs": 6}


def test_training_from_scratch_beats_chance_and_classify_agrees(shapes, tmp_path):
    out = tmp_path / "train"
    pipeline = write_pipeline(tmp_path / "train.toml", input=shapes, output=out, stages=[SCRATCH],
                              run={"device": "cpu", "batch_size": 16})
    result = run_cli("run", pipeline)
    assert result.returncode == 0, result.stderr
    epochs = read_csv(out / "metrics.csv")
    assert [int(r["epoch"]) for r in epochs] == list(range(6))
    last = epochs[-1]
    assert float(last["val_acc"]) >= 0.75, epochs  # chance is 0.5 on this balanced two-class set
    assert float(last["train_acc"]) >= 0.75 and float(last["images_per_s"]) > 0
    assert float(last["loss"]) < float(epochs[0]["loss"])
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the checkpoint labels the validation images exactly as the last validation pass did
    labelled = tmp_path / "labelled"
    classify = write_pipeline(tmp_path / "classify.toml", input=shapes / "val", output=labelled,
                              stages=[{"use": "classify", "weights": str(out / "model.pt"), "top_k": 2,
                                       "sort_into_folders": True}], run={"device": "cpu"})
    result = run_cli("run", classify)
    assert result.returncode == 0, result.stderr
    records = manifest(labelled)
    assert len(records) == 40
    correct = 0
    for rel, rec in records.items():
        label = rec["results"]["classify"]["label"]
        correct += label == rel.split("/")[0]
        assert (labelled / label / rel).read_bytes() == (shapes / "val" / rel).read_bytes()
    assert correct / len(records) == pytest.approx(float(last["val_acc"]))
    assert not list(labelled.glob("*.jpg"))  # no unsorted copies


def test_resume_after_sigkill_ends_with_the_uninterrupted_model(tmp_path):
    data = tmp_path / "data"
    make_shapes(data, ShapesSpec(train_per_class=12, val_per_class=3, size=40))
    stage = {**SCRATCH, "image_size": 32, "resize": 36, "epochs": 3, "optimizer": "sgd", "momentum": 0.9,
             "lr": 0.01}
    run = {"device": "cpu", "batch_size": 6, "checkpoint_every": 1}

    def pipeline(name: str) -> Path:
        return write_pipeline(tmp_path / f"{name}.toml", input=data, output=tmp_path / name, stages=[stage], run=run)

    whole = run_cli("run", pipeline("whole"))
    assert whole.returncode == 0, whole.stderr
    killed = pipeline("killed")
    checkpoint = tmp_path / "killed" / "checkpoints" / "classifier.pt"
    proc = subprocess.Popen([IMGFLOW, "run", str(killed)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "killed" / "model.pt").exists()
    resumed = run_cli("run", killed)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming 'classifier'" in resumed.stderr
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    assert a["classes"] == b["classes"] and a["epochs"] == b["epochs"] == 3
    assert set(a["state_dict"]) == set(b["state_dict"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert [r["val_acc"] for r in read_csv(tmp_path / "whole" / "metrics.csv")] == \
           [r["val_acc"] for r in read_csv(tmp_path / "killed" / "metrics.csv")]


# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_with_mixed_precision_then_classify_on_the_cpu(tmp_path):
    data = tmp_path / "data"
    make_shapes(data, ShapesSpec(train_per_class=12, val_per_class=4, size=48))
    stage = {**SCRATCH, "image_size": 48, "resize": 52, "epochs": 2, "amp": True}
    out = tmp_path / "train"
    pipe = write_pipeline(tmp_path / "t.toml", input=data, output=out, stages=[stage],
                          run={"device": "cuda", "batch_size": 8})
    result = run_cli("run", pipe)
    assert result.returncode == 0, result.stderr
    epochs = read_csv(out / "metrics.csv")
    assert len(epochs) == 2 and all(np.isfinite(float(r["loss"])) for r in epochs)
    saved = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in saved["state_dict"].values())
    labelled = tmp_path / "labelled"
    classify = write_pipeline(tmp_path / "c.toml", input=data / "val", output=labelled,
                              stages=[{"use": "classify", "weights": str(out / "model.pt")}], run={"device": "cpu"})
    result = run_cli("run", classify)
    assert result.returncode == 0, result.stderr
    assert len(manifest(labelled)) == 8
