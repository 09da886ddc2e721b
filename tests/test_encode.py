"""Tests for imgflow.io (encode, naming, atomic): formats, naming, safe targets, atomic writes, temp-file sweeping.

Every encoded image is decoded back with Pillow (and tifffile / a small reference PNG reader for
16-bit colour, which Pillow reads only at 8 bits). Writes go to real folders under tmp_path.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from imgflow.io.atomic import atomic_write, safe_target, sweep_temp_files
from imgflow.io.encode import encode_image
from imgflow.io.naming import EXTENSIONS, WRITABLE_FORMATS, output_relpath, resolve_format, validate_template
from imgflow.errors import ConfigError, ItemError

H, W = 24, 40


def gradient(h: int = H, w: int = W) -> np.ndarray:
    """A smooth colour image (H, W, 3) in [0, 1]: what lossy codecs handle well."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x / (w - 1), y / (h - 1), (x + y) / (w + h - 2)], axis=-1)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def levels16(h: int = H, w: int = W, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Random 16-bit levels, including the extremes 0 and 65535."""
    rng = np.random.default_rng(seed)
    levels = rng.integers(0, 65536, size=(h, w, channels), dtype=np.int64)
    levels[0, 0] = 0
    levels[0, 1] = 65535
    return levels


def read_png16(data: bytes) -> np.ndarray:
    """A reference PNG reader for 16-bit files: chunks with CRC check, inflate, unfilter.

    Pillow reduces 16-bit colour PNGs to 8 bits, so exact levels are checked with this instead.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload) & 0xFFFFFFFF, kind
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", payload)
        elif kind == b"IDAT":
            idat += payload
        pos += 12 + length
    width, height, depth, color_type, _, _, interlace = header
    assert depth == 16 and interlace == 0
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    bpp, stride = 2 * channels, 2 * channels * width
    raw = zlib.decompress(idat)
    out = np.zeros((height, stride), dtype=np.int64)
    prior = np.zeros(stride, dtype=np.int64)
    for row in range(height):
        kind = raw[row * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, row * (stride + 1) + 1).astype(np.int64)
        cur = np.zeros(stride, dtype=np.int64)
        for i in range(stride):
            a = cur[i - bpp] if i >= bpp else 0
            b = prior[i]
            c = prior[i - bpp] if i >= bpp else 0
            predictor = [0, a, b, (a + b) // 2][kind] if kind < 4 else _paeth(a, b, c)
            cur[i] = (line[i] + predictor) % 256
        out[row], prior = cur, cur
    return (out[:, 0::2] * 256 + out[:, 1::2]).reshape(height, width, channels)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


# --------------------------------------------------------------------------- formats and names


def test_formats_and_extensions() -> None:
    assert WRITABLE_FORMATS == ("jpeg", "png", "webp", "tiff")
    assert [EXTENSIONS[f] for f in WRITABLE_FORMATS] == ["jpg", "png", "webp", "tif"]


@pytest.mark.parametrize(
    ("fmt", "source", "expected"),
    [
        ("same", "JPEG", "jpeg"),
        ("same", "MPO", "jpeg"),
        ("same", "PNG", "png"),
        ("same", "WEBP", "webp"),
        ("same", "TIFF", "tiff"),
        ("same", "BMP", "png"),
        ("same", "GIF", "png"),
        ("same", "", "png"),
        ("JPEG", "PNG", "jpeg"),
        ("jpg", "PNG", "jpeg"),
        ("tif", "PNG", "tiff"),
        ("webp", "JPEG", "webp"),
    ],
)
def test_resolve_format(fmt: str, source: str, expected: str) -> None:
    assert resolve_format(fmt, source) == expected


def test_resolve_format_rejects_unknown_with_choices() -> None:
    with pytest.raises(ConfigError, match=r"\[output\] format: expected one of .*png.*got 'gif'"):
        resolve_format("gif", "PNG")


@pytest.mark.parametrize(
    ("source", "template", "variant", "fmt", "expected"),
    [
        ("a.png", "{stem}{variant}.{ext}", "", "jpeg", "a.jpg"),
        ("sub/dir/a.png", "{stem}{variant}.{ext}", "_aug1", "webp", "sub/dir/a_aug1.webp"),
        ("sub/a.tar.png", "{stem}.{ext}", "", "tiff", "sub/a.tar.tif"),
        ("sub/a.png", "{name}.{ext}", "", "png", "sub/a.png.png"),
        ("x/y/a.png", "{parent}_{stem}.{ext}", "", "png", "x/y/y_a.png"),
        ("a.png", "masks/{stem}{variant}.{ext}", "", "png", "masks/a.png"),
        ("caf\\xe9.png", "{stem}.{ext}", "", "jpeg", "caf\\xe9.jpg"),
    ],
)
def test_output_relpath(source: str, template: str, variant: str, fmt: str, expected: str) -> None:
    assert output_relpath(source, template, variant, fmt) == expected


def test_output_relpath_default_template_mirrors_the_tree() -> None:
    assert output_relpath("sub/dir/name.jpg", variant="", fmt="png") == "sub/dir/name.png"


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{stem}{bogus}.{ext}", "unknown placeholder {bogus}"),
        ("{stem.__class__}.{ext}", "unknown placeholder"),
        ("{stem!r}.{ext}", "no format spec"),
        ("{stem:>10}.{ext}", "no format spec"),
        ("{}.jpg", "empty placeholder"),
        ("{stem.{ext}", "template"),
        ("/abs/{stem}.{ext}", "absolute"),
        ("../{stem}.{ext}", ".."),
        ("a/../{stem}.{ext}", ".."),
        ("", "empty or invalid"),
        ("{variant}", "empty or invalid"),
        ("{parent}/{stem}.{ext}", "empty or invalid"),
        ("{stem}/", "empty or invalid"),
    ],
)
def test_validate_template_rejects(template: str, words: str) -> None:
    message = validate_template(template)
    assert message is not None and words in message, message
    with pytest.raises(ConfigError, match=r"\[output\] naming"):
        output_relpath("a.png", template, "", "png")


@pytest.mark.parametrize("template", ["{stem}{variant}.{ext}", "out_{name}", "x/{stem}.{ext}"])
def test_validate_template_accepts(template: str) -> None:
    assert validate_template(template) is None


# --------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("fmt", WRITABLE_FORMATS)
def test_round_trip_every_format_from_a_torch_tensor(fmt: str) -> None:
    rgb = gradient()
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float()  # the batch layout (3, H, W)
    data = encode_image(tensor, None, fmt, 92, 8)
    image = decode(data)
    assert image.format == {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "tiff": "TIFF"}[fmt]
    assert image.size == (W, H) and image.mode == "RGB"
    back = np.asarray(image).astype(np.float64) / 255
    error = np.abs(back - rgb).max()
    if fmt in ("png", "tiff"):
        assert np.array_equal(np.asarray(image), np.rint(rgb * 255).astype(np.uint8))
    else:
        assert np.abs(back - rgb).mean() < 0.02, error


def test_numpy_input_and_quantisation_rounds_and_clamps() -> None:
    values = np.array([[-0.5, 0.0, 0.5 / 255, 0.4 / 255, 2.5 / 255, 0.5, 1.0, 1.7, np.nan]])
    rgb = np.repeat(values[..., None], 3, axis=-1)  # equal channels: written as grayscale
    image = decode(encode_image(rgb, None, "png", 92, 8))
    assert image.mode == "L"
    # Halves round up (2.5 -> 3, not to even 2); out-of-range clamps; NaN becomes 0.
    assert np.asarray(image).tolist() == [[0, 0, 1, 0, 3, 128, 255, 255, 0]]


def test_jpeg_quality_changes_size_and_fidelity() -> None:
    rng = np.random.default_rng(1)
    rgb = np.clip(gradient(64, 64) + rng.normal(0, 0.05, (64, 64, 3)), 0, 1)
    low = encode_image(rgb, None, "jpeg", 20, 8)
    high = encode_image(rgb, None, "jpeg", 95, 8)
    assert len(low) < len(high) * 0.6
    err_low = np.abs(np.asarray(decode(low)) / 255 - rgb).mean()
    err_high = np.abs(np.asarray(decode(high)) / 255 - rgb).mean()
    assert err_high < err_low


def test_jpeg_flattens_alpha_onto_white() -> None:
    rgb = np.zeros((H, W, 3))
    alpha = np.ones((1, H, W))
    alpha[0, :, : W // 2] = 0.0  # left half transparent black -> white
    rgb[..., 0] = 1.0  # red, so the result stays colour
    image = decode(encode_image(rgb, alpha, "jpeg", 95, 8))
    assert image.mode == "RGB"
    pixels = np.asarray(image).astype(int)
    assert np.all(np.abs(pixels[4:-4, 4 : W // 2 - 4] - 255) <= 6)
    assert np.all(np.abs(pixels[4:-4, W // 2 + 4 : -4] - [255, 0, 0]) <= 12)


def test_png_keeps_alpha_exactly() -> None:
    rgb = gradient()
    alpha = torch.linspace(0, 1, W).repeat(H, 1)[None]  # (1, H, W)
    image = decode(encode_image(torch.from_numpy(rgb).permute(2, 0, 1), alpha, "png", 92, 8))
    assert image.mode == "RGBA"
    assert np.array_equal(
        np.asarray(image)[..., 3], np.rint(alpha[0].numpy() * 255).astype(np.uint8)
    )


def test_webp_keeps_alpha() -> None:
    rgb = gradient()
    alpha = np.tile(np.linspace(0, 1, W), (H, 1))
    image = decode(encode_image(rgb, alpha, "webp", 90, 8))
    assert image.mode == "RGBA"
    assert np.abs(np.asarray(image)[..., 3] / 255 - alpha).max() < 0.02
    assert decode(encode_image(rgb, None, "webp", 90, 8)).mode == "RGB"


def test_gray_images_are_written_as_one_channel() -> None:
    gray = np.repeat(gradient()[..., :1], 3, axis=-1)
    assert decode(encode_image(gray, None, "png", 92, 8)).mode == "L"
    assert decode(encode_image(gray, None, "jpeg", 92, 8)).mode == "L"
    assert decode(encode_image(gray, np.ones((H, W)), "tiff", 92, 8)).mode == "LA"
    assert decode(encode_image(gray, None, "webp", 92, 8)).mode == "RGB"  # WEBP has no gray


def test_16bit_gray_png_round_trips_exactly() -> None:
    levels = levels16(channels=1)[..., 0]
    image = torch.from_numpy(levels / 65535).float()[None].expand(3, H, W)
    data = encode_image(image, None, "png", 92, 16)
    decoded = decode(data)
    assert decoded.mode == "I;16"
    assert np.array_equal(np.asarray(decoded).astype(np.int64), levels)
    assert np.array_equal(read_png16(data)[..., 0], levels)


@pytest.mark.parametrize("with_alpha", [False, True])
def test_16bit_colour_png_round_trips_exactly(with_alpha: bool) -> None:
    levels = levels16(h=9, w=13, channels=4, seed=2)
    tensor = torch.from_numpy(levels[..., :3] / 65535).permute(2, 0, 1).float()
    alpha = torch.from_numpy(levels[..., 3] / 65535).float()[None] if with_alpha else None
    data = encode_image(tensor, alpha, "png", 92, 16)
    expected = levels if with_alpha else levels[..., :3]
    assert np.array_equal(read_png16(data), expected)
    # Pillow accepts the file too (it reduces 16-bit colour to the high byte).
    decoded = decode(data)
    assert decoded.mode == ("RGBA" if with_alpha else "RGB") and decoded.size == (13, 9)
    assert np.array_equal(np.asarray(decoded).astype(np.int64), expected >> 8)


def test_16bit_png_of_a_smooth_photo_compresses() -> None:
    levels = np.rint(gradient(128, 128) * 65535).astype(np.int64)
    data = encode_image(levels / 65535, None, "png", 92, 16)
    assert np.array_equal(read_png16(data)[:4], levels[:4])
    assert len(data) < levels.size * 2 / 4  # the adaptive filters do their job


@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_tiff_round_trips_exactly(channels: int) -> None:
    levels = levels16(channels=3, seed=3)
    if channels == 1:
        levels = np.repeat(levels[..., :1], 3, axis=-1)
    data = encode_image(levels / 65535, None, "tiff", 92, 16)
    back = tifffile.imread(io.BytesIO(data)).astype(np.int64)
    assert np.array_equal(back, levels[..., 0] if channels == 1 else levels)
    decoded = decode(data)
    if channels == 1:
        assert decoded.mode == "I;16"
        assert np.array_equal(np.asarray(decoded).astype(np.int64), levels[..., 0])
    else:
        assert np.array_equal(np.asarray(decoded).astype(np.int64), levels >> 8)


def test_16bit_tiff_with_alpha_round_trips_exactly() -> None:
    levels = levels16(channels=4, seed=4)
    levels[..., 1] = levels[..., 0]
    levels[..., 2] = levels[..., 0]  # gray + alpha: still written as RGBA for Pillow's sake
    data = encode_image(levels[..., :3] / 65535, levels[..., 3] / 65535, "tiff", 92, 16)
    assert np.array_equal(tifffile.imread(io.BytesIO(data)).astype(np.int64), levels)
    assert decode(data).mode == "RGBA"


def test_jpeg_and_webp_ignore_16_bits() -> None:
    rgb = gradient()
    assert encode_image(rgb, None, "jpeg", 90, 16) == encode_image(rgb, None, "jpeg", 90, 8)
    assert decode(encode_image(rgb, None, "webp", 90, 16)).mode == "RGB"


def test_encode_rejects_bad_layout_and_settings() -> None:
    with pytest.raises(ItemError, match="shape") as info:
        encode_image(np.zeros((H, W, 5)), None, "png", 92, 8)
    assert info.value.code == "stage_error"
    with pytest.raises(ItemError, match="alpha of shape") as info:
        encode_image(np.zeros((H, W, 3)), np.zeros((1, H + 1, W)), "png", 92, 8)
    assert info.value.code == "stage_error"
    with pytest.raises(ConfigError, match="bit_depth"):
        encode_image(np.zeros((H, W, 3)), None, "png", 92, 12)
    with pytest.raises(ConfigError, match="quality"):
        encode_image(np.zeros((H, W, 3)), None, "jpeg", 0, 8)


# --------------------------------------------------------------------------- safe targets


def test_safe_target_creates_parents_inside_root(tmp_path: Path) -> None:
    root = tmp_path / "out"
    target = safe_target(root, "a/b/c.png")
    assert target == root / "a" / "b" / "c.png"
    assert (root / "a" / "b").is_dir() and not target.exists()


@pytest.mark.parametrize(
    "relpath", ["../x.png", "a/../../x.png", "/etc/x.png", "a\x00b.png", "", "."]
)
def test_safe_target_refuses_escapes(tmp_path: Path, relpath: str) -> None:
    with pytest.raises(ItemError) as info:
        safe_target(tmp_path / "out", relpath)
    assert info.value.code == "write_error"
    assert "fix:" in info.value.message


def test_safe_target_refuses_symlinked_folder_leading_out(tmp_path: Path) -> None:
    root = tmp_path / "out"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ItemError, match="symlink") as info:
        safe_target(root, "escape/new/deeper/x.png")
    assert info.value.code == "write_error"
    assert list(outside.iterdir()) == []  # nothing created outside, not even a folder

    # A link that stays inside the root is fine.
    (root / "real").mkdir()
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    assert safe_target(root, "alias/x.png") == root / "alias" / "x.png"


def test_safe_target_reports_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"")
    with pytest.raises(ItemError, match="cannot create its folder") as info:
        safe_target(tmp_path, "a/b.png")
    assert info.value.code == "write_error"


# --------------------------------------------------------------------------- atomic writes


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".imgflow-tmp-" in p.name]


def test_atomic_write_writes_and_leaves_no_temp(tmp_path: Path) -> None:
    path = atomic_write(tmp_path, "sub/x.png", b"hello")
    assert path == tmp_path / "sub" / "x.png"
    assert path.read_bytes() == b"hello"
    assert temp_files(tmp_path) == []


def test_atomic_write_replaces_by_rename_not_in_place(tmp_path: Path) -> None:
    path = atomic_write(tmp_path, "x.png", b"old")
    with open(path, "rb") as reader:  # a reader of the old file keeps seeing complete old bytes
        old_inode = os.fstat(reader.fileno()).st_ino
        atomic_write(tmp_path, "x.png", b"new contents")
        assert reader.read() == b"old"
    assert path.read_bytes() == b"new contents"
    assert path.stat().st_ino != old_inode
    assert temp_files(tmp_path) == []


def test_atomic_write_without_replace_refuses_existing(tmp_path: Path) -> None:
    atomic_write(tmp_path, "x.png", b"first")
    with pytest.raises(ItemError) as info:
        atomic_write(tmp_path, "x.png", b"second", replace=False)
    assert info.value.code == "output_exists"
    assert str(tmp_path / "x.png") in info.value.message
    assert 'overwrite = "replace"' in info.value.message
    assert (tmp_path / "x.png").read_bytes() == b"first"
    assert atomic_write(tmp_path, "y.png", b"fresh", replace=False).read_bytes() == b"fresh"
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("relpath", ["../x.png", "/tmp/x.png", "link/x.png"])
def test_atomic_write_never_writes_outside_root(tmp_path: Path, relpath: str) -> None:
    root = tmp_path / "out"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ItemError) as info:
        atomic_write(root, relpath, b"data")
    assert info.value.code == "write_error"
    assert list(outside.iterdir()) == [] and not (tmp_path / "x.png").exists()


def test_atomic_write_onto_a_folder_fails_and_cleans_up(tmp_path: Path) -> None:
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(ItemError, match=r"taken\.png: cannot write") as info:
        atomic_write(tmp_path, "taken.png", b"data")
    assert info.value.code == "write_error"
    assert temp_files(tmp_path) == []  # the temp file was written, then removed


def test_atomic_write_into_read_only_folder(tmp_path: Path) -> None:
    """A real permission failure. Root ignores file modes, so as root a forked child drops to
    'nobody' first (in a folder directly under /tmp, which 'nobody' can reach)."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        try:
            with pytest.raises(ItemError) as info:
                atomic_write(folder, "x.png", b"data")
            code, message = info.value.code, info.value.message
        finally:
            folder.chmod(0o755)
    else:
        base = Path(tempfile.mkdtemp(prefix="imgflow-ro-"))
        try:
            base.chmod(0o755)
            folder = base / "ro"
            folder.mkdir()
            folder.chmod(0o555)
            code, message = _write_as_nobody(folder)
        finally:
            shutil.rmtree(base)
    assert code == "write_error", message
    assert "x.png" in message and "ermission denied" in message and "fix:" in message
    if os.geteuid() != 0:
        assert list(folder.iterdir()) == []  # no temp file left behind


def _write_as_nobody(folder: Path) -> tuple[str, str]:
    """Run atomic_write in a forked child with uid/gid 65534; return its error code and text."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            atomic_write(folder, "x.png", b"data")
            report = "none|no error raised"
        except ItemError as exc:
            report = f"{exc.code}|{exc.message}"
        except BaseException as exc:  # noqa: BLE001 - the child must report whatever happens
            report = f"other|{exc!r}"
        if os.listdir(folder):
            report = f"leftover|{os.listdir(folder)}"
        os.write(write, report.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        report = pipe.read().decode()
    os.waitpid(pid, 0)
    code, _, message = report.partition("|")
    return code, message


def test_temp_names_fit_long_file_names(tmp_path: Path) -> None:
    name = "é" * 120 + ".png"  # 244 bytes: the temp prefix and suffix must not push it past 255
    assert atomic_write(tmp_path, name, b"x").read_bytes() == b"x"
    assert temp_files(tmp_path) == []


def test_sweep_temp_files(tmp_path: Path) -> None:
    leftovers = [
        tmp_path / ".a.png.imgflow-tmp-0a1b2c",
        tmp_path / "s" / "d" / ".b.jpg.imgflow-tmp-ff",
    ]
    keep = [tmp_path / "a.png", tmp_path / "s" / "d" / "b.jpg", tmp_path / "s" / "imgflow-tmp-note"]
    for path in leftovers + keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / ".c.png.imgflow-tmp-01").write_bytes(b"x")
    (tmp_path / "linked").symlink_to(outside, target_is_directory=True)

    assert sweep_temp_files(tmp_path) == 2
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in keep)
    assert (outside / ".c.png.imgflow-tmp-01").exists()  # symlinked folders are not entered
    assert sweep_temp_files(tmp_path) == 0
    assert sweep_temp_files(tmp_path / "missing") == 0


def test_importing_encode_does_not_import_torch_numpy_or_pillow() -> None:
    code = (
        "import sys, imgflow.io.encode, imgflow.io.naming, imgflow.io.atomic\n"
        "bad = [m for m in ('torch', 'numpy', 'PIL', 'tifffile') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
