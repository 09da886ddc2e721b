"""imgflow.models and `imgflow models`: registry, cache, download, verify, import, safe loading.

No network: checkpoints are generated here with torch.save and served by a real http.server on
127.0.0.1; the cache is a real folder under tmp_path (TORCH_HOME).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from imgflow import hookimpl, models
from imgflow.cli import cli
from imgflow.errors import ConfigError, PluginError
from imgflow.models import ModelSpec
from imgflow.models import cache as models_cache

LICENSE = "MIT (test)"


class Opaque:
    """A Python object that a weights_only load must refuse to unpickle."""


def checkpoint_bytes(state: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def tiny_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(4, 3, 3, 3, generator=gen), "conv.bias": torch.zeros(4)}


TINY_SHAPES = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,)}


class Server:
    """A real HTTP server on 127.0.0.1 serving one folder; remembers the paths requested."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def publish(self, filename: str, data: bytes) -> str:
        (self.root / filename).write_bytes(data)
        return f"{self.base}/{filename}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # no set_dir() from elsewhere
    return home


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "served"
    root.mkdir()
    srv = Server(root)
    yield srv
    srv.stop()


@pytest.fixture
def closed_port_url() -> str:
    """A URL on a port that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/tiny-0123abcd.pth"


class Published:
    """The checkpoint a test serves: bytes, digest, and the spec a plugin would register."""

    def __init__(self, server: Server, name: str = "test-tiny", data: bytes | None = None) -> None:
        self.data = data if data is not None else checkpoint_bytes(tiny_state())
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.filename = f"tiny-{self.sha256[:8]}.pth"
        self.url = server.publish(self.filename, self.data)
        self.spec = ModelSpec(name=name, url=self.url, sha256=self.sha256, size=len(self.data),
                              license=LICENSE, stage="colorize", description="a tiny test net")


class ModelsPlugin:
    """A tiny in-process plugin registering the given specs."""

    def __init__(self, *specs: ModelSpec) -> None:
        self.specs = specs

    @hookimpl
    def register_models(self, register):
        for spec in self.specs:
            register(spec)


@pytest.fixture
def published(server: Server, torch_home: Path, imgflow_register) -> Published:
    pub = Published(server)
    imgflow_register(ModelsPlugin(pub.spec), name="models-test-plugin")
    return pub


def cache_files(torch_home: Path) -> list[str]:
    folder = torch_home / "hub" / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ----------------------------------------------------------------- spec


def test_spec_derives_the_prefix_from_the_url_and_refuses_specs_without_a_hash():
    spec = ModelSpec(name="a", url="https://h/x/model-9b330a0b.pth", license=LICENSE, stage="s")
    assert spec.filename == "model-9b330a0b.pth"
    assert spec.sha256_prefix == "9b330a0b"
    with pytest.raises(PluginError, match="no sha256"):
        ModelSpec(name="b", url="https://h/x/model.pth", license=LICENSE, stage="s")
    with pytest.raises(PluginError, match="does not start with"):
        ModelSpec(name="c", url="https://h/model-9b330a0b.pth", sha256="f" * 64, license=LICENSE, stage="s")
    with pytest.raises(PluginError, match="64 hex digits"):
        ModelSpec(name="d", url="https://h/model.pth", sha256="abc", license=LICENSE, stage="s")
    with pytest.raises(PluginError, match="http"):
        ModelSpec(name="e", url="/local/model-9b330a0b.pth", license=LICENSE, stage="s")
    upper = ModelSpec(name="f", url="https://h/m.pth", sha256="AB" * 32, license=LICENSE, stage="s")
    assert upper.sha256 == "ab" * 32


# ----------------------------------------------------------------- cache location


def test_cache_dir_matches_torch_hub_under_each_environment_rule(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models_cache._hub_dir_from_env() == Path(torch.hub.get_dir()) == tmp_path / "th" / "hub"
    monkeypatch.delenv("TORCH_HOME")
    assert models_cache._hub_dir_from_env() == Path(torch.hub.get_dir()) == tmp_path / "xdg" / "torch" / "hub"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models_cache._hub_dir_from_env() == Path(torch.hub.get_dir()) == tmp_path / "home/.cache/torch/hub"


def test_cache_path_is_torch_hub_checkpoints(torch_home):
    spec = ModelSpec(name="a", url="https://h/x/model-9b330a0b.pth", license=LICENSE, stage="s")
    assert models.cache_path(spec) == Path(torch.hub.get_dir()) / "checkpoints" / "model-9b330a0b.pth"
    assert models.cache_path(spec).parent == torch_home / "hub" / "checkpoints"


# ----------------------------------------------------------------- registry


def test_registry_get_and_did_you_mean(published):
    assert models.registry()["test-tiny"] == published.spec
    assert models.get("test-tiny") is published.spec
    with pytest.raises(ConfigError, match=r"unknown model 'test-tinny' \(did you mean 'test-tiny'\?\).*models list"):
        models.get("test-tinny")


def test_duplicate_model_names_name_both_plugins(server, torch_home, imgflow_register):
    a = Published(server)
    b = ModelSpec(name="test-tiny", url=f"{server.base}/other-0123abcd.pth", license=LICENSE, stage="x")
    imgflow_register(ModelsPlugin(a.spec), name="first-plugin")
    assert "test-tiny" in models.registry()
    imgflow_register(ModelsPlugin(b), name="second-plugin")  # invalidates the cached registry
    with pytest.raises(PluginError, match="'first-plugin'.*'second-plugin'"):
        models.registry()


def test_registry_follows_unregistration(server, torch_home, imgflow_register):
    from imgflow import plugins

    pub = Published(server, name="test-gone")
    imgflow_register(ModelsPlugin(pub.spec), name="gone-plugin")
    assert "test-gone" in models.registry()
    plugins.unregister_plugin("gone-plugin")
    assert "test-gone" not in models.registry()


def test_a_plugin_whose_hook_raises_is_reported_and_others_still_work(published, imgflow_register):
    from imgflow import plugins

    class Broken:
        @hookimpl
        def register_models(self, register):
            register(ModelSpec(name="nohash", url="https://h/m.pth", license=LICENSE, stage="s"))

    imgflow_register(Broken(), name="broken-plugin")
    assert "test-tiny" in models.registry()
    failures = [str(f) for f in plugins.load_failures()]
    assert any("broken-plugin" in f and "no sha256" in f for f in failures)


# ----------------------------------------------------------------- pull / ensure


def test_pull_downloads_verifies_and_caches(published, torch_home):
    path = models.pull(published.spec)
    assert path == torch_home / "hub" / "checkpoints" / published.filename
    assert path.read_bytes() == published.data
    assert models.verify_file(published.spec, path) == published.sha256
    assert cache_files(torch_home) == [published.filename]  # no temporary file left behind
    assert models.describe(published.spec)["cached"] is True


def test_pull_with_only_the_prefix_from_the_file_name(server, torch_home):
    pub = Published(server)
    spec = ModelSpec(name="prefix-only", url=pub.url, license=LICENSE, stage="s")
    assert spec.sha256 is None and spec.sha256_prefix == pub.sha256[:8]
    assert models.pull(spec).read_bytes() == pub.data


@pytest.mark.parametrize("wrong", ["full", "prefix", "size"])
def test_a_wrong_download_is_refused_and_nothing_is_cached(server, torch_home, wrong):
    pub = Published(server)
    if wrong == "full":
        spec = ModelSpec(name="w", url=pub.url, sha256=pub.sha256[:8] + "0" * 56, license=LICENSE, stage="s")
    elif wrong == "prefix":
        url = server.publish("tiny-deadbeef.pth", pub.data)
        spec = ModelSpec(name="w", url=url, license=LICENSE, stage="s")
    else:
        spec = ModelSpec(name="w", url=pub.url, sha256=pub.sha256, size=len(pub.data) + 1, license=LICENSE,
                         stage="s")
    with pytest.raises(models.ChecksumError) as info:
        models.pull(spec)
    message = str(info.value)
    assert "model 'w'" in message
    assert (pub.sha256 in message) or (f"{len(pub.data)} bytes" in message)
    assert cache_files(torch_home) == []


def test_ensure_uses_a_valid_cache_without_the_network(published, server):
    models.ensure(published.spec)
    before = len(server.requests)
    assert models.ensure(published.spec).read_bytes() == published.data
    assert len(server.requests) == before


def test_ensure_downloads_again_over_a_truncated_cached_file(published, server):
    path = models.cache_path(published.spec)
    path.parent.mkdir(parents=True)
    path.write_bytes(published.data[: len(published.data) // 2])
    assert models.ensure(published.spec).read_bytes() == published.data
    assert server.requests == [f"/{published.filename}"]


def test_ensure_replaces_a_cached_file_with_wrong_content_of_the_right_size(published, server):
    path = models.cache_path(published.spec)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\0" * len(published.data))
    assert models.ensure(published.spec).read_bytes() == published.data
    assert len(server.requests) == 1


def test_offline_error_names_model_cache_path_url_and_import_command(torch_home, closed_port_url):
    spec = ModelSpec(name="test-offline", url=closed_port_url, license=LICENSE, stage="s")
    with pytest.raises(models.DownloadError) as info:
        models.ensure(spec)
    message = str(info.value)
    assert "model 'test-offline' is not in the cache" in message
    assert str(models.cache_path(spec)) in message
    assert closed_port_url in message
    assert "imgflow models import test-offline FILE" in message
    assert info.value.exit_code == 2
    assert cache_files(torch_home) == []


def test_http_404_is_a_download_error(server, torch_home):
    spec = ModelSpec(name="missing", url=f"{server.base}/nothing-0123abcd.pth", license=LICENSE, stage="s")
    with pytest.raises(models.DownloadError, match="HTTP 404"):
        models.pull(spec)


def test_a_server_that_never_answers_times_out(torch_home, monkeypatch):
    monkeypatch.setattr(models_cache, "DOWNLOAD_TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # accepts connections (kernel backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/tiny-0123abcd.pth"
        spec = ModelSpec(name="stalled", url=url, license=LICENSE, stage="s")
        start = time.monotonic()
        with pytest.raises(models.DownloadError, match="timed out"):
            models.pull(spec)
    assert time.monotonic() - start < 10
    assert socket.getdefaulttimeout() is None  # the process-wide default is restored
    assert cache_files(torch_home) == []


def test_a_damaged_cache_offline_says_it_is_damaged(torch_home, closed_port_url):
    spec = ModelSpec(name="test-offline", url=closed_port_url, size=100, license=LICENSE, stage="s")
    path = models.cache_path(spec)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x" * 10)
    with pytest.raises(models.DownloadError, match="damaged file in the cache.*10 bytes"):
        models.ensure(spec)


# ----------------------------------------------------------------- import


def test_import_works_offline_and_refuses_a_wrong_file(tmp_path, torch_home, closed_port_url):
    data = checkpoint_bytes(tiny_state())
    digest = hashlib.sha256(data).hexdigest()
    url = closed_port_url.replace("tiny-0123abcd.pth", "tiny.pth")
    spec = ModelSpec(name="test-offline", url=url, sha256=digest, license=LICENSE, stage="s")
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(checkpoint_bytes({"x": torch.ones(3)}))
    with pytest.raises(models.ChecksumError, match=f"wrong.pth is not the expected file.*{digest}"):
        models.import_file(spec, wrong)
    assert cache_files(torch_home) == []
    good = tmp_path / "downloaded.pth"
    good.write_bytes(data)
    path = models.import_file(spec, good)
    assert path == models.cache_path(spec) and path.read_bytes() == data
    assert models.ensure(spec) == path  # now usable with no network at all
    assert cache_files(torch_home) == [spec.filename]


def test_import_of_a_missing_file_says_which(torch_home, closed_port_url):
    spec = ModelSpec(name="test-offline", url=closed_port_url, license=LICENSE, stage="s")
    with pytest.raises(models.ModelError, match="cannot import .*nope.pth: no such file"):
        models.import_file(spec, torch_home / "nope.pth")


# ----------------------------------------------------------------- loading


def test_load_state_dict_by_name_spec_path_and_url(published, server, torch_home):
    expected = tiny_state()
    by_name = models.load_state_dict("test-tiny", expected=TINY_SHAPES)
    assert by_name.keys() == expected.keys()
    assert torch.equal(by_name["conv.weight"], expected["conv.weight"])
    assert models.load_state_dict(published.spec).keys() == expected.keys()
    assert models.load_state_dict(models.cache_path(published.spec)).keys() == expected.keys()
    other = server.publish("other.pth", checkpoint_bytes(expected))
    assert models.load_state_dict(other).keys() == expected.keys()
    assert (torch_home / "hub" / "checkpoints" / "other.pth").is_file()


def test_load_state_dict_from_a_url_checks_the_prefix_in_its_name(server, torch_home):
    url = server.publish("bad-deadbeef.pth", checkpoint_bytes(tiny_state()))
    with pytest.raises(models.ChecksumError, match="deadbeef"):
        models.load_state_dict(url)
    assert cache_files(torch_home) == []


@pytest.mark.parametrize("key", ["state_dict", "model", "params"])
def test_a_wrapped_state_dict_is_unwrapped(tmp_path, key):
    path = tmp_path / "wrapped.pth"
    torch.save({key: tiny_state(), "epoch": 3, "optimizer": {"lr": 0.1}}, path)
    assert models.load_state_dict(path, expected=TINY_SHAPES).keys() == TINY_SHAPES.keys()


@pytest.mark.parametrize("cut", ["half", "empty", "junk"])
def test_a_truncated_or_foreign_file_is_corrupt(tmp_path, cut):
    data = checkpoint_bytes(tiny_state())
    path = tmp_path / "bad.pth"
    path.write_bytes({"half": data[: len(data) // 2], "empty": b"", "junk": b"hello, not a checkpoint"}[cut])
    with pytest.raises(models.CorruptWeights, match="bad.pth is not a readable PyTorch checkpoint"):
        models.load_state_dict(path)


@pytest.mark.parametrize("force", [None, "1"])
def test_a_pickle_with_python_objects_is_refused_even_when_forced(tmp_path, monkeypatch, force):
    if force:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", force)
    path = tmp_path / "objects.pth"
    torch.save({"w": torch.zeros(1), "obj": Opaque()}, path)
    with pytest.raises(models.UnsafeWeights, match="contains Python objects, not only tensors.*Opaque.*plain "
                                                   "state dicts only"):
        models.load_state_dict(path)


def test_values_that_are_not_tensors_are_refused(tmp_path):
    path = tmp_path / "mixed.pth"
    torch.save({"w": torch.zeros(1), "epoch": 3, "name": "x"}, path)
    with pytest.raises(models.NotAStateDict, match="2 entries are not tensors: 'epoch' \\(int\\), 'name' \\(str\\)"):
        models.load_state_dict(path)
    torch.save([torch.zeros(1)], path)
    with pytest.raises(models.NotAStateDict, match="holds a list"):
        models.load_state_dict(path)


def test_expected_keys_report_missing_unexpected_and_shapes(tmp_path):
    path = tmp_path / "net.pth"
    torch.save({"conv.weight": torch.zeros(4, 3, 5, 5), "head.weight": torch.zeros(2)}, path)
    with pytest.raises(models.StateDictMismatch) as info:
        models.load_state_dict(path, expected=TINY_SHAPES)
    message = str(info.value)
    assert "1 missing keys: conv.bias" in message
    assert "1 unexpected keys: head.weight" in message
    assert "conv.weight: expected (4, 3, 3, 3), got (4, 3, 5, 5)" in message


def test_long_key_lists_are_cut_at_ten(tmp_path):
    path = tmp_path / "empty.pth"
    torch.save({}, path)
    expected = {f"layer{i}.weight": (1,) for i in range(25)}
    with pytest.raises(models.StateDictMismatch, match="25 missing keys: .*layer9.weight and 15 more"):
        models.load_state_dict(path, expected=expected)


def test_unknown_names_and_missing_paths_are_told_apart(published, tmp_path):
    with pytest.raises(models.UnknownModel, match="did you mean 'test-tiny'"):
        models.load_state_dict("test-tinyy")
    with pytest.raises(models.WeightsError, match="absent.pth does not exist"):
        models.load_state_dict(str(tmp_path / "absent.pth"))


@pytest.mark.parametrize("version, ok", [("2.10.0", True), ("2.15.0+cu132", True), ("3.0.1", True),
                                         ("2.10.0a0+git1234", True), ("2.9.1", False), ("2.6.0+cpu", False),
                                         ("1.13.1", False), ("nightly", False)])
def test_torch_version_check(version, ok):
    if ok:
        models.check_torch_version(version)
    else:
        with pytest.raises(models.TorchVersionError, match=re.escape(f"torch {version} is too old")):
            models.check_torch_version(version)


# ----------------------------------------------------------------- CLI


def test_cli_list_pull_path_and_cached_state(published, torch_home):
    runner = CliRunner()
    listed = runner.invoke(cli, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    row = next(r for r in json.loads(listed.stdout) if r["name"] == "test-tiny")
    assert row["cached"] is False and row["stage"] == "colorize" and row["license"] == LICENSE
    assert row["path"] == str(models.cache_path(published.spec))

    pulled = runner.invoke(cli, ["models", "pull", "test-tiny", "--no-progress"])
    assert pulled.exit_code == 0, pulled.output
    assert "test-tiny: downloaded" in pulled.output
    again = runner.invoke(cli, ["models", "pull", "test-tiny"])
    assert "test-tiny: cached" in again.output

    row = next(r for r in json.loads(runner.invoke(cli, ["models", "list", "--json"]).stdout)
               if r["name"] == "test-tiny")
    assert row["cached"] is True
    table = runner.invoke(cli, ["models", "list"]).output
    assert "test-tiny" in table and "yes" in table

    models.cache_path(published.spec).write_bytes(b"\0" * len(published.data))  # damaged, right size
    repaired = runner.invoke(cli, ["models", "pull", "test-tiny", "--no-progress"])
    assert repaired.exit_code == 0 and "test-tiny: downloaded" in repaired.stdout
    assert models.cache_path(published.spec).read_bytes() == published.data
    forced = runner.invoke(cli, ["models", "pull", "test-tiny", "--force", "--no-progress"])
    assert "test-tiny: downloaded" in forced.stdout

    path = runner.invoke(cli, ["models", "path", "test-tiny"])
    assert path.exit_code == 0 and path.stdout.strip() == str(models.cache_path(published.spec))


def test_cli_import_and_path_before_download(published, tmp_path, torch_home):
    runner = CliRunner()
    before = runner.invoke(cli, ["models", "path", "test-tiny"])
    assert before.exit_code == 0 and not Path(before.stdout.strip()).exists()
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(b"not it")
    refused = runner.invoke(cli, ["models", "import", "test-tiny", str(wrong)])
    assert refused.exit_code == 2 and "not the expected file" in refused.output
    good = tmp_path / "good.pth"
    good.write_bytes(published.data)
    imported = runner.invoke(cli, ["models", "import", "test-tiny", str(good)])
    assert imported.exit_code == 0, imported.output
    assert Path(before.stdout.strip()).read_bytes() == published.data


def test_cli_bad_name_exits_2_with_did_you_mean(published):
    for args in (["models", "pull", "test-tinny"], ["models", "path", "test-tinny"],
                 ["models", "import", "test-tinny", "x.pth"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert "did you mean 'test-tiny'" in result.output


def test_cli_pull_offline_exits_2_with_the_import_hint(torch_home, imgflow_register, closed_port_url):
    spec = ModelSpec(name="test-offline", url=closed_port_url, license=LICENSE, stage="s")
    imgflow_register(ModelsPlugin(spec), name="offline-plugin")
    result = CliRunner().invoke(cli, ["models", "pull", "test-offline", "--no-progress"])
    assert result.exit_code == 2
    assert "imgflow models import test-offline FILE" in result.output


def test_importing_the_modules_does_not_import_torch():
    code = ("import sys, imgflow.cli, imgflow.cli.models, imgflow.models; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    env = {k: v for k, v in os.environ.items() if k != "IMGFLOW_LOAD_PLUGINS"}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == 0


def test_weights_parameter_resolution_and_fingerprint_are_shared_rules(tmp_path):
    from imgflow import models

    resolve = lambda p: (tmp_path / p).resolve()  # noqa: E731
    assert models.resolve_weights(None, "colorize-eccv16", resolve) == "colorize-eccv16"
    assert models.resolve_weights("colorize-siggraph17", "x", resolve) == "colorize-siggraph17"
    assert models.resolve_weights("random", "x", resolve, keywords=("random",)) == "random"
    assert models.resolve_weights("https://h/x-0123abcd.pth", "x", resolve) == "https://h/x-0123abcd.pth"
    assert models.resolve_weights("ckpt/model.pth", "x", resolve) == tmp_path / "ckpt" / "model.pth"

    assert models.weights_fingerprint("colorize-siggraph17") == {"weights": "colorize-siggraph17@df00044c"}
    assert models.weights_fingerprint("https://h/x.pth") == {"weights": "https://h/x.pth"}
    missing = tmp_path / "nope.pth"
    assert models.weights_fingerprint(missing) == {"weights": str(missing), "missing": True}
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"12345")
    first = models.weights_fingerprint(ckpt)
    assert first["size"] == 5
    ckpt.write_bytes(b"123456")
    assert models.weights_fingerprint(ckpt) != first  # a replaced checkpoint re-runs the items
    # a plugin's own table answers when its models are not registered (plugin not loaded)
    known = {"mine": "https://h/mine-89abcdef.pth"}
    assert models.weights_fingerprint("mine", known) == {"weights": "mine@89abcdef"}
    assert models.weights_fingerprint("other") == {"weights": "other@unregistered"}
