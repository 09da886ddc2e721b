"""Decode limits (issue 10, item 6): a worker memory cap no decoder can work under is a
configuration error, and a changed limit re-runs exactly the items that failed because of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from imgflow.cli import cli
from imgflow.errors import ConfigError
from imgflow.io.decode import DecodeLimits
from imgflow.io.decodepool import DecodePool
from imgflow.testing import write_images
from tests.helpers import write_pipeline


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def test_a_worker_memory_cap_no_decoder_can_work_under_is_a_config_error(tmp_path, test_plugin):
    write_images(tmp_path / "in", 1)
    pipe = write_pipeline(tmp_path / "p.toml", input=tmp_path / "in", output=tmp_path / "out",
                          stages=[{"use": "invert"}], run={"worker_memory_mb": 64})
    for command in ("validate", "run"):
        code, text = invoke(command, pipe)
        assert code == 2, text
        assert "worker_memory_mb: expected at least 256, got 64" in text and "fix:" in text
    assert not (tmp_path / "out" / "manifest.jsonl").exists()
    # A cap above that floor can still be below what this machine's workers need: the pool finds
    # out from the worker itself, before any file is charged with it.
    with pytest.raises(ConfigError, match=r"worker_memory_mb = 100 is too low for a decode worker.*fix: raise"):
        DecodePool(workers=1, limits=DecodeLimits(memory_mb=100))


def _pipeline(tmp_path: Path, **run: object) -> Path:
    return write_pipeline(tmp_path / "p.toml", input=tmp_path / "in", output=tmp_path / "out",
                          stages=[{"use": "invert"}], out={"format": "png"}, run={"workers": 1, **run})


def _records(out: Path) -> dict[str, dict]:
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return {r["input"]: r for r in map(json.loads, lines)}


def test_a_changed_limit_reruns_the_items_it_failed_and_only_those(tmp_path, test_plugin):
    write_images(tmp_path / "in", 1, size=(200, 300), prefix="big")
    write_images(tmp_path / "in", 1, size=(20, 30), prefix="small")
    out = tmp_path / "out"
    code, text = invoke("run", _pipeline(tmp_path, max_pixels=10_000))
    assert code == 1 and "1 done, 1 failed" in text, text
    assert _records(out)["big0000.jpg"]["error"]["code"] == "too_many_pixels"
    # same limits: the failure stands; another limit changed: still nothing to redo
    for run in ({"max_pixels": 10_000}, {"max_pixels": 10_000, "decode_timeout_s": 30}):
        code, text = invoke("run", _pipeline(tmp_path, **run))
        assert "0 done, 0 failed, 2 skipped" in text, (run, text)
    # the limit that failed it changed: that item alone runs again, and now succeeds
    code, text = invoke("run", _pipeline(tmp_path, max_pixels=1_000_000))
    assert code == 0 and "1 done, 0 failed, 1 skipped" in text, text
    assert _records(out)["big0000.jpg"]["status"] == "done"
