"""End-to-end runs through the CLI (click's CliRunner, in-process, with the test plugin)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imgflow.cli import cli
from imgflow.testing import write_images
from tests.helpers import write_pipeline


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def manifest(out: Path) -> dict[str, dict]:
    lines = (out / "manifest.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len({r["input"] for r in records}) == len(records), "one record per input"
    return {r["input"]: r for r in records}


@pytest.fixture
def job(tmp_path, test_plugin):
    """Six images in a two-level tree and a pipeline inverting them into out/."""
    images = tmp_path / "in"
    write_images(images, 4)
    write_images(images / "sub" / "deeper", 2, prefix="deep", fmt="PNG")
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out",
                          stages=[{"use": "invert"}, {"use": "tag", "label": "a"}], out={"format": "png"},
                          run={"batch_size": 4})
    return images, tmp_path / "out", pipe


def test_run_writes_mirrored_outputs_and_a_manifest(job):
    images, out, pipe = job
    code, text = invoke("run", pipe)
    assert code == 0, text
    assert "6 done, 0 failed, 0 skipped" in text
    records = manifest(out)
    assert sorted(records) == ["img0000.jpg", "img0001.jpg", "img0002.jpg", "img0003.jpg",
                               "sub/deeper/deep0000.png", "sub/deeper/deep0001.png"]
    deep = records["sub/deeper/deep0000.png"]
    assert deep["status"] == "done" and deep["outputs"] == ["sub/deeper/deep0000.png"]
    assert deep["results"]["tag"]["label"] == "a"
    assert set(deep["timings"]) >= {"decode_s", "stages_s", "write_s"}
    # the pixels really are inverted (PNG in, PNG out: lossless)
    src = np.asarray(Image.open(images / "sub/deeper/deep0000.png").convert("RGB"), dtype=np.int16)
    dst = np.asarray(Image.open(out / "sub/deeper/deep0000.png"), dtype=np.int16)
    assert np.abs((255 - src) - dst).max() <= 1
    summary = json.loads((out / "run-summary.json").read_text())
    assert summary["counts"]["done"] == 6, summary
    assert not list(out.rglob("*imgflow-tmp*"))


def test_rerun_skips_everything_then_changes_run_again(job):
    images, out, pipe = job
    assert invoke("run", pipe)[0] == 0
    code, text = invoke("run", pipe)
    assert code == 0 and "0 done, 0 failed, 6 skipped" in text
    first = manifest(out)
    # a changed file runs again; a touched-but-identical one does not
    write_images(images, 1, prefix="img", size=(30, 30))  # rewrites img0000.jpg with new content
    os.utime(images / "img0001.jpg", ns=(1, 1))
    code, text = invoke("run", pipe)
    assert "1 done, 0 failed, 5 skipped" in text, text
    assert manifest(out)["img0000.jpg"]["run_id"] != first["img0000.jpg"]["run_id"]
    # a changed parameter runs everything again
    code, text = invoke("run", pipe, "-p", "tag.label=\"b\"")
    assert "6 done" in text
    assert manifest(out)["img0002.jpg"]["results"]["tag"]["label"] == "b"
    # --force redoes everything even when nothing changed
    assert "6 done" in invoke("run", pipe, "-p", "tag.label=\"b\"", "--force")[1]


def test_a_failing_item_fails_alone_and_retry_failed_redoes_only_it(tmp_path, test_plugin):
    images = tmp_path / "in"
    write_images(images, 5)
    (images / "img0002.jpg").rename(images / "boom.jpg")
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out",
                          stages=[{"use": "fail_on", "marker": "boom"}, {"use": "tag"}], run={"batch_size": 8})
    code, text = invoke("run", pipe)
    assert code == 1, text
    assert "4 done, 1 failed" in text and "failed boom.jpg: [stage_error] RuntimeError: refusing boom.jpg" in text
    records = manifest(tmp_path / "out")
    assert records["boom.jpg"]["status"] == "failed"
    assert records["boom.jpg"]["error"]["code"] == "stage_error"
    assert all(r["status"] == "done" for k, r in records.items() if k != "boom.jpg")
    # a plain rerun leaves the failure alone; --retry-failed runs exactly it
    assert "0 done, 0 failed, 5 skipped" in invoke("run", pipe)[1]
    code, text = invoke("run", pipe, "--retry-failed", "-p", "fail_on.marker=\"nothing\"")
    assert code == 0 and "1 done, 0 failed" in text, text


def test_fan_out_writes_variants_and_one_record_per_input(tmp_path, test_plugin):
    images = tmp_path / "in"
    write_images(images, 2, size=(20, 40))
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out",
                          stages=[{"use": "split"}, {"use": "tag"}], out={"format": "png"})
    assert invoke("run", pipe)[0] == 0
    rec = manifest(tmp_path / "out")["img0000.jpg"]
    assert rec["outputs"] == ["img0000_left.png", "img0000_right.png"]
    assert set(rec["results"]["variants"]) == {"_left", "_right"}
    assert Image.open(tmp_path / "out" / "img0000_left.png").size == (20, 20)


def test_consuming_stage_receives_every_item_and_writes_its_artefact(tmp_path, test_plugin):
    images = tmp_path / "in"
    write_images(images, 3)
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out", stages=[{"use": "collect"}])
    assert invoke("run", pipe)[0] == 0
    seen = json.loads((tmp_path / "out" / "collect" / "seen.json").read_text())
    assert seen == ["img0000.jpg", "img0001.jpg", "img0002.jpg"]
    # a finished training is not redone; --force trains again over the whole stream
    code, output = invoke("run", pipe)
    assert code == 0 and "already finished" in output
    assert "3 done" in invoke("run", pipe, "--force")[1]


def test_a_stage_that_needs_grad_gets_autograd_and_its_neighbours_still_run(tmp_path, test_plugin):
    images = tmp_path / "in"
    write_images(images, 2, fmt="PNG")
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out", out={"format": "png"},
                          stages=[{"use": "invert", "id": "inv1"}, {"use": "grad_half", "id": "half"},
                                  {"use": "invert", "id": "inv2"}])
    assert invoke("run", pipe)[0] == 0
    rec = manifest(tmp_path / "out")["img0000.png"]
    assert rec["results"]["half"] == {"grad_enabled": True, "inference_mode": False}
    source = np.asarray(Image.open(images / "img0000.png"), dtype=np.float64)
    got = np.asarray(Image.open(tmp_path / "out" / "img0000.png"), dtype=np.float64)
    assert np.abs(got - (255 - (255 - source) / 2)).max() <= 1.0


def test_output_inside_input_is_never_reingested(tmp_path, test_plugin):
    images = tmp_path / "in"
    write_images(images, 3)
    out = images / "processed"
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=out,
                          stages=[{"use": "invert"}], out={"format": "jpeg"})
    assert "3 done" in invoke("run", pipe)[1]
    assert "0 done, 0 failed, 3 skipped" in invoke("run", pipe)[1]
    assert "3 done, 0 failed, 0 skipped" in invoke("run", pipe, "--force")[1]
    assert sorted(manifest(out)) == ["img0000.jpg", "img0001.jpg", "img0002.jpg"]


def test_nothing_is_written_outside_the_output_root(tmp_path, test_plugin):
    images = tmp_path / "in"
    write_images(images / "sub", 1)
    write_images(images, 1, prefix="ok")
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    out.mkdir()
    (out / "sub").symlink_to(outside, target_is_directory=True)  # a trap: out/sub -> outside
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=out, stages=[{"use": "invert"}])
    code, text = invoke("run", pipe)
    assert code == 1
    assert list(outside.iterdir()) == []
    rec = manifest(out)["sub/img0000.jpg"]
    assert rec["status"] == "failed" and rec["error"]["code"] == "write_error"
    assert manifest(out)["ok0000.jpg"]["status"] == "done"


def test_odd_file_names_round_trip(tmp_path, test_plugin):
    images = tmp_path / "in"
    images.mkdir()
    names = ["with space.jpg", "ünïcødé.jpg", "-leading-dash.jpg", "new\nline.jpg", "x.JPG"]
    src = write_images(tmp_path / "gen", len(names))
    for path, name in zip(src, names, strict=True):
        path.rename(images / name)
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out", stages=[{"use": "invert"}])
    code, text = invoke("run", pipe)
    assert code == 0, text
    written = {k: v["outputs"] for k, v in manifest(tmp_path / "out").items()}
    for name in names:
        expected = name[:-4] + ".jpg"  # format "same" writes JPEGs with the canonical extension
        assert written[name] == [expected]
        assert (tmp_path / "out" / expected).is_file(), expected


def test_bad_pipeline_exits_2_with_every_problem(tmp_path, test_plugin):
    images = tmp_path / "in"
    images.mkdir()
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out",
                          stages=[{"use": "invrt"}], run={"batch_size": 0})
    for command in ("run", "validate"):
        code, text = invoke(command, pipe)
        assert code == 2
        assert "2 problems" in text and "did you mean 'invert'" in text and "batch_size" in text
        assert "Traceback" not in text
    assert not (tmp_path / "out").exists()


def test_missing_device_exits_2_before_any_item(job):
    images, out, pipe = job
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the test is about machines without it")
    code, text = invoke("run", pipe, "--device", "cuda")
    assert code == 2 and "has no CUDA device" in text and "--device cpu" in text
    assert not (out / "manifest.jsonl").exists() or manifest(out) == {}


def test_validate_and_status_commands(job):
    images, out, pipe = job
    code, text = invoke("validate", pipe)
    assert code == 0 and "ok" in text and "stages: invert, tag" in text
    invoke("run", pipe)
    code, text = invoke("status", out)
    assert code == 0 and "6 items" in text and "6 done" in text
    code, text = invoke("status", out, "--json")
    report = json.loads(text)
    assert report["counts"]["done"] == 6 and report["runs"][0]["exit_code"] == 0
    code, text = invoke("status", images)
    assert code == 2 and "no imgflow state" in text


def test_two_inputs_mapping_to_one_output_name_never_overwrite_each_other(tmp_path, test_plugin):
    images = tmp_path / "in"
    write_images(images, 1, fmt="PNG", prefix="scan")
    write_images(images, 1, fmt="JPEG", prefix="scan")  # scan0000.png and scan0000.jpg
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out",
                          stages=[{"use": "invert"}], out={"format": "jpeg"})
    code, text = invoke("run", pipe)
    assert code == 1 and "1 done, 1 failed" in text, text
    recs = manifest(tmp_path / "out")
    # decoding finishes in any order, so either input may claim the name first; the other fails
    by_status = {r["status"]: name for name, r in recs.items()}
    winner, loser = by_status["done"], by_status["failed"]
    assert recs[loser]["error"]["code"] == "output_collision"
    assert f"belongs to input {winner}" in recs[loser]["error"]["message"]
    assert recs[winner]["outputs"] == ["scan0000.jpg"]
    # a later run does not take the name over either, until the naming keeps them apart
    assert invoke("run", pipe, "--retry-failed")[0] == 1
    fixed = write_pipeline(tmp_path / "q.toml", input=images, output=tmp_path / "out2",
                           stages=[{"use": "invert"}], out={"format": "jpeg", "naming": "{name}{variant}.{ext}"})
    code, text = invoke("run", fixed)
    assert code == 0, text
    assert sorted(p.name for p in (tmp_path / "out2").glob("*.jpg")) == ["scan0000.jpg.jpg", "scan0000.png.jpg"]


def test_run_level_exports_cover_every_done_item_also_on_a_rerun(tmp_path, test_plugin):
    images = tmp_path / "in"
    write_images(images, 2, size=(20, 30))
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out",
                          stages=[{"use": "count_export"}])
    assert invoke("run", pipe)[0] == 0
    export = tmp_path / "out" / "exports" / "heights.json"
    assert json.loads(export.read_text()) == {"img0000.jpg": 20, "img0001.jpg": 20}
    write_images(images, 1, size=(20, 30), prefix="new")  # one new file, two unchanged
    code, text = invoke("run", pipe)
    assert "1 done" in text and "2 skipped" in text
    assert sorted(json.loads(export.read_text())) == ["img0000.jpg", "img0001.jpg", "new0000.jpg"]
    assert "0 done" in invoke("run", pipe)[1]
    assert len(json.loads(export.read_text())) == 3  # an all-skipped rerun keeps the export whole
