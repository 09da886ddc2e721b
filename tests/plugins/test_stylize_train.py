"""Tests for ``train.fast_style`` and the stylize pipelines end to end (plugins/imgflow_stylize).

The trainer is tested directly (setup / consume / end_epoch / state_dict / finalize, as the engine
calls them) and through the CLI: the shipped pipelines with -p overrides (random VGG, 32-48 px
crops, width 8), a training run killed with SIGKILL in a real subprocess and resumed to the same
weights as an uninterrupted run, and style.optimize with VGG19 weights generated here and
imported into a temporary TORCH_HOME cache. No network.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
from click.testing import CliRunner
from imgflow_stylize import networks
from imgflow_stylize.fast import StyleFast, StyleFastParams
from imgflow_stylize.train import TrainFastStyle, TrainFastStyleParams, center_crop
from PIL import Image

from imgflow import StageContext, StageKind, hookimpl
from imgflow.batch import Batch
from imgflow.cli import cli
from imgflow.models import ModelSpec
from imgflow.stage import DecodeHint
from imgflow.testing import make_item
from tests.helpers import write_pipeline

REPO = Path(__file__).resolve().parents[2]
PHOTOS = REPO / "examples" / "photos"
CPU = torch.device("cpu")
IMGFLOW = str(Path(sys.executable).parent / "imgflow")  # the console script: a real process
TINY = ["-p", "fast_style.vgg_weights=random", "-p", "fast_style.image_size=32", "-p", "fast_style.width=8"]


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def style_file(tmp_path_factory) -> Path:
    ys, xs = np.mgrid[0:48, 0:48]
    pixels = np.stack([(np.sin(xs / 1.5) > 0) * 240, (ys // 6 % 2) * 220, ((xs + ys) // 9 % 2) * 180], -1)
    path = tmp_path_factory.mktemp("style") / "stripes.png"
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def content_folder(folder: Path, count: int) -> Path:
    """``count`` generated photos of mixed sizes (the trainer resizes and crops them itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    for i in range(count):
        h, w = (40 + 7 * (i % 3), 56 - 5 * (i % 4))
        base = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.3, 1.0, 3)
        pixels = (base + rng.normal(0, 25, (h, w, 3))).clip(0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"c{i:02d}.png")
    return folder


def trainer(style: Path, seed: int = 0, **params) -> TrainFastStyle:
    """A set-up trainer the way the engine makes one: global RNG seeded, then setup()."""
    params = {"style": str(style), "image_size": 32, "width": 8, "vgg_weights": "random", **params}
    stage = TrainFastStyle(TrainFastStyleParams(**params), StageContext(stage_id="fast_style"))
    torch.manual_seed(seed)
    stage.setup(CPU)
    return stage


def batches(count: int, size: int = 2) -> list[Batch]:
    """Distinct generated batches of mixed sizes."""
    out = []
    for b in range(count):
        items = [make_item(36 + 4 * i, 50 - 3 * i, source=f"b{b}_{i}.png", seed=100 * b + i) for i in range(size)]
        out.append(Batch(items=items))
    return out


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def load_plain(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------
# the trainer, called as the engine calls it
# ---------------------------------------------------------------------------------------------


def test_a_short_training_run_lowers_the_loss(style_file):
    stage = trainer(style_file)
    probe = batches(1)[0]
    with torch.no_grad():
        before = float(stage.compute_losses(stage.content_batch(probe))["total_loss"])
    stage.start_epoch(0)
    steps = [stage.consume(b) for b in batches(6) * 2]
    with torch.no_grad():
        after = float(stage.compute_losses(stage.content_batch(probe))["total_loss"])
    assert after < 0.9 * before, (before, after)
    assert all(set(s) == {"content_loss", "style_loss", "total_loss"} for s in steps)
    assert all(isinstance(v, float) for s in steps for v in s.values())
    assert steps[-1]["total_loss"] < steps[0]["total_loss"]
    epoch = stage.end_epoch(0)
    assert epoch["total_loss"] == pytest.approx(np.mean([s["total_loss"] for s in steps]))
    assert stage.steps == 12


def test_losses_follow_the_recipe(style_file):
    """Content at relu2_2 x 1e5, style = sum over the four layers of Gram MSEs x 1e10."""
    from imgflow_stylize import losses
    from torch.nn import functional as F

    stage = trainer(style_file)
    x = stage.content_batch(batches(1)[0])
    with torch.no_grad():
        found = stage.compute_losses(x)
        y = stage.net(x)
        fy = networks.vgg16_slices(stage.vgg, networks.imagenet_normalize(y / 255))
        fx = networks.vgg16_slices(stage.vgg, networks.imagenet_normalize(x / 255))
    assert len(fy) == 4 and fy[1].shape[1] == 128  # relu2_2 has 128 channels
    content = 1e5 * F.mse_loss(fy[1], fx[1])
    grams = stage.style_grams
    style = 1e10 * sum(F.mse_loss(losses.gram(a), g.expand(2, -1, -1)) for a, g in zip(fy, grams, strict=True))
    assert float(found["content_loss"]) == pytest.approx(float(content), rel=1e-5)
    assert float(found["style_loss"]) == pytest.approx(float(style), rel=1e-5)
    assert float(found["total_loss"]) == pytest.approx(float(content + style), rel=1e-5)


def test_state_dict_resumes_exactly_and_loads_with_weights_only(style_file):
    data = batches(4)
    first = trainer(style_file)
    for b in data[:2]:
        first.consume(b)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)  # as the engine reads it
    went_on = [first.consume(b) for b in data[2:]]

    second = trainer(style_file, seed=123)  # another initialisation: the state must replace it
    second.load_state_dict(saved)
    assert second.steps == 2
    resumed = [second.consume(b) for b in data[2:]]
    assert resumed == went_on
    for key, value in first.net.state_dict().items():
        assert torch.equal(value, second.net.state_dict()[key]), key
    assert first.end_epoch(0) == second.end_epoch(0)


def test_validation_batches_are_measured_not_trained(style_file):
    stage = trainer(style_file)
    stage.start_epoch(0)
    stage.consume(batches(1)[0])
    weights = {k: v.clone() for k, v in stage.net.state_dict().items()}
    val = batches(1, size=3)[0]
    val.split = "val"
    with torch.no_grad():
        assert stage.consume(val) is None
    assert all(torch.equal(v, stage.net.state_dict()[k]) for k, v in weights.items())
    metrics = stage.end_epoch(0)
    assert set(metrics) == {"content_loss", "style_loss", "total_loss", "val_content_loss", "val_style_loss",
                            "val_total_loss"}
    stage.start_epoch(1)
    assert stage.end_epoch(1) == {}  # sums start afresh every epoch


def test_finalize_writes_a_plain_state_dict_that_style_fast_loads(style_file, tmp_path):
    stage = trainer(style_file, output_name="styles/stripes.pth")
    stage.consume(batches(1)[0])
    (art,) = stage.finalize()
    assert art.relpath == "styles/stripes.pth" and art.data is not None
    path = tmp_path / "stripes.pth"
    path.write_bytes(art.data)
    state = load_plain(path)
    assert len(state) == 62 and all(v.device.type == "cpu" for v in state.values())
    fast = StyleFast(StyleFastParams(weights=str(path), width=8), StageContext(stage_id="style.fast"))
    fast.setup(CPU)
    item = make_item(45, 31)
    expected = networks.stylize_any_size(stage.net.eval(), item.image.unsqueeze(0) * 255)[0] / 255
    with torch.inference_mode():
        fast.process(Batch(items=[item]))
    assert torch.allclose(item.image, expected, atol=1e-5)


def test_content_batch_resizes_the_shorter_edge_and_centre_crops(style_file):
    from torch.nn import functional as F

    stage = trainer(style_file)
    item = make_item(40, 60)
    x = stage.content_batch(Batch(items=[item]))
    assert x.shape == (1, 3, 32, 32) and float(x.max()) <= 255.0 and float(x.max()) > 1.0
    resized = F.interpolate(item.image[None], size=(32, 48), mode="bilinear", antialias=True) * 255
    assert torch.allclose(x, resized[..., :, 8:40], atol=1e-4)
    odd = center_crop(torch.zeros(1, 3, 33, 36), 32)
    assert odd.shape == (1, 3, 32, 32)


def test_trainer_params_defaults_follow_the_spec():
    p = TrainFastStyleParams(style="s.jpg")
    assert (p.image_size, p.epochs, p.lr, p.content_weight, p.style_weight, p.width) == (256, 2, 1e-3, 1e5, 1e10, 32)
    assert p.output_name == "style.pth" and p.vgg_weights is None and p.style_size is None
    for bad in ({"output_name": "../x.pth"}, {"output_name": "/abs/x.pth"}, {"output_name": "x.txt"},
                {"width": 64}, {"epochs": 0}, {"image_size": 8}, {"style": " "}):
        with pytest.raises(pydantic.ValidationError):
            TrainFastStyleParams(**{"style": "s.jpg", **bad})
    assert TrainFastStyle.consumes is True and TrainFastStyle.kind is StageKind.TRAIN
    stage = TrainFastStyle(TrainFastStyleParams(style="s.jpg", epochs=5), StageContext(stage_id="t"))
    assert stage.epochs() == 5 and stage.split_of("any/file.jpg") == "train"
    # JPEGs may be decoded at a reduced scale as long as the shorter edge keeps image_size pixels
    assert stage.decode_hint() == DecodeHint(edge="shorter", size=256)


# ---------------------------------------------------------------------------------------------
# end to end through the CLI
# ---------------------------------------------------------------------------------------------


def test_shipped_pipelines_train_then_stylise_the_gallery(tmp_path, stylize_plugin):
    trained = tmp_path / "training"
    code, text = invoke("run", REPO / "pipelines" / "train_style.toml", "-o", trained, "--device", "cpu", *TINY)
    assert code == 0, text
    assert (trained / "style.pth").is_file() and (trained / "checkpoints" / "fast_style.pt").is_file()
    assert (trained / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = (trained / "steps.csv").read_text().splitlines()
    assert steps[0].startswith("epoch,step") and "total_loss" in steps[0]
    assert len(steps) == 1 + 2  # 4 photos, batches of 4, 2 epochs: two steps
    records = [json.loads(line) for line in (trained / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["input"] for r in records if r.get("status") == "done") == sorted(p.name for p in PHOTOS.iterdir())
    # a finished training is not redone
    code, text = invoke("run", REPO / "pipelines" / "train_style.toml", "-o", trained, "--device", "cpu", *TINY)
    assert code == 0 and "already finished" in text, text

    gallery = tmp_path / "gallery"
    code, text = invoke("run", REPO / "pipelines" / "stylize_gallery.toml", "-o", gallery, "--device", "cpu",
                        "-p", f"stylize.weights={json.dumps(str(trained / 'style.pth'))}", "-p", "stylize.width=8")
    assert code == 0, text
    for photo in PHOTOS.iterdir():
        out = Image.open(gallery / photo.name)
        assert out.size == Image.open(photo).size and out.mode == "RGB"
        assert np.abs(np.asarray(out, dtype=float) - np.asarray(Image.open(photo).convert("RGB"))).mean() > 5


def test_gallery_without_trained_weights_fails_with_the_fix(tmp_path, stylize_plugin):
    code, text = invoke("run", REPO / "pipelines" / "stylize_gallery.toml", "-o", tmp_path / "g", "--device", "cpu",
                        "-p", f"stylize.weights={json.dumps(str(tmp_path / 'none.pth'))}")
    assert code == 2, text
    assert str(tmp_path / "none.pth") in text and "train_style.toml" in text and "Traceback" not in text


def test_training_resumes_after_being_killed(tmp_path, style_file, stylize_plugin):
    """SIGKILL a real training process after its first checkpoint; the rerun resumes from it and
    ends with exactly the weights of an uninterrupted run."""
    images = content_folder(tmp_path / "content", 16)

    def pipeline(name: str) -> Path:
        return write_pipeline(tmp_path / f"{name}.toml", input=images, output=tmp_path / name,
                              run={"batch_size": 2, "device": "cpu", "checkpoint_every": 1, "seed": 3},
                              stages=[{"use": "train.fast_style", "id": "fast_style", "style": str(style_file),
                                       "image_size": 48, "width": 8, "epochs": 2, "vgg_weights": "random"}])

    code, text = invoke("run", pipeline("reference"))
    assert code == 0, text

    killed = pipeline("killed")
    checkpoint = tmp_path / "killed" / "checkpoints" / "fast_style.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([IMGFLOW, "run", str(killed)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert checkpoint.exists(), proc.communicate()[0].decode(errors="replace") if proc.poll() is not None else ""
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["cursor"]["finished"] is False and saved["cursor"]["step"] < 16  # killed mid-training
    assert not (tmp_path / "killed" / "style.pth").exists()

    code, text = invoke("run", killed)
    assert code == 0, text
    assert "resuming" in text
    reference = load_plain(tmp_path / "reference" / "style.pth")
    resumed = load_plain(tmp_path / "killed" / "style.pth")
    assert reference.keys() == resumed.keys()
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), key
    logged = [int(line.split(",")[1]) for line in (tmp_path / "killed" / "steps.csv").read_text().splitlines()[1:]]
    # every step logged exactly once, across the kill and the resume
    assert logged == list(range(1, 17))


# ---------------------------------------------------------------------------------------------
# style.optimize through the CLI, with VGG19 weights in a temporary cache
# ---------------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def vgg_cache(tmp_path, monkeypatch, stylize_plugin, imgflow_register):
    """TORCH_HOME in tmp_path; a generated VGG19 features checkpoint registered as one test model
    (to be imported) and a second test model that is neither cached nor downloadable."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    features = networks.init_vgg_random(networks.build_vgg_features("vgg19", networks.VGG19_DEPTH), seed=4)
    path = tmp_path / "generated-vgg19.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    offline = f"http://127.0.0.1:{closed_port()}/vgg19-offline.pth"

    class TestModels:
        @hookimpl
        def register_models(self, register):
            register(ModelSpec(name="test-vgg19", url="http://127.0.0.1:9/test-vgg19.pth", sha256=digest,
                               license="test", stage="style.optimize"))
            register(ModelSpec(name="test-vgg19-offline", url=offline, sha256=digest, license="test",
                               stage="style.optimize"))

    imgflow_register(TestModels(), name="test-stylize-models")
    return path, offline


def optimize_pipeline(tmp_path: Path, style: Path, vgg: str) -> Path:
    images = tmp_path / "photos"
    images.mkdir(exist_ok=True)
    for name, (h, w) in {"wide.png": (36, 60), "tall.png": (50, 34)}.items():
        Image.fromarray(make_item(h, w).image.mul(255).byte().permute(1, 2, 0).numpy()).save(images / name)
    return write_pipeline(tmp_path / "optimize.toml", input=images, output=tmp_path / "stylised",
                          out={"format": "png"}, run={"batch_size": 2, "device": "cpu"},
                          stages=[{"use": "style.optimize", "id": "stylize", "style": str(style), "size": 32,
                                   "steps": 3, "vgg_weights": vgg}])


def test_style_optimize_runs_through_the_cli_with_imported_weights(tmp_path, style_file, vgg_cache):
    weights, _ = vgg_cache
    code, text = invoke("models", "import", "test-vgg19", weights)
    assert code == 0, text
    code, text = invoke("run", optimize_pipeline(tmp_path, style_file, "test-vgg19"))
    assert code == 0, text
    lines = (tmp_path / "stylised" / "manifest.jsonl").read_text().splitlines()
    records = {r["input"]: r for r in map(json.loads, lines)}
    for name, size in {"wide.png": (60, 36), "tall.png": (34, 50)}.items():
        assert records[name]["status"] == "done"
        assert Image.open(tmp_path / "stylised" / name).size == size
        found = records[name]["results"]["stylize"]
        assert set(found) >= {"content_loss", "style_loss", "tv_loss", "total_loss", "steps"}
        assert found["steps"] == 3 and found["total_loss"] > 0


def test_style_optimize_offline_without_weights_exits_2_with_the_import_hint(tmp_path, style_file, vgg_cache):
    _, offline_url = vgg_cache
    pipe = optimize_pipeline(tmp_path, style_file, "test-vgg19-offline")
    code, text = invoke("run", pipe)
    assert code == 2, text
    assert offline_url in text and "imgflow models import test-vgg19-offline" in text and "Traceback" not in text
    manifest = tmp_path / "stylised" / "manifest.jsonl"
    assert not manifest.exists() or manifest.read_text() == ""
