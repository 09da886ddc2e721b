"""pipelines/colorize_archive.toml end to end: weights imported into a temporary cache, a real
run through the CLI, a rerun that skips everything, and the offline failure before any image."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from skimage import color

from imgflow import hookimpl
from imgflow.cli import cli
from imgflow.models import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "pipelines" / "colorize_archive.toml"
ARCHIVE = ROOT / "examples" / "archive"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def generated_weights(tmp_path) -> tuple[Path, str]:
    """A SIGGRAPH17 checkpoint with every official key and shape (random init)."""
    import torch

    from imgflow_colorize import networks

    torch.manual_seed(0)
    net = networks.build("siggraph17")
    with torch.no_grad():  # give the random net a visible colour cast so outputs are colourful
        net.model_out[0].bias.copy_(torch.tensor([0.1, 0.08]))
    path = tmp_path / "generated-siggraph17.pth"
    torch.save(net.state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch, generated_weights, imgflow_register):
    """TORCH_HOME in tmp_path and two test models: one importable, one whose URL is offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    path, digest = generated_weights
    offline_url = f"http://127.0.0.1:{closed_port()}/offline-siggraph17.pth"

    class TestModels:
        @hookimpl
        def register_models(self, register):
            register(ModelSpec(name="test-siggraph17", url="http://127.0.0.1:9/test-siggraph17.pth",
                               sha256=digest, license="test", stage="colorize"))
            register(ModelSpec(name="test-offline", url=offline_url, sha256=digest, license="test",
                               stage="colorize"))

    imgflow_register(TestModels(), name="test-models")
    return path, offline_url


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def test_colorize_archive_runs_with_imported_weights_and_reruns_nothing(cache, tmp_path):
    weights, _ = cache
    code, text = invoke("models", "import", "test-siggraph17", weights)
    assert code == 0, text
    code, text = invoke("models", "list", "--json")
    listed = {m["name"]: m for m in json.loads(text)}
    assert listed["test-siggraph17"]["cached"] is True
    assert Path(listed["test-siggraph17"]["path"]).is_relative_to(tmp_path / "torch-home")

    out = tmp_path / "colorized"
    args = ("run", PIPELINE, "-o", out, "-p", 'colorize.weights="test-siggraph17"', "-p", "colorize.model_size=128")
    code, text = invoke(*args)
    assert code == 0, text
    inputs = sorted(p.relative_to(ARCHIVE).as_posix() for p in ARCHIVE.rglob("*") if p.is_file())
    records = {r["input"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert sorted(records) == inputs and all(r["status"] == "done" for r in records.values())
    for rel in inputs:
        src = Image.open(ARCHIVE / rel)
        dst = Image.open(out / records[rel]["outputs"][0])
        assert dst.size == src.size and dst.mode == "RGB", rel
        assert records[rel]["outputs"][0].rsplit(".", 1)[1] == rel.rsplit(".", 1)[1]  # format "same"
        assert records[rel]["results"]["colorize"]["model"] == "siggraph17"
    # lossless outputs keep the scan's luminance (8-bit rounding aside; near black and white a
    # colour can fall outside sRGB and is clipped, as in the reference procedure)
    png_in = np.asarray(Image.open(ARCHIVE / "coins.png").convert("RGB")) / 255.0
    png_out = np.asarray(Image.open(out / "coins.png")) / 255.0
    diff_l = np.abs(color.rgb2lab(png_in)[..., 0] - color.rgb2lab(png_out)[..., 0])
    assert np.percentile(diff_l, 99) < 1.0 and diff_l.mean() < 0.3, (diff_l.mean(), diff_l.max())
    assert np.abs(color.rgb2lab(png_out)[..., 1:]).mean() > 1.0  # and it is in colour

    code, text = invoke(*args)
    assert code == 0 and f"0 done, 0 failed, {len(inputs)} skipped" in text, text


def test_offline_without_weights_fails_before_any_image_with_the_fix(cache, tmp_path):
    _, offline_url = cache
    out = tmp_path / "never"
    code, text = invoke("run", PIPELINE, "-o", out, "-p", 'colorize.weights="test-offline"')
    assert code == 2, text
    assert "test-offline" in text and offline_url in text
    assert "imgflow models import test-offline" in text
    assert str(tmp_path / "torch-home") in text  # the cache path
    assert "Traceback" not in text
    manifest = out / "manifest.jsonl"
    assert not manifest.exists() or manifest.read_text() == ""  # no image was processed


def test_official_models_are_registered_with_their_urls():
    code, text = invoke("models", "list", "--json")
    listed = {m["name"]: m for m in json.loads(text)}
    assert listed["colorize-siggraph17"]["url"].endswith("/siggraph17-df00044c.pth")
    assert listed["colorize-eccv16"]["url"].endswith("/colorization_release_v2-9b330a0b.pth")
    assert listed["colorize-siggraph17"]["sha256_prefix"] == "df00044c"
