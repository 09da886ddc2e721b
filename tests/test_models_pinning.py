"""imgflow.models: specs without a published digest, pinned on first use (``pin_on_first_use``).

The first download or import pins the file's sha256 beside it (``<file>.sha256``); every later
download, import and use must match. No network: a real http.server on 127.0.0.1 (the helpers of
tests/test_models.py) serves generated checkpoints; the cache is a folder under tmp_path.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from imgflow import models
from imgflow.cli import cli
from imgflow.errors import PluginError
from imgflow.models import ModelSpec
from tests.test_models import (  # noqa: F401 (server and torch_home are fixtures)
    LICENSE,
    ModelsPlugin,
    Server,
    checkpoint_bytes,
    server,
    tiny_state,
    torch_home,
)


def other_bytes(data: bytes) -> bytes:
    """A different file of the same size (so only the digest can tell them apart)."""
    return bytes(b ^ 0xFF for b in data[:16]) + data[16:]


@pytest.fixture
def pinned(server: Server, torch_home, imgflow_register) -> tuple[ModelSpec, bytes]:
    data = checkpoint_bytes(tiny_state())
    url = server.publish("pinned_model.pth", data)  # no hash in the name, none given
    spec = ModelSpec(name="test-pinned", url=url, size=len(data), license=LICENSE, stage="colorize",
                     pin_on_first_use=True)
    imgflow_register(ModelsPlugin(spec), name="pinned-test-plugin")
    return spec, data


def test_a_spec_needs_a_digest_or_pinning_but_not_both():
    with pytest.raises(PluginError, match="pin_on_first_use=True when none is published"):
        ModelSpec(name="x", url="https://h/x.pth", license="l", stage="s")
    with pytest.raises(PluginError, match="pin_on_first_use is for files without a published digest"):
        ModelSpec(name="x", url="https://h/x.pth", license="l", stage="s", sha256="0" * 64, pin_on_first_use=True)
    with pytest.raises(PluginError, match="pin_on_first_use is for files without"):
        ModelSpec(name="x", url="https://h/x-0123abcd.pth", license="l", stage="s", pin_on_first_use=True)


def test_the_first_download_pins_and_a_changed_server_file_is_refused(pinned, server):
    spec, data = pinned
    assert models.pinned_digest(spec) is None
    path = models.ensure(spec)
    digest = hashlib.sha256(data).hexdigest()
    assert path.read_bytes() == data
    assert models.pin_path(spec).read_text() == f"{digest}  pinned_model.pth\n"  # sha256sum's format
    assert models.pinned_digest(spec) == digest and models.describe(spec)["pinned_sha256"] == digest
    assert set(models.load_state_dict("test-pinned")) == {"conv.weight", "conv.bias"}

    server.publish("pinned_model.pth", other_bytes(data))  # the publisher swaps the file
    with pytest.raises(models.ChecksumError) as info:
        models.pull(spec)
    text = str(info.value)
    assert "pinned at its first download" in text and digest in text
    assert f"delete {models.pin_path(spec)}" in text
    assert path.read_bytes() == data  # the cached file is untouched

    path.write_bytes(other_bytes(data))  # a damaged cache: downloaded again, and refused again
    with pytest.raises(models.ChecksumError):
        models.ensure(spec)
    assert models.pinned_digest(spec) == digest


def test_import_pins_and_refuses_a_different_file_afterwards(pinned, tmp_path, server):
    spec, data = pinned
    mine = tmp_path / "downloaded.pth"
    mine.write_bytes(data)
    models.import_file(spec, mine)
    assert models.pinned_digest(spec) == hashlib.sha256(data).hexdigest()
    mine.write_bytes(other_bytes(data))
    with pytest.raises(models.ChecksumError, match="pinned at its first download"):
        models.import_file(spec, mine)
    assert models.ensure(spec).read_bytes() == data and server.requests == []  # no download


def test_a_truncated_first_download_is_not_pinned(pinned, server):
    spec, data = pinned
    server.publish("pinned_model.pth", data[:-10])
    with pytest.raises(models.ChecksumError, match="size is"):
        models.ensure(spec)
    assert models.pinned_digest(spec) is None and not models.pin_path(spec).exists()
    assert not models.cache_path(spec).exists()


def test_a_file_already_in_the_cache_is_pinned_at_its_first_use(pinned, server):
    spec, data = pinned
    models.cache_path(spec).parent.mkdir(parents=True)
    models.cache_path(spec).write_bytes(data)
    assert models.ensure(spec) == models.cache_path(spec) and server.requests == []
    assert models.pinned_digest(spec) == hashlib.sha256(data).hexdigest()


def test_models_list_says_the_hash_is_pinned_on_first_use(pinned, tmp_path):
    spec, data = pinned
    runner = CliRunner()
    table = runner.invoke(cli, ["models", "list"]).output
    row = next(line for line in table.splitlines() if line.startswith("test-pinned"))
    assert "pinned on first use" in row
    assert "the first download (or import) pins its sha256" in table
    (tmp_path / "f.pth").write_bytes(data)
    assert runner.invoke(cli, ["models", "import", "test-pinned", str(tmp_path / "f.pth")]).exit_code == 0
    digest = hashlib.sha256(data).hexdigest()
    row = next(line for line in runner.invoke(cli, ["models", "list"]).output.splitlines()
               if line.startswith("test-pinned"))
    assert f"{digest[:12]} (pinned)" in row
    listed = {r["name"]: r for r in json.loads(runner.invoke(cli, ["models", "list", "--json"]).stdout)}
    assert listed["test-pinned"]["pin_on_first_use"] is True
    assert listed["test-pinned"]["pinned_sha256"] == digest


def test_the_fingerprint_does_not_change_when_the_pin_is_written(pinned):
    spec, _ = pinned
    before = models.weights_fingerprint("test-pinned")
    models.ensure(spec)
    assert models.weights_fingerprint("test-pinned") == before == {"weights": "test-pinned@pinned"}
