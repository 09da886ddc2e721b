"""``[run] decode``: JPEGs left undecoded by the workers, decoded in batches with per-file fallback.

On this machine (no GPU) TorchCodec's own CPU decoder stands in for nvJPEG where a test drives
the GPU route: the batch call, the per-file retry, the comparison with the header and the CPU
worker that redoes a failed file are the same code either way. The tests marked ``gpu`` run the
real nvJPEG path and skip without CUDA.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from imgflow.config import load_pipeline
from imgflow.engine.chain import ChainInput
from imgflow.errors import ConfigError
from imgflow.executors.decode_route import DecodeRoute
from imgflow.io.decode import DecodeLimits, decode_file
from imgflow.io.decodepool import DecodePool
from imgflow.io.gpu_jpeg import decode_each
from imgflow.run import run_pipeline
from tests.helpers import write_pipeline
from tests.jpeg_variants import write_variants

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    return write_variants(tmp_path_factory.mktemp("variants"))


def test_workers_leave_plain_jpegs_for_the_gpu_and_decode_the_rest(variants):
    limits = DecodeLimits()
    for name in ("colour.jpg", "grey.jpg", "rotated.jpg"):
        cpu = decode_file(variants[name], limits)
        left = decode_file(variants[name], limits, defer_jpeg=True)
        assert left.encoded is not None, name
        assert left.encoded.data.tobytes() == variants[name].read_bytes()  # the bytes that were hashed
        assert left.encoded.path == str(variants[name])
        assert left.content_hash == cpu.content_hash
        assert left.pixels.shape == cpu.pixels.shape  # the shape to come (upright), for the memory budget
        assert left.meta.to_dict() == cpu.meta.to_dict()  # the manifest cannot tell which decoder ran
    assert decode_file(variants["rotated.jpg"], limits, defer_jpeg=True).meta.orientation == 6
    for name in ("cmyk.jpg", "icc.jpg", "trailer.jpg"):  # nvJPEG would not give the CPU path's pixels
        kept = decode_file(variants[name], limits, defer_jpeg=True)
        assert kept.encoded is None, name
        assert np.array_equal(kept.pixels, decode_file(variants[name], limits).pixels), name
    with pytest.raises(Exception) as refused:  # the caps still apply before anything is left undecoded
        decode_file(variants["colour.jpg"], DecodeLimits(max_pixels=100), defer_jpeg=True)
    assert refused.value.code == "too_many_pixels"


def test_the_pool_asks_per_file_and_hands_the_bytes_back(variants):
    answers = iter([True, False])
    with DecodePool(workers=1, limits=DecodeLimits(), defer_jpeg=lambda: next(answers)) as pool:
        outcomes = {key: outcome for key, outcome, _s in pool.imap(
            [("left", variants["colour.jpg"]), ("decoded", variants["colour.jpg"])])}
    left, decoded = outcomes["left"], outcomes["decoded"]
    assert left.encoded.data.tobytes() == variants["colour.jpg"].read_bytes()
    assert left.pixels.shape == decoded.pixels.shape and decoded.encoded is None
    assert left.meta.to_dict() == decoded.meta.to_dict()


def test_one_bad_file_never_fails_the_batch(variants):
    data = [torch.from_numpy(np.frombuffer(variants[n].read_bytes(), np.uint8).copy())
            for n in ("colour.jpg", "damaged.jpg", "grey.jpg")]
    outcomes = decode_each(data, [False, False, True], torch.device("cpu"))
    assert isinstance(outcomes[1], str) and "RuntimeError" in outcomes[1]
    assert outcomes[0].shape == (3, 48, 64) and outcomes[2].shape == (3, 48, 64)
    assert torch.equal(outcomes[2][0], outcomes[2][1])  # grey: three equal channels, as the CPU path


def _inputs(paths):
    limits = DecodeLimits()
    return [ChainInput(key=p.name, relpath=p.name, decoded=decode_file(p, limits, defer_jpeg=True)) for p in paths]


def test_resolve_decodes_the_batch_and_a_file_it_cannot_goes_to_a_cpu_worker(variants):
    paths = [variants[n] for n in ("colour.jpg", "damaged.jpg", "rotated.jpg", "grey.jpg")]
    inputs = _inputs(paths)
    lying = inputs[3].decoded.meta  # a header size nvJPEG's result disagrees with: redone on the CPU
    lying.width, lying.height = 99, 7
    route = DecodeRoute("gpu", DecodeLimits(), timeout_s=30)
    try:
        ready, failed = route.resolve(inputs, torch.device("cpu"))
    finally:
        route.close()
    assert [f.input.relpath for f in failed] == ["damaged.jpg"]
    assert failed[0].error.code == "decode_error"  # the CPU decoder's verdict, naming the file
    assert "damaged.jpg" in failed[0].error.message
    assert [i.relpath for i in ready] == ["colour.jpg", "rotated.jpg", "grey.jpg"]
    for one, path in zip(ready[:2], paths[:3:2]):
        cpu = torch.from_numpy(decode_file(path, DecodeLimits()).pixels.copy()).permute(2, 0, 1)
        assert one.decoded.tensor is not None and one.decoded.encoded is None
        assert (one.decoded.tensor.int() - cpu.int()).abs().max() <= 1  # EXIF orientation applied too
        assert one.decoded.meta.notes[-1] == "decoded by nvJPEG on cpu"
    redone = ready[2].decoded
    assert redone.tensor is None and redone.encoded is None and redone.pixels.shape == (48, 64, 3)
    assert "nvJPEG could not decode it (it decoded to 64x48, the header says 99x7)" in redone.meta.notes[-1]


def _pipeline(tmp_path, decode, **run):
    inputs = tmp_path / "in"
    return load_pipeline(write_pipeline(tmp_path / "p.toml", input=inputs, output=tmp_path / "out",
                                        stages=[{"use": "flip_horizontal", "p": 1.0}],
                                        run={"decode": decode, "workers": 1, **run}))


def test_the_gpu_route_through_a_whole_run(tmp_path, variants, monkeypatch):
    """Everything but nvJPEG itself: the CPU stands in for the GPU (TorchCodec decodes there)."""
    import imgflow.io.gpu_jpeg as gpu_jpeg

    (tmp_path / "in").mkdir()
    for name in ("colour.jpg", "grey.jpg", "rotated.jpg", "cmyk.jpg", "damaged.jpg"):
        (tmp_path / "in" / name).write_bytes(variants[name].read_bytes())
    monkeypatch.setattr(gpu_jpeg, "nvjpeg_problem", lambda device: None)  # the CPU stands in for the GPU
    pipe = _pipeline(tmp_path, "cpu", device="cpu")
    pipe.run = pipe.run.model_copy(update={"decode": "gpu"})  # what the file check refuses with CPU stages
    result = run_pipeline(pipe, echo=lambda m: None)
    assert result.counts["done"] == 4 and result.counts["failed"] == 1
    records = {r["input"]: r for r in map(json.loads, (tmp_path / "out" / "manifest.jsonl").read_text().splitlines())}
    assert records["damaged.jpg"]["error"]["code"] == "decode_error"
    assert not (tmp_path / "out" / "damaged.jpg").exists()  # never the input written as output
    for name in ("colour.jpg", "grey.jpg", "rotated.jpg"):
        assert "decoded by nvJPEG on cpu" in records[name]["meta"]["notes"]
    assert "notes" not in records["cmyk.jpg"]["meta"]  # decoded by a worker, as always
    assert records["rotated.jpg"]["meta"]["width"] == 40  # upright


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: see the gpu-marked tests")
def test_without_cuda_gpu_is_a_config_error_and_auto_picks_cpu(tmp_path, variants):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "colour.jpg").write_bytes(variants["colour.jpg"].read_bytes())
    with pytest.raises(ConfigError) as refused:
        run_pipeline(_pipeline(tmp_path, "gpu"), echo=lambda m: None)
    assert refused.value.exit_code == 2
    assert 'decode = "gpu", but this machine has no CUDA device (the stages run on cpu)' in str(refused.value)
    assert not (tmp_path / "out").exists()  # a first run that stops this way creates nothing
    said: list[str] = []
    result = run_pipeline(_pipeline(tmp_path, "auto"), echo=said.append)
    assert result.counts["done"] == 1
    assert said == ['imgflow: decode = "auto" picked cpu: this machine has no CUDA device (the stages run on cpu)']


# ------------------------------------------------------------------------------------ on a GPU


@pytest.mark.gpu
@needs_cuda
def test_nvjpeg_decodes_as_the_cpu_path_and_bad_files_fail_alone(tmp_path, variants):
    (tmp_path / "in").mkdir()
    names = ("colour.jpg", "grey.jpg", "rotated.jpg", "cmyk.jpg", "damaged.jpg")
    for name in names:
        (tmp_path / "in" / name).write_bytes(variants[name].read_bytes())
    pipe = load_pipeline(write_pipeline(tmp_path / "p.toml", input=tmp_path / "in", output=tmp_path / "out",
                                        stages=[{"use": "flip_horizontal", "p": 0.0}], out={"format": "png"},
                                        run={"decode": "gpu", "device": "cuda:0", "workers": 1}))
    result = run_pipeline(pipe, echo=lambda m: None)
    assert (result.counts["done"], result.counts["failed"]) == (4, 1)
    records = {r["input"]: r for r in map(json.loads, (tmp_path / "out" / "manifest.jsonl").read_text().splitlines())}
    assert records["damaged.jpg"]["error"]["code"] == "decode_error"
    from PIL import Image

    for name in ("colour.jpg", "grey.jpg", "rotated.jpg"):
        assert "decoded by nvJPEG on cuda:0" in records[name]["meta"]["notes"]
        cpu = decode_file(variants[name], DecodeLimits()).pixels.astype(int)
        gpu = np.asarray(Image.open(tmp_path / "out" / name.replace(".jpg", ".png")).convert("RGB")).astype(int)
        assert gpu.shape == cpu.shape, name
        assert np.abs(gpu - cpu).mean() < 2.0, name  # different IDCT and chroma upsampling, same picture


@pytest.mark.gpu
@needs_cuda
def test_auto_measures_on_the_gpu_and_says_what_it_picked(tmp_path, variants):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "colour.jpg").write_bytes(variants["colour.jpg"].read_bytes())
    said: list[str] = []
    result = run_pipeline(_pipeline(tmp_path, "auto", device="cuda"), echo=said.append)
    assert result.counts["done"] == 1
    picked = [m for m in said if 'decode = "auto" picked' in m]
    assert len(picked) == 1 and "img/s" in picked[0], said
