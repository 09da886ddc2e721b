"""The stage chain on its own: stages applied to decoded inputs with no executor, no threads,
no queues and no files written, as the Ray executor runs it inside an actor."""

from __future__ import annotations

import threading

import pytest
import torch

from imgflow.config import load_pipeline
from imgflow.engine.chain import ChainInput, StageChain
from imgflow.io.decode import DecodeLimits, decode_file
from imgflow.testing import write_images
from tests.helpers import write_pipeline


@pytest.fixture
def decoded_inputs(tmp_path):
    paths = write_images(tmp_path / "in", 3, size=(24, 32), fmt="PNG")
    return [ChainInput(key=i, relpath=p.name, decoded=decode_file(p, DecodeLimits())) for i, p in enumerate(paths)]


def chain_of(tmp_path, stages):
    (tmp_path / "in").mkdir(exist_ok=True)
    pipe = write_pipeline(tmp_path / "p.toml", input=tmp_path / "in", output=tmp_path / "out", stages=stages)
    pipeline = load_pipeline(pipe)
    return StageChain(pipeline.build_stages(), device="cpu", seed=pipeline.run.seed)


def test_two_stages_run_on_a_batch_without_any_executor(tmp_path, decoded_inputs, test_plugin):
    chain = chain_of(tmp_path, [{"use": "invert"}, {"use": "tag", "label": "t"}])
    threads_before = threading.active_count()
    chain.setup()
    results = chain.run(decoded_inputs)
    chain.teardown()
    assert threading.active_count() == threads_before  # the chain starts nothing
    assert [r.input.key for r in results] == [0, 1, 2]  # one result per input, in order
    for result in results:
        assert result.error is None and len(result.items) == 1
        item = result.items[0]
        original = torch.from_numpy(result.input.decoded.pixels.copy()).permute(2, 0, 1).float() / 255
        assert torch.allclose(item.image, 1.0 - original, atol=1e-6)  # invert ran first
        assert item.results["tag"]["label"] == "t"  # then tag, on the inverted image
        assert item.results["tag"]["mean"] == pytest.approx(float((1.0 - original).mean()), abs=1e-5)
        assert result.stages_s >= 0


def test_a_failing_input_fails_alone_and_the_rest_of_its_batch_is_kept(tmp_path, decoded_inputs, test_plugin):
    chain = chain_of(tmp_path, [{"use": "fail_on", "marker": "img0001"}, {"use": "invert"}])
    chain.setup()
    results = chain.run(decoded_inputs)
    by_name = {r.input.relpath: r for r in results}
    assert by_name["img0001.png"].error.code == "stage_error"
    assert "refusing img0001.png" in by_name["img0001.png"].error.message
    assert "conftest.py" in by_name["img0001.png"].error.message  # where it was raised
    assert by_name["img0001.png"].items == []
    assert all(by_name[n].error is None and len(by_name[n].items) == 1 for n in ("img0000.png", "img0002.png"))


def test_fan_out_items_come_back_with_their_input(tmp_path, decoded_inputs, test_plugin):
    chain = chain_of(tmp_path, [{"use": "split"}])
    chain.setup()
    results = chain.run(decoded_inputs[:2])
    assert [sorted(i.variant for i in r.items) for r in results] == [["_left", "_right"]] * 2
    assert all(i.source == r.input.relpath for r in results for i in r.items)


def test_batch_size_is_capped_by_stages_and_setup_resolves_the_device(tmp_path, test_plugin):
    chain = chain_of(tmp_path, [{"use": "invert"}])
    assert chain.batch_size(8) == 8
    chain.stages[0].batch_size = 3  # an instance attribute shadows the class's preference
    assert chain.batch_size(8) == 3
    chain.setup()
    assert chain.device == torch.device("cpu")
