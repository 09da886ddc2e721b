"""The Ray executor on a real local Ray cluster: the same pipeline gives the same bytes and the
same manifest as the local executor, bad files fail alone (a corrupt file, a crashing decoder, a
stage whose worker dies), a rerun starts nothing, and a SIGKILLed driver then a rerun leaves every
item done exactly once, while a second run meanwhile exits 75."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from imgflow.cli import cli
from imgflow.config import load_pipeline
from imgflow.engine.results import RunOptions
from imgflow.run import run_pipeline
from imgflow.io.atomic import TEMP_MARKER
from imgflow.state import OutputLock
from tests.helpers import toml_value, write_pipeline
from tests.ray.crash_stage import CrashPlugin

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT / "examples" / "photos"
IMGFLOW = str(Path(sys.executable).with_name("imgflow"))
N_KILL = 12  # inputs of the SIGKILL test, decoded at 0.5 s each: the driver is killed mid-run


def make_inputs(folder: Path, size: int = 48) -> list[str]:
    """Small copies of the sample photos (JPEG, PNG, grayscale) in a tree, plus a corrupt JPEG."""
    names = []
    for k, photo in enumerate(sorted(PHOTOS.glob("*.jpg"))):
        image = Image.open(photo).convert("L" if k == 1 else "RGB")
        image.thumbnail((size, size))
        rel = f"{'sub/' if k % 2 else ''}{photo.stem}.{'png' if k % 2 else 'jpg'}"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / rel)
        names.append(rel)
    (folder / "corrupt.jpg").write_bytes((folder / names[0]).read_bytes()[:300])
    return names + ["corrupt.jpg"]


def generated_weights(path: Path) -> Path:
    """A SIGGRAPH17 checkpoint with every official key and shape (random init, seeded)."""
    import torch

    from imgflow_colorize import networks

    torch.manual_seed(0)
    net = networks.build("siggraph17")
    with torch.no_grad():
        net.model_out[0].bias.copy_(torch.tensor([0.1, 0.08]))
    torch.save(net.state_dict(), path)
    return path


def manifest(out: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return {r["input"]: r for r in records if "input" in r}


def comparable(record: dict) -> dict:
    """What must not depend on the executor: everything but timings, run ids and clocks."""
    keep = ("status", "outputs", "results", "meta", "size", "content_hash", "fingerprint")
    return {**{k: record[k] for k in keep}, "error": record["error"] and record["error"]["code"]}


def files(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in out.rglob("*") if p.is_file() and ".imgflow" not in p.parts
            and p.name not in ("manifest.jsonl", "run-summary.json")}


def run(pipe: Path, **options: object):
    return run_pipeline(load_pipeline(pipe), RunOptions(**options), echo=lambda m: None)


@pytest.fixture
def crash_plugin(imgflow_register):
    imgflow_register(CrashPlugin(), name="imgflow-ray-tests")


def test_same_bytes_and_manifest_as_local_and_bad_files_fail_alone(ray_cluster, tmp_path, monkeypatch,
                                                                    crash_plugin):
    src = tmp_path / "in"
    names = make_inputs(src)
    shutil.copy(src / names[0], src / "crashdec.jpg")  # its decoder segfaults (the pool's test hook)
    shutil.copy(src / names[2], src / "stagecrash.png")  # its stage actor segfaults, twice
    shutil.copy(src / names[0], os.path.join(os.fsencode(src), b"caf\xe9.jpg"))  # a name that is not UTF-8
    monkeypatch.setenv("IMGFLOW_TEST_CRASH_ON", "segv:crashdec")  # reaches Ray's workers: forwarded
    weights = generated_weights(tmp_path / "siggraph17.pth")
    stages = [
        {"use": "resize", "size": 40, "edge": "longer"},
        {"use": "augment", "copies": 2, "ops": [
            {"op": "flip_horizontal", "p": 0.5},
            {"op": "random_resized_crop", "size": [32, 32], "scale": [0.3, 1.0]},
            {"op": "color_jitter", "brightness": 0.4, "saturation": 0.4, "p": 0.8}]},
        {"use": "colorize", "weights": str(weights), "model_size": 64, "autocast": "off"},
        {"use": "segv_on", "marker": "stagecrash"},
    ]
    common = {"stages": stages, "run": {"seed": 7, "batch_size": 3, "workers": 1}, "out": {"format": "png"}}
    # The local executor would die with the stage's segfault: its run leaves that file out.
    local = write_pipeline(tmp_path / "local.toml", input=src, output=tmp_path / "local", **common)
    local.write_text(local.read_text().replace("[output]", 'exclude = ["**/stagecrash*"]\n\n[output]', 1))
    on_ray = write_pipeline(tmp_path / "ray.toml", input=src, output=tmp_path / "ray",
                            **{**common, "run": {**common["run"], "executor": "ray"}})

    assert run(local).counts == {"done": 5, "failed": 2, "skipped": 0, "failed_before": 0}
    result = run(on_ray)
    assert result.counts == {"done": 5, "failed": 3, "skipped": 0, "failed_before": 0}, result.failures
    assert result.exit_code == 1

    ray_records, local_records = manifest(tmp_path / "ray"), manifest(tmp_path / "local")
    assert ray_records["corrupt.jpg"]["error"]["code"] == "decode_error"
    assert ray_records["crashdec.jpg"]["error"]["code"] == "decoder_crash"
    assert ray_records["stagecrash.png"]["error"]["code"] == "stage_crash"
    assert "stagecrash.png" in ray_records["stagecrash.png"]["error"]["message"]
    del ray_records["stagecrash.png"]
    assert {k: comparable(r) for k, r in ray_records.items()} == {k: comparable(r) for k, r in local_records.items()}
    assert files(tmp_path / "ray") == files(tmp_path / "local")  # byte-identical outputs
    assert len(files(tmp_path / "ray")) == 5 * 2  # two augmented, colorized variants per done input
    assert not [p for p in (tmp_path / "ray").rglob(f"*{TEMP_MARKER}*")]

    # A rerun selects on the driver: nothing to do, so Ray is not even asked for.
    import imgflow.executors.ray_cluster as ray_cluster

    monkeypatch.setattr(ray_cluster, "ray_session", lambda settings: pytest.fail("Ray started on a rerun"))
    rerun = run(on_ray)
    assert rerun.counts == {"done": 0, "failed": 0, "skipped": 8, "failed_before": 3}
    assert rerun.exit_code == 1  # the 3 known failures are still failed (README: exit codes)


def _kill_when_outputs(proc: subprocess.Popen, out: Path, at_least: int, deadline_s: float = 90) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and proc.poll() is None:
        if len([p for p in out.glob("*.png")]) >= at_least:
            return
        time.sleep(0.05)
    pytest.fail(f"the Ray run wrote fewer than {at_least} outputs in time (exit {proc.poll()})")


def test_sigkilled_driver_then_rerun_does_every_item_once_and_a_second_run_exits_75(ray_cluster, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for k in range(N_KILL):
        Image.new("RGB", (24 + k, 20), (k * 20, 90, 160)).save(src / f"img{k:02d}.png")
    out = tmp_path / "out"
    pipe = write_pipeline(tmp_path / "p.toml", input=src, output=out, out={"format": "png"},
                          run={"executor": "ray", "batch_size": 2, "workers": 1},
                          stages=[{"use": "resize", "size": 16, "edge": "longer"}],
                          extra=f"\n[run.ray]\naddress = {toml_value(ray_cluster)}\n")
    env = {**os.environ, "IMGFLOW_TEST_CRASH_ON": "slow:img"}  # 0.5 s per decode: time to kill it
    proc = subprocess.Popen([IMGFLOW, "run", str(pipe)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _kill_when_outputs(proc, out, at_least=2)
        busy = CliRunner().invoke(cli, ["run", str(pipe)])  # the driver holds the lock
        assert busy.exit_code == 75, busy.output
        assert "in use by another imgflow run" in busy.output
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    with OutputLock(out, wait=True, timeout_s=10):  # the kernel released the dead driver's lock
        pass

    result = run(pipe)
    records = manifest(out)
    names = [f"img{k:02d}.png" for k in range(N_KILL)]
    assert sorted(records) == names
    assert all(r["status"] == "done" for r in records.values())
    assert result.counts["failed"] == 0
    assert result.counts["done"] + result.counts["skipped"] == N_KILL  # each item done by exactly one run
    assert sorted(p.name for p in out.glob("*.png")) == names
    assert not [p for p in out.rglob(f"*{TEMP_MARKER}*")]  # the killed run's temp files were swept
    for name in names:  # complete files under every final name
        with Image.open(out / name) as image:
            image.load()
            assert image.width == 16


def test_a_stage_that_cannot_set_up_in_its_actor_stops_the_run_with_exit_2(ray_cluster, tmp_path):
    # The weights file exists (so validation passes) but is damaged, and the output folder has run
    # before (so the driver does not set the stages up itself): the failure happens in the actor.
    src = tmp_path / "in"
    src.mkdir()
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(b"not a checkpoint")
    pipe = write_pipeline(tmp_path / "p.toml", input=src, output=tmp_path / "out", run={"executor": "ray"},
                          stages=[{"use": "colorize", "weights": str(damaged)}])
    assert CliRunner().invoke(cli, ["run", str(pipe)]).exit_code == 66  # nothing to read yet
    Image.new("RGB", (8, 8)).save(src / "a.png")
    result = CliRunner().invoke(cli, ["run", str(pipe)])
    assert result.exit_code == 2, result.output
    assert f"{damaged} is not a readable PyTorch checkpoint" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "a.png").exists()


def test_the_plan_goes_out_in_windows_taken_lazily():
    from imgflow.executors.ray import windows

    taken = []

    def plan():
        for k in range(7):
            taken.append(k)
            yield k

    stream = windows(plan(), 3)
    assert next(stream) == [0, 1, 2] and taken == [0, 1, 2]  # the driver holds one window at a time
    assert list(stream) == [[3, 4, 5], [6]]


def test_validate_checks_ray_settings_without_importing_ray(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    pipe = write_pipeline(tmp_path / "p.toml", input=src, output=tmp_path / "out", run={"executor": "ray"},
                          stages=[{"use": "resize", "size": 16}],
                          extra='\n[run.ray]\naddress = "auto"\nnum_gpus = 1\nmin_actors = 2\nmax_actors = 4\n')
    probe = ("import sys; from click.testing import CliRunner; from imgflow.cli import cli; "
             f"r = CliRunner().invoke(cli, ['validate', {str(pipe)!r}]); "
             "print(r.exit_code, 'ray' in sys.modules); print(r.output)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("0 False"), done.stdout + done.stderr

    bad = write_pipeline(tmp_path / "bad.toml", input=src, output=tmp_path / "out", run={"executor": "rey"},
                         stages=[{"use": "resize", "size": 16}],
                         extra='\n[run.ray]\nadress = "auto"\n')
    result = CliRunner().invoke(cli, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "[run] executor: expected 'local' or 'ray', got 'rey'" in result.output
    assert "[run.ray] adress: unknown key (did you mean 'address'?)" in result.output
    assert "Traceback" not in result.output
    bad.write_text(bad.read_text().replace('adress = "auto"', "min_actors = 3\nmax_actors = 2"))
    result = CliRunner().invoke(cli, ["validate", str(bad)])
    assert "[run.ray]: max_actors (2) is below min_actors (3) (fix: raise max_actors" in result.output


def test_training_and_cuda_without_gpus_are_config_errors_on_ray(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    train = write_pipeline(tmp_path / "t.toml", input=src, output=tmp_path / "out",
                           stages=[{"use": "train.fast_style", "style": str(ROOT / "examples/styles/mosaic.jpg")}])
    result = CliRunner().invoke(cli, ["validate", str(train), "--executor", "ray"])
    assert result.exit_code == 2
    assert "training runs (train.fast_style) run on the local executor only" in result.output
    assert "--executor local" in result.output
    cuda = CliRunner().invoke(cli, ["validate", str(train), "--executor", "ray", "--device", "cuda",
                                    "-p", "train.fast_style.epochs=1"])
    assert "[run.ray] num_gpus = 0" in cuda.output


def test_missing_ray_exits_2_with_the_install_command(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (8, 8)).save(src / "a.png")
    pipe = write_pipeline(tmp_path / "p.toml", input=src, output=tmp_path / "out", run={"executor": "ray"},
                          stages=[{"use": "resize", "size": 4}])
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    result = CliRunner().invoke(cli, ["run", str(pipe)])
    assert result.exit_code == 2, result.output
    assert "uv sync --extra ray" in result.output and "pip install 'imgflow[ray]'" in result.output
    assert "Traceback" not in result.output
