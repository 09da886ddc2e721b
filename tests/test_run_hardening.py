"""Runs that stop, fail or meet odd names say so plainly (issue 10: items 5, 7, 8, 10, 12).

In-process through the CLI (click's CliRunner), with small real images and real files: a
configuration error leaves no output tree behind on a first run and is recorded on a later
one; known failures make a rerun exit 1 and say how to retry; names with control characters
never forge a line; non-UTF-8 names keep exact keys; links and FIFOs get records.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import Field

from imgflow import Batch, ConfigError, Params, Stage, StageKind, hookimpl
from imgflow.cli import cli
from imgflow.testing import write_images
from tests.helpers import write_pipeline


class NeedsWeights(Stage):
    """Fails to set up the way a stage with missing weights does (a ConfigError with a fix)."""

    name = "needs_weights"
    description = "sets up only when told to (test stage)"

    class Params(Params):
        present: bool = Field(True, description="whether the weights 'exist'")

    def setup(self, device: Any) -> None:
        if not self.params.present:
            raise ConfigError("weights w.pt: no such file (fix: run `imgflow models pull w`)")

    def process(self, batch: Batch) -> Batch:
        return batch


class LabelsNothing(Stage):
    """A trainer that finds no labelled file: a configuration error after the run began."""

    name = "labels_nothing"
    kind = StageKind.TRAIN
    description = "a trainer with no labels (test stage)"
    consumes = True

    def split_of(self, relpath: str) -> str | None:
        return None


class HardeningPlugin:
    @hookimpl
    def register_stages(self, register):
        register(NeedsWeights)
        register(LabelsNothing)


@pytest.fixture
def plugin(imgflow_register, test_plugin):
    imgflow_register(HardeningPlugin(), name="imgflow-hardening-tests")


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def records(out: Path) -> dict[str, dict]:
    return {r["input"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


def test_a_config_error_at_set_up_leaves_no_tree_and_is_recorded_on_an_existing_one(tmp_path, plugin):
    write_images(tmp_path / "in", 2)
    out = tmp_path / "deep" / "out"
    missing = write_pipeline(tmp_path / "p.toml", input=tmp_path / "in", output=out,
                             stages=[{"use": "needs_weights", "present": False}])
    code, text = invoke("run", missing)
    assert code == 2 and "weights w.pt: no such file" in text, text
    assert not (tmp_path / "deep").exists(), "a first run that stops on a config error creates nothing"

    ok = write_pipeline(tmp_path / "ok.toml", input=tmp_path / "in", output=out,
                        stages=[{"use": "needs_weights"}])
    assert invoke("run", ok)[0] == 0
    code, text = invoke("run", missing)  # changed parameter: items to do, so set-up runs and fails
    assert code == 2
    summary = json.loads((out / "run-summary.json").read_text())
    assert summary["status"] == "error" and summary["exit_code"] == 2
    assert "weights w.pt: no such file" in summary["message"]
    code, text = invoke("status", out)
    assert "error       exit 2" in text and "why: weights w.pt: no such file" in text, text
    assert len(records(out)) == 2  # the manifest still lists what earlier runs did


def test_a_config_error_later_in_a_first_run_removes_what_it_made(tmp_path, plugin):
    write_images(tmp_path / "in", 2)
    out = tmp_path / "out"
    pipe = write_pipeline(tmp_path / "p.toml", input=tmp_path / "in", output=out,
                          stages=[{"use": "labels_nothing"}])
    code, text = invoke("run", pipe)
    assert code == 2 and "no training images found" in text, text
    assert not out.exists(), sorted(str(p) for p in out.rglob("*"))
    out.mkdir()  # a folder of the user's: only what the run made goes again
    (out / "notes.txt").write_text("mine")
    assert invoke("run", pipe)[0] == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_run_waiting_on_a_removed_lock_takes_a_fresh_one(tmp_path):
    from imgflow.io.outroot import remove_created
    from imgflow.state import OutputLock

    root = tmp_path / "out"
    first = OutputLock(root)
    first.acquire()
    waiter = OutputLock(root, wait=True, timeout_s=20)
    thread = threading.Thread(target=waiter.acquire)
    thread.start()
    time.sleep(0.3)  # the waiter now polls the lock file the first run holds
    remove_created(root, [root])
    assert not root.exists()
    first.release()
    thread.join(20)
    try:
        assert waiter.held
        held, here = os.fstat(waiter._fd), os.stat(root / ".imgflow" / "lock")
        assert (held.st_ino, held.st_dev) == (here.st_ino, here.st_dev), "locked a file nobody can see"
    finally:
        waiter.release()


def test_known_failures_make_a_rerun_exit_1_and_say_how_to_retry(tmp_path, plugin):
    images = tmp_path / "in"
    write_images(images, 3)
    write_images(images, 1, prefix="boom")
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out",
                          stages=[{"use": "fail_on", "marker": "boom"}], out={"format": "png"})
    assert invoke("run", pipe)[0] == 1
    code, text = invoke("run", pipe)
    assert code == 1, text
    assert "0 done, 0 failed, 4 skipped (1 failed before: --retry-failed retries them)" in text
    summary = json.loads((tmp_path / "out" / "run-summary.json").read_text())
    assert summary["counts"]["failed_before"] == 1 and summary["exit_code"] == 1
    excluded = write_pipeline(tmp_path / "q.toml", input=images, output=tmp_path / "out",
                              stages=[{"use": "fail_on", "marker": "boom"}], out={"format": "png"},
                              extra="")
    excluded.write_text(excluded.read_text().replace("[input]\n", '[input]\nexclude = ["boom*"]\n'))
    code, text = invoke("run", excluded)
    assert code == 0 and "3 skipped in" in text, text


def test_odd_names_are_escaped_for_people_exact_in_the_manifest_and_never_silent(tmp_path, plugin):
    images = tmp_path / "in"
    write_images(images, 1, prefix="plain")
    src = images / "plain0000.jpg"
    forged = "boom.jpg\nimgflow: p: 999 done, 0 failed.jpg"  # fails (marker "boom"): a failure line
    (images / forged).write_bytes(src.read_bytes())
    (images / "boom\x1b[31mred.jpg").write_bytes(src.read_bytes())
    raw = os.path.join(os.fsencode(images), b"caf\xe9.jpg")  # not UTF-8 ...
    with open(raw, "wb") as handle:
        handle.write(src.read_bytes())
    (images / "caf\\xe9.jpg").write_bytes(src.read_bytes())  # ... and its escaped spelling, for real
    (images / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "elsewhere.jpg").write_bytes(src.read_bytes())
    (images / "outside.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    os.mkfifo(images / "pipe.jpg")
    out = tmp_path / "out"
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=out,
                          stages=[{"use": "fail_on", "marker": "boom"}], out={"format": "png"})

    code, text = invoke("run", pipe)
    assert code == 1, text
    lines = text.splitlines()
    assert all(line.startswith(("imgflow: ", "  failed ", "  ...")) for line in lines), text
    assert "3 done, 5 failed" in text
    assert "  failed boom.jpg\\nimgflow: p: 999 done, 0 failed.jpg: [stage_error]" in text
    assert "  failed boom\\x1b[31mred.jpg: [stage_error]" in text
    assert "  failed dangling.jpg: [unreadable]" in text and "does not exist" in text
    assert "  failed outside.jpg: [outside_input]" in text
    assert "  failed pipe.jpg: [unreadable]" in text and "FIFO" in text

    recs = records(out)
    assert forged in recs and recs[forged]["status"] == "failed"  # the exact name, JSON-escaped
    assert "caf\udce9.jpg" in recs and "caf\\xe9.jpg" in recs, sorted(recs)  # two inputs, two keys
    assert os.path.exists(os.path.join(os.fsencode(out), b"caf\xe9.png")) and (out / "caf\\xe9.png").exists()

    code, text = invoke("status", out)
    assert "boom\\x1b[31mred.jpg: [stage_error]" in text and "\x1b" not in text, text
    assert "boom.jpg\\nimgflow: p: 999 done" in text and "\nimgflow: p: 999" not in text
    assert invoke("run", pipe)[0] == 1  # nothing was redone and nothing collided
    assert records(out)["caf\udce9.jpg"]["run_id"] == recs["caf\udce9.jpg"]["run_id"]


def test_a_16_bit_grey_png_keeps_its_transparent_key(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from imgflow.engine.chain import to_item
    from imgflow.io.decode import DecodeLimits, decode_bytes
    from imgflow.io.encode import encode_image

    levels = (np.arange(8 * 16).reshape(8, 16) * 500).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(levels).save(buffer, "PNG", transparency=1000)  # tRNS: level 1000 is transparent
    decoded = decode_bytes(buffer.getvalue(), DecodeLimits())
    assert decoded.pixels.shape == (8, 16, 4) and decoded.pixels.dtype == np.uint16
    assert (decoded.pixels[..., 3] == 0).sum() == 1 and decoded.pixels[0, 2, 3] == 0
    item = to_item(decoded, "a.png", 0)
    back = Image.open(io.BytesIO(encode_image(item.image, item.alpha, "png", bit_depth=16)))
    assert back.mode in ("LA", "RGBA", "I;16") or "A" in back.getbands(), back.mode
    assert np.asarray(back.getchannel("A"))[0, 2] == 0


def test_format_refusals_are_worded_one_way(tmp_path):
    import io

    from PIL import Image

    from imgflow.io.decode import DecodeLimits, decode_bytes

    buffer = io.BytesIO()
    first = Image.new("RGB", (8, 8), "red")
    first.save(buffer, "MPO", save_all=True, append_images=[Image.new("RGB", (8, 8), "blue")])
    refused = []
    for data, limits in ((b"%!PS-Adobe-3.0 EPSF-3.0\n", DecodeLimits()),  # sniffed from the bytes
                         (buffer.getvalue(), DecodeLimits(formats=("JPEG",)))):  # opened by Pillow
        with pytest.raises(Exception) as info:
            decode_bytes(data, limits, source="f")
        refused.append(info.value)
    assert [e.code for e in refused] == ["unsupported_format"] * 2
    assert refused[0].message.startswith("f: a file in EPS format; imgflow reads JPEG")
    assert refused[1].message == ("f: a file in MPO format; imgflow reads JPEG (fix: convert the file to "
                                  "one of those, or leave it out with [input] exclude)")
