"""Several GPUs, out-of-memory batches, and the ``[run] device``/``decode`` keys.

On the CPU: batch halving is driven by a test stage that raises torch's own OutOfMemoryError
for batches above a size, and the runner's threads are run with two chains on the CPU. The tests
marked ``gpu`` provoke a real CUDA out-of-memory error and use every visible GPU.
"""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import Field

from imgflow import Batch, Params, Stage, hookimpl
from imgflow.config import load_pipeline
from imgflow.config.overrides import Overrides
from imgflow.engine.chain import ChainInput, StageChain
from imgflow.errors import ValidationFailed
from imgflow.executors.chains import ChainRunner, extra_devices
from imgflow.io.decode import DecodeLimits, decode_file
from imgflow.run import run_pipeline
from imgflow.testing import write_images
from tests.helpers import write_pipeline

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class OomAbove(Stage):
    name = "oom_above"
    description = "raises torch.OutOfMemoryError for batches larger than `limit` (test stage)"
    works_on_uint8 = True

    class Params(Params):
        limit: int = Field(2, description="the largest batch that fits")
        real: bool = Field(False, description="allocate on the device instead of raising (GPU tests)")

    def setup(self, device):
        self.device, self.seen = device, []

    def process(self, batch: Batch) -> Batch:
        self.seen.append(len(batch.items))
        if len(batch.items) > self.params.limit:
            if self.params.real:  # more than the whole GPU holds: the allocator's own error
                total = torch.cuda.get_device_properties(self.device).total_memory
                torch.empty(2 * total, dtype=torch.uint8, device=self.device)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (test stage)")
        for item in batch.items:
            item.results[self.id] = {"batch": len(batch.items)}
        return batch


class OomPlugin:
    @hookimpl
    def register_stages(self, register):
        register(OomAbove)


@pytest.fixture
def oom_plugin(imgflow_register):
    imgflow_register(OomPlugin(), name="imgflow-oom-tests")


def _chain(tmp_path, limit, device="cpu"):
    (tmp_path / "in").mkdir(exist_ok=True)
    pipe = load_pipeline(write_pipeline(tmp_path / "p.toml", input=tmp_path / "in", output=tmp_path / "out",
                                        stages=[{"use": "oom_above", "limit": limit}]))
    return StageChain(pipe.build_stages(), device=device, seed=0)


def _inputs(tmp_path, count):
    paths = write_images(tmp_path / "in", count, size=(16, 24))
    return [ChainInput(key=i, relpath=p.name, decoded=decode_file(p, DecodeLimits())) for i, p in enumerate(paths)]


def test_out_of_memory_halves_the_batch_and_later_batches_stay_small(tmp_path, oom_plugin):
    chain = _chain(tmp_path, limit=2)
    chain.setup()
    inputs = _inputs(tmp_path, 5)
    results = chain.run(inputs)
    assert [r.input.key for r in results] == [0, 1, 2, 3, 4]  # one result each, in order
    assert all(r.error is None and len(r.items) == 1 for r in results)
    stage = chain.stages[0]
    assert stage.seen == [5, 3, 2, 1, 2]  # 5 -> halves of 3 and 2; 3 -> 2 and 1
    assert chain.max_inputs == 2
    stage.seen.clear()
    assert all(r.error is None for r in chain.run(inputs))
    assert stage.seen == [2, 2, 1]  # no failed pass any more


def test_an_image_that_does_not_fit_alone_fails_with_gpu_memory(tmp_path, oom_plugin):
    chain = _chain(tmp_path, limit=0)
    chain.setup()
    results = chain.run(_inputs(tmp_path, 2))
    assert [r.error.code for r in results] == ["gpu_memory", "gpu_memory"]
    assert all(r.items == [] for r in results)
    message = results[0].error.message
    assert message.startswith("img0000.jpg: the stages ran out of memory on cpu with this 24x16 image alone")
    assert "OutOfMemoryError: CUDA out of memory" in message and "(fix:" in message


def test_a_run_records_gpu_memory_writes_nothing_for_it_and_says_it_halved(tmp_path, oom_plugin):
    write_images(tmp_path / "in", 3, size=(16, 24))
    pipe = load_pipeline(write_pipeline(tmp_path / "p.toml", input=tmp_path / "in", output=tmp_path / "out",
                                        stages=[{"use": "oom_above", "limit": 0}],
                                        run={"device": "cpu", "batch_size": 3, "workers": 1}))
    said: list[str] = []
    result = run_pipeline(pipe, echo=said.append)
    assert result.exit_code == 1 and result.counts == {**result.counts, "done": 0, "failed": 3}
    records = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert {r["error"]["code"] for r in records} == {"gpu_memory"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".jpg") == []
    assert any("cpu ran out of memory on a batch; its batches now hold at most 1 image(s)" in m for m in said)


def test_two_chains_in_threads_run_every_batch_once(tmp_path, oom_plugin):
    chains = [_chain(tmp_path, limit=8), _chain(tmp_path, limit=8)]
    for chain in chains:
        chain.setup()
    inputs = _inputs(tmp_path, 12)
    seen = []
    with ChainRunner(chains) as runner:
        for at in range(0, 12, 3):
            seen.extend(runner.submit(inputs[at:at + 3]))
        seen.extend(runner.finish())
        assert runner.poll() == []
    assert sorted(r.input.key for batch in seen for r in batch) == list(range(12))
    assert all(r.error is None for batch in seen for r in batch)
    assert sum(len(c.stages[0].seen) for c in chains) == 4  # each batch ran once, on some chain


def test_what_a_chain_thread_raises_reaches_the_main_thread(tmp_path, oom_plugin):
    class Broken:
        def resolve(self, inputs, device):
            raise RuntimeError("a bug in the decode route")

        def close(self):
            pass

    chains = [_chain(tmp_path, limit=8), _chain(tmp_path, limit=8)]
    for chain in chains:
        chain.setup()
    with pytest.raises(RuntimeError, match="a bug in the decode route"), ChainRunner(chains, Broken()) as runner:
        runner.submit(_inputs(tmp_path, 1))
        runner.finish()


def test_a_run_on_two_chains_records_every_item_once_with_the_same_outputs(tmp_path, monkeypatch):
    """The local executor's side of several GPUs, with two chains on the CPU standing in."""
    import imgflow.executors.chains as chains

    write_images(tmp_path / "in", 7, size=(24, 32))
    outputs, said = {}, []
    for count in (1, 2):
        monkeypatch.setattr(chains, "extra_devices", lambda spec, first, n=count: ["cpu"] * (n - 1))
        out = tmp_path / f"out{count}"
        pipe = load_pipeline(write_pipeline(tmp_path / f"p{count}.toml", input=tmp_path / "in", output=out,
                                            stages=[{"use": "color_jitter", "brightness": 0.5}], out={"format": "png"},
                                            run={"device": "cpu", "batch_size": 2, "workers": 1}))
        result = run_pipeline(pipe, echo=said.append)
        assert result.counts["done"] == 7 and result.exit_code == 0
        lines = (out / "manifest.jsonl").read_text().splitlines()
        assert len(lines) == 7  # one record per input
        outputs[count] = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert "imgflow: 2 stage chains, one per GPU: cpu, cpu" in said
    assert outputs[2] == outputs[1] and len(outputs[1]) == 7  # seeded per item, whichever chain ran it


def test_which_devices_get_a_chain():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert extra_devices(["cuda:0", "cuda:2"], torch.device("cuda:0")) == ["cuda:2"]
    assert extra_devices("auto", cpu) == [] and extra_devices("cpu", cpu) == []
    assert extra_devices("cuda:1", torch.device("cuda:1")) == []  # one named GPU: that one only
    if not torch.cuda.is_available():
        return
    assert extra_devices("cuda", cuda) == [f"cuda:{i}" for i in range(1, torch.cuda.device_count())]


def _problems(tmp_path, run, stages=None, overrides=None):
    (tmp_path / "in").mkdir(exist_ok=True)
    path = write_pipeline(tmp_path / "p.toml", input=tmp_path / "in", output=tmp_path / "out",
                          stages=stages or [{"use": "resize", "size": 8}], run=run)
    try:
        return load_pipeline(path, overrides)
    except ValidationFailed as failed:
        return [str(p) for p in failed.problems]


def test_device_and_decode_are_checked_from_the_file(tmp_path):
    def one(run, **kw):
        found = _problems(tmp_path, run, **kw)
        assert isinstance(found, list) and len(found) == 1, found
        return found[0]

    assert "[run] decode" in one({"decode": "gpu", "device": "cpu"})
    assert "decode" in one({"decode": "fast"})
    assert "cuda:0 is listed twice" in one({"device": ["cuda:0", "cuda:0"]})
    assert "a device list holds CUDA devices written cuda:N, got 'cpu'" in one({"device": ["cpu"]})
    assert "at least one device" in one({"device": []})
    assert "a device list is for the local executor" in one({"device": ["cuda:0"], "executor": "ray"})
    assert "Ray's decode actors decode on CPUs" in one({"decode": "gpu", "executor": "ray", "device": "auto"})
    assert "training runs" in one({"decode": "gpu"}, stages=[{"use": "train.classifier", "pretrained": False}])
    pipe = _problems(tmp_path, {"decode": "auto"}, overrides=Overrides(device="cuda:0,cuda:1"))
    assert pipe.run.device == ["cuda:0", "cuda:1"] and pipe.run.decode == "auto"


# ------------------------------------------------------------------------------------ on a GPU


@pytest.mark.gpu
@needs_cuda
def test_a_real_cuda_out_of_memory_error_halves_the_batch(tmp_path, oom_plugin):
    (tmp_path / "in").mkdir(exist_ok=True)
    pipe = load_pipeline(write_pipeline(tmp_path / "p.toml", input=tmp_path / "in", output=tmp_path / "out",
                                        stages=[{"use": "oom_above", "limit": 1, "real": True}]))
    chain = StageChain(pipe.build_stages(), device="cuda:0", seed=0)
    chain.setup()
    results = chain.run(_inputs(tmp_path, 3))
    assert all(r.error is None for r in results) and chain.max_inputs == 1
    assert chain.stages[0].seen == [3, 2, 1, 1, 1]


@pytest.mark.gpu
@needs_cuda
def test_device_cuda_uses_every_visible_gpu_and_gives_the_same_outputs(tmp_path):
    write_images(tmp_path / "in", 6, size=(32, 48))
    outputs = {}
    for device in ("cuda", "cuda:0"):
        out = tmp_path / device.replace(":", "")
        pipe = load_pipeline(write_pipeline(tmp_path / f"{out.name}.toml", input=tmp_path / "in", output=out,
                                            stages=[{"use": "color_jitter", "brightness": 0.5}], out={"format": "png"},
                                            run={"device": device, "batch_size": 2, "workers": 1}))
        said: list[str] = []
        assert run_pipeline(pipe, echo=said.append).counts["done"] == 6
        if device == "cuda" and torch.cuda.device_count() > 1:
            assert any("stage chains, one per GPU" in m for m in said), said
        outputs[device] = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert outputs["cuda"] == outputs["cuda:0"]  # seeded per item: the GPU that ran it does not matter
