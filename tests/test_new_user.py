"""Issue 10, "what a new user hit": everyday options, weights for trying things out, input formats
and empty inputs, the preflight of weights and style files. In-process (click's CliRunner and the
engine); tests/test_new_user_processes.py has the ones that need real processes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import imgflow
from imgflow import StageContext, plugins
from imgflow.cli import cli
from imgflow.testing import write_images
from tests.helpers import write_pipeline


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def manifest(out: Path) -> dict[str, dict]:
    return {r["input"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


@pytest.fixture
def job(tmp_path, test_plugin):
    images = tmp_path / "in"
    write_images(images, 3, size=(24, 32))
    write_images(images / "sub", 1, size=(24, 32), prefix="deep", fmt="PNG")
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out",
                          stages=[{"use": "invert"}], out={"format": "png"}, run={"workers": 1})
    return images, tmp_path / "out", pipe


# ---------------------------------------------------------------- item 19: everyday options


def test_input_option_takes_a_single_file_or_a_glob(job, tmp_path):
    images, out, pipe = job
    code, text = invoke("run", pipe, "-i", images / "img0001.jpg", "-o", tmp_path / "one")
    assert code == 0, text
    assert list(manifest(tmp_path / "one")) == ["img0001.jpg"]
    code, text = invoke("run", pipe, "-i", f"{images}/**/*.png", "-o", tmp_path / "glob")
    assert code == 0, text
    assert list(manifest(tmp_path / "glob")) == ["sub/deep0000.png"]  # mirrored below the glob's folder


def test_run_and_validate_answer_in_json_also_when_they_fail(job):
    images, out, pipe = job
    code, text = invoke("validate", pipe, "--json")
    doc = json.loads(text)
    assert code == 0 and doc["ok"] and doc["stages"] == [{"id": "invert", "use": "invert"}]
    assert "**/*.ppm" in doc["include"] and doc["output"] == str(out)
    code, text = invoke("run", pipe, "--json")
    doc = json.loads(text)  # stdout holds the JSON document only
    assert code == 0 and doc["ok"] and doc["counts"] == {"done": 4, "failed": 0, "skipped": 0, "failed_before": 0}
    code, text = invoke("run", pipe, "--json", "-p", "invert.nope=1")
    doc = json.loads(text)
    assert code == 2 and not doc["ok"] and doc["exit_code"] == 2
    assert doc["problems"][0]["where"].endswith("nope") and "unknown key" in doc["problems"][0]["problem"]


def test_dry_run_lists_what_would_run_and_why_and_writes_nothing(job):
    images, out, pipe = job
    code, text = invoke("run", pipe, "--dry-run")
    assert code == 0 and "would process 4, skip 0" in text and "img0000.jpg  (new)" in text
    assert not out.exists()
    assert invoke("run", pipe)[0] == 0
    (images / "img0002.jpg").write_bytes((images / "img0001.jpg").read_bytes())  # changed content
    code, text = invoke("run", pipe, "--dry-run", "--json")
    doc = json.loads(text)
    why = {item["input"]: (item["action"], item["reason"]) for item in doc["items"]}
    assert why["img0002.jpg"] == ("process", "the file changed")
    assert why["img0000.jpg"][0] == "skip" and "unchanged" in why["img0000.jpg"][1]
    assert doc["counts"] == {"process": 1, "skip": 3}
    assert len(manifest(out)) == 4  # the dry run recorded nothing


def test_status_accepts_the_pipeline_file(job):
    images, out, pipe = job
    invoke("run", pipe)
    code, text = invoke("status", pipe)
    assert code == 0 and text.startswith(f"{out}: 4 items")


def test_stages_show_lists_the_choices_of_literal_parameters():
    code, text = invoke("stages", "show", "resize")
    assert code == 0 and 'interpolation : one of "bilinear", "bicubic", "nearest", "area"' in text
    code, text = invoke("stages", "show", "train.classifier", "--json")
    params = {p["name"]: p for p in json.loads(text)["params"]}
    assert params["model"]["choices"] == ["resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0"]
    assert params["optimizer"]["choices"] == ["sgd", "adamw"] and "choices" not in params["epochs"]


def test_plugins_exits_1_when_a_plugin_fails_and_names_a_typo_in_the_selection(monkeypatch):
    monkeypatch.setenv("IMGFLOW_LOAD_PLUGINS", "augment,agument")
    plugins.reset()
    try:
        code, text = invoke("plugins")
        assert code == 1
        assert "IMGFLOW_LOAD_PLUGINS names 'agument', which is not an installed plugin" in text
        assert "did you mean 'augment'?" in text
        code, text = invoke("plugins", "--json")
        assert code == 1 and json.loads(text)["failed"][0]["name"] == "agument"
    finally:
        monkeypatch.delenv("IMGFLOW_LOAD_PLUGINS")
        plugins.reset()
    assert invoke("plugins")[0] == 0


def test_manifest_and_summary_get_the_permissions_of_the_images(job):
    images, out, pipe = job
    old = os.umask(0o022)
    try:
        assert invoke("run", pipe)[0] == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (out / "img0000.png", out / "manifest.jsonl",
                                                              out / "run-summary.json")}
    assert set(modes.values()) == {0o644}, modes


# ---------------------------------------------------------------- item 18: formats, empty inputs, totals


def test_default_include_is_every_readable_format_and_each_one_decodes(tmp_path):
    from PIL import Image as PILImage

    from imgflow.io.decode import ALLOWED_FORMATS, DecodeLimits, decode_file
    from imgflow.io.source import DEFAULT_INCLUDE, READABLE_EXTENSIONS, walk_inputs

    PILImage.init()
    registered = {f: sorted(e[1:] for e, v in PILImage.registered_extensions().items() if v == f)
                  for f in ALLOWED_FORMATS}
    assert {f: sorted(e) for f, e in READABLE_EXTENSIONS.items()} == registered
    rgb = Image.fromarray(np.full((6, 8, 3), 120, np.uint8))
    modes = {"pbm": "1", "pgm": "L", "pfm": "F"}
    formats = {ext: fmt for fmt, exts in READABLE_EXTENSIONS.items() for ext in exts}
    for ext, fmt in formats.items():
        image = rgb.convert(modes.get(ext, "RGB"))
        extra = {"append_images": [rgb]} if fmt == "MPO" else {}
        image.save(tmp_path / f"a.{ext}", format=None if ext == "pfm" else fmt, **extra)
        assert decode_file(tmp_path / f"a.{ext}", DecodeLimits(memory_mb=None)).pixels.shape[:2] == (6, 8)
    found = [sf.relpath for sf in walk_inputs(tmp_path, include=DEFAULT_INCLUDE)]
    assert sorted(found) == sorted(f"a.{ext}" for ext in formats)


def test_an_empty_or_unmatched_input_warns_and_exits_66(tmp_path, test_plugin):
    images = tmp_path / "share"
    images.mkdir()
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out", stages=[{"use": "invert"}])
    code, text = invoke("validate", pipe)
    assert code == 0 and "warning: input folder" in text and "is empty" in text
    code, text = invoke("run", pipe)
    assert code == 66 and "is empty" in text and "0 done, 0 failed, 0 skipped" in text
    (images / "notes.txt").write_text("not an image")
    code, text = invoke("run", pipe)
    assert code == 66 and "no file matches include" in text
    write_images(images, 1)
    assert invoke("run", pipe)[0] == 0
    assert invoke("run", pipe)[0] == 0  # everything skipped is not "empty"


def test_progress_total_is_counted_from_a_snapshot_of_the_store(job):
    from imgflow.engine.preview import WorkCounter
    from imgflow.engine.progress import Progress
    from imgflow.engine.record import Recorder
    from imgflow.engine.results import RunOptions
    from imgflow.state import ItemRecord, StateStore

    images, out, pipe = job
    assert invoke("run", pipe, "-i", images / "img0000.jpg")[0] == 0
    loaded = imgflow.validate_pipeline(pipe)
    fingerprint = loaded.fingerprint(loaded.build_stages())
    with StateStore(out) as store:
        recorder = Recorder(store, "r", fingerprint, warn=print)
        counter = WorkCounter(loaded, store, fingerprint, RunOptions(), recorder)
        for path in sorted(images.rglob("*.*"))[1:]:  # recorded by "this run" before the count runs
            store.record(ItemRecord(input=path.relative_to(images).as_posix(), status="done", size=1, mtime_ns=1,
                                    content_hash=None, fingerprint=fingerprint, run_id="r", outputs=[], error=None,
                                    results={}, timings={}, meta={}))
        store.flush()
        counter.thread.start()
        counter.thread.join(timeout=60)
        counter.stop()
    assert counter.total == 3 and recorder.expected == 3  # img0000.jpg was done before the run
    bar = Progress("x", show=True)
    bar.set_total(3)
    assert bar._bar.total == 3  # noqa: SLF001 - the tqdm bar, so an ETA shows
    bar.close()


# ---------------------------------------------------------------- items 14, 15: weights for trying things out


def test_models_list_shows_every_size_and_licence():
    code, text = invoke("models", "list")
    assert code == 0 and "LICENCE" in text.splitlines()[0]
    rows = [row for row in text.splitlines()[1:] if not row.startswith("pinned on first use:")]
    assert rows and all(" ? " not in row and ("BSD-" in row or "Apache-2.0" in row) for row in rows), text
    code, text = invoke("models", "list", "--json")
    for row in json.loads(text):
        assert (row["size"] or row["approx_size"]) and row["license"] and row["random_layout"], row["name"]


def test_a_random_weights_checkpoint_runs_and_is_labelled_untrained(tmp_path):
    """`imgflow models random` writes a registered model's layout; it loads through the real
    path, and the manifest and the summary line say the weights are untrained."""
    code, text = invoke("models", "random", "segment-lraspp_mobilenet_v3_large", "-o", tmp_path / "seg.pth")
    assert code == 0 and "untrained random weights" in text
    images = tmp_path / "in"
    write_images(images, 1, size=(40, 48))
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out", out={"format": "png"},
                          stages=[{"use": "segment", "weights": str(tmp_path / "seg.pth"), "resize": 32}],
                          run={"workers": 1})
    code, text = invoke("run", pipe)
    assert code == 0, text
    assert "[UNTRAINED random weights in segment:" in text
    record = manifest(tmp_path / "out")["img0000.jpg"]["results"]
    assert record["segment"]["weights"] == f"{tmp_path / 'seg.pth'} (untrained)"


def test_colorize_takes_random_weights(tmp_path):
    from imgflow.testing import make_batch
    from imgflow_colorize.stage import Colorize, ColorizeParams

    def stage() -> Colorize:
        return Colorize(ColorizeParams(model="eccv16", model_size=64, weights="random"),
                        StageContext(stage_id="colorize", seed=3, pipeline_dir=tmp_path))

    first = stage()
    assert first.preflight() == [] and first.fingerprint()["untrained"] is True
    first.setup(torch.device("cpu"))
    with torch.inference_mode():
        out = first.process(make_batch([(24, 32)]))
    assert out.items[0].image.shape == (3, 24, 32)
    assert out.items[0].results["colorize"]["weights"] == f"random@{first.random_seed()} (untrained)"
    second = stage()
    second.setup(torch.device("cpu"))  # the same seed gives the same untrained network
    pairs = zip(first.net.state_dict().values(), second.net.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_classifier_stages_take_random_weights(tmp_path):
    from imgflow.testing import make_batch
    from imgflow_finetune.classify import Classify, ClassifyParams
    from imgflow_finetune.train import TrainClassifier, TrainClassifierParams

    stage = Classify(ClassifyParams(weights="random", classes=["cat", "dog", "owl"]),
                     StageContext(stage_id="classify", pipeline_dir=tmp_path))
    assert stage.preflight() == []
    stage.setup(torch.device("cpu"))
    with torch.inference_mode():
        out = stage.process(make_batch([(40, 50)]))
    result = out.items[0].results["classify"]
    assert result["label"] in ("cat", "dog", "owl") and result["weights"].endswith("(untrained)")
    with pytest.raises(Exception, match="only used with weights"):
        ClassifyParams(weights="model.pt", classes=["a", "b"])
    trainer = TrainClassifier(TrainClassifierParams(weights="random"), StageContext(stage_id="t", input_root=tmp_path))
    facts = trainer.fingerprint()
    assert facts["backbone"]["untrained"] is True and trainer.preflight() == []
    first, second = trainer._pretrained_backbone(), trainer._pretrained_backbone()  # noqa: SLF001
    pairs = zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


# ---------------------------------------------------------------- item 12 (part): validate, resize


def test_validate_checks_weights_and_style_files_and_names_the_download(tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    write_images(images, 1)
    cases = {
        "missing weights": ({"use": "detect", "weights": "nowhere.pth"}, 2, "nowhere.pth does not exist"),
        "missing style": ({"use": "style.optimize", "style": "gone.jpg", "vgg_weights": "random"}, 2,
                          "style image"),
        "not cached": ({"use": "segment"}, 0, "imgflow models pull segment-lraspp_mobilenet_v3_large"),
    }
    for name, (stage, want, needle) in cases.items():
        pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out", stages=[stage])
        code, text = invoke("validate", pipe)
        assert code == want and needle in text, (name, text)
    assert "imgflow models import segment-lraspp_mobilenet_v3_large FILE" in text


def test_resize_sizes_no_image_could_take_are_refused_and_one_pixel_wide_outputs_are_right(tmp_path):
    from imgflow_augment import ops

    images = tmp_path / "in"
    write_images(images, 1)
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out",
                          stages=[{"use": "resize", "size": 10_000_000}])
    code, text = invoke("validate", pipe)
    assert code == 2 and "more than the 100,000,000" in text and "fix:" in text
    rows = torch.linspace(0, 1, 120).view(1, 1, 120, 1).expand(1, 3, 120, 90).contiguous()
    column = ops.resize(rows, (30, 1))
    reference = np.asarray(Image.fromarray(rows[0, 0].numpy()).resize((1, 30), Image.BILINEAR))
    assert float(column[0, 0].std()) > 0.2  # not one constant value down the column
    assert np.abs(column[0, 0].numpy() - reference).max() < 1e-4


# ---------------------------------------------------------------- items 13, 20: the Python API, code in fingerprints


def test_run_pipeline_from_python_with_overrides(job, tmp_path):
    images, out, pipe = job
    result = imgflow.run_pipeline(pipe, input=images / "sub", output=tmp_path / "api", echo=lambda m: None)
    assert result.exit_code == 0 and result.counts == {"done": 1, "failed": 0, "skipped": 0, "failed_before": 0}
    assert (tmp_path / "api" / "deep0000.png").is_file()
    with pytest.raises(imgflow.ConfigError) as info:
        imgflow.run_pipeline(pipe, params={"invert.strength": 2})
    assert info.value.exit_code == 2 and "unknown key" in str(info.value)


def test_fingerprint_code_makes_a_plugin_edit_rerun_what_it_made(tmp_path, imgflow_register, monkeypatch):
    import importlib
    import sys

    package = tmp_path / "devplugin"
    package.mkdir()
    source = ("from imgflow import Stage, hookimpl\n"
              "class Dev(Stage):\n    name = 'dev'\n    fingerprint_code = FLAG\n"
              "    def process(self, batch):\n        return batch  # v1\n"
              "@hookimpl\ndef register_stages(register):\n    register(Dev)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    images = tmp_path / "in"
    write_images(images, 1)
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out", stages=[{"use": "dev"}])
    prints = {}
    for flag in ("False", "True"):
        for version in ("v1", "v2"):
            (package / "__init__.py").write_text(source.replace("FLAG", flag).replace("v1", version))
            sys.modules.pop("devplugin", None)
            module = importlib.import_module("devplugin")
            imgflow_register(module, name=f"dev-{flag}-{version}")
            loaded = imgflow.validate_pipeline(pipe)
            prints[flag, version] = loaded.fingerprint(loaded.build_stages())
            plugins.unregister_plugin(f"dev-{flag}-{version}")
    assert prints["False", "v1"] == prints["False", "v2"]  # the default: only versions count
    assert prints["True", "v1"] != prints["True", "v2"]  # opted in: the edit counts
    assert imgflow.code_hash(package) == imgflow.code_hash(module)
