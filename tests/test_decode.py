"""Tests for imgflow.io.decode: every corpus file's outcome, modes, orientation, caps, and refusals.

Files are real files on disk (tests/hostile.py writes them); the Ghostscript and memory-cap
tests run a real child interpreter because they change process-wide state (PATH lookups made at
import time, an address-space limit).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from imgflow.errors import ItemError
from imgflow.io.decode import (
    ALLOWED_FORMATS,
    DecodeLimits,
    decode_bytes,
    decode_file,
    sniff_format,
)
from imgflow.io.modes import to_array as _to_array
from tests.hostile import (
    HOSTILE_LIMITS,
    QUADRANT_COLOURS,
    ExpectedOutcome,
    make_hostile_corpus,
    raw_png,
    upright_pattern,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, ExpectedOutcome]]:
    folder = tmp_path_factory.mktemp("hostile")
    return folder, make_hostile_corpus(folder)


def decode(folder: Path, name: str, limits: DecodeLimits = HOSTILE_LIMITS):
    return decode_file(folder / name, limits)


def error_of(folder: Path, name: str, limits: DecodeLimits = HOSTILE_LIMITS) -> ItemError:
    with pytest.raises(ItemError) as info:
        decode_file(folder / name, limits)
    return info.value


# --------------------------------------------------------------------------- the corpus


def test_corpus_covers_the_brief(corpus):
    _folder, expected = corpus
    codes = {e.code for e in expected.values()}
    assert codes == {None, "decode_error", "unsupported_format", "too_many_pixels", "file_too_large"}
    assert {f"orient_{o}.jpg" for o in range(1, 9)} <= set(expected)
    assert len(expected) >= 40


def test_every_corpus_file_has_its_expected_outcome(corpus):
    folder, expected = corpus
    mismatches = []
    for name, want in expected.items():
        try:
            got = decode(folder, name)
        except ItemError as exc:
            if want.ok or exc.code != want.code or (want.message and want.message not in exc.message):
                mismatches.append(f"{name}: got {exc.code}: {exc.message}")
            continue
        meta = got.meta
        facts = (got.pixels.shape, str(got.pixels.dtype), meta.mode, meta.format, meta.bit_depth,
                 meta.frames, meta.orientation)
        wanted = (want.shape, want.dtype, want.mode, want.format, want.bit_depth, want.frames,
                  want.orientation)
        if not want.ok or facts != wanted:
            mismatches.append(f"{name}: got {facts}, expected {want.code or wanted}")
        elif want.note and not any(want.note in note for note in meta.notes):
            mismatches.append(f"{name}: no note containing {want.note!r} in {meta.notes}")
    assert not mismatches, "\n".join(mismatches)


def test_outputs_are_one_of_four_layouts_and_meta_matches_pixels(corpus):
    folder, expected = corpus
    for name, want in expected.items():
        if not want.ok:
            continue
        got = decode(folder, name)
        assert got.pixels.ndim == 3 and got.pixels.shape[2] in (3, 4), name
        assert got.pixels.dtype in (np.uint8, np.uint16), name
        assert got.pixels.flags.c_contiguous, name
        assert (got.meta.height, got.meta.width) == got.pixels.shape[:2], name
        assert got.has_alpha == (got.pixels.shape[2] == 4)


def test_content_hash_is_sha256_of_the_file_bytes(corpus):
    folder, _ = corpus
    got = decode(folder, "valid.png")
    assert got.content_hash == hashlib.sha256((folder / "valid.png").read_bytes()).hexdigest()


def test_valid_lossless_files_round_trip_exactly(corpus):
    folder, _ = corpus
    from tests.hostile import gradient_rgb

    for name in ("valid.png", "valid.webp", "valid.tif", "valid.bmp", "valid.ppm"):
        assert np.array_equal(decode(folder, name).pixels, gradient_rgb()), name


# --------------------------------------------------------------------------- modes


def test_16bit_grayscale_keeps_every_level_exactly(corpus):
    folder, _ = corpus
    got = decode(folder, "gray16.png")
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    assert got.pixels.dtype == np.uint16 and got.meta.bit_depth == 16
    for channel in range(3):
        assert np.array_equal(got.pixels[..., channel], ramp)
    # Pillow's convert('RGB') is what this guards against: it clips levels to 8 bits.
    naive = np.asarray(Image.open(folder / "gray16.png").convert("RGB"))
    assert naive.max() == 255 and (naive == 255).mean() > 0.9


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16bit_tiff_byte_orders_give_native_uint16(tmp_path, mode):
    levels = np.array([[0, 1, 256, 4095], [30000, 65534, 65535, 12345]], dtype=np.uint16)
    raw = levels.astype(">u2" if mode.endswith("B") else "<u2").tobytes()
    Image.frombytes(mode, (4, 2), raw).save(tmp_path / "scan.tif")
    got = decode_file(tmp_path / "scan.tif", HOSTILE_LIMITS)
    assert got.meta.mode == mode
    assert got.pixels.dtype == np.uint16 and got.pixels.dtype.isnative
    assert np.array_equal(got.pixels[..., 1], levels)


def test_32bit_int_levels_kept_when_they_fit_and_clipped_with_a_note(corpus, tmp_path):
    folder, _ = corpus
    fits = decode(folder, "int32.tif")
    assert np.array_equal(fits.pixels[..., 0], np.arange(0, 1200, 50).reshape(4, 6))
    assert not fits.meta.notes
    wide = np.array([[-5, 0, 65535, 70000]], dtype=np.int32)
    Image.fromarray(wide, "I").save(tmp_path / "wide.tif")
    got = decode_file(tmp_path / "wide.tif", HOSTILE_LIMITS)
    assert got.pixels[0, :, 0].tolist() == [0, 0, 65535, 65535]
    assert any("clipped" in note for note in got.meta.notes)


def test_float_images_scale_unit_range_and_clip_otherwise(corpus, tmp_path):
    folder, _ = corpus
    unit = decode(folder, "float.tif")
    assert unit.pixels[0, 0, 0] == 0 and unit.pixels[-1, -1, 0] == 65535
    big = np.array([[-1.0, 2.0, 300.5, 1e6]], dtype=np.float32)
    Image.fromarray(big, "F").save(tmp_path / "big.tif")
    got = decode_file(tmp_path / "big.tif", HOSTILE_LIMITS)
    assert got.pixels[0, :, 0].tolist() == [0, 2, 300, 65535]  # rint(300.5) = 300 (half to even)
    assert any("clipped" in note for note in got.meta.notes)


def test_cmyk_jpeg_becomes_plausible_rgb(corpus):
    folder, _ = corpus
    got = decode(folder, "cmyk.jpg")
    assert got.meta.mode == "CMYK" and got.pixels.shape == (24, 32, 3)
    centres = [got.pixels[6, 8], got.pixels[6, 24], got.pixels[18, 8], got.pixels[18, 24]]
    expected = [(0, 255, 255), (255, 0, 255), (255, 255, 0), (0, 0, 0)]  # C, M, Y, K
    for centre, want in zip(centres, expected):
        assert np.abs(centre.astype(int) - want).max() <= 24, (centre, want)


def test_cmyk_with_broken_icc_falls_back_with_a_note(corpus):
    folder, _ = corpus
    broken = decode(folder, "cmyk_badicc.jpg")
    plain = decode(folder, "cmyk.jpg")
    assert np.array_equal(broken.pixels, plain.pixels)
    assert any("ICC profile unusable" in note for note in broken.meta.notes)


def test_non_srgb_icc_profile_is_converted_to_srgb(corpus):
    folder, _ = corpus
    got = decode(folder, "linear_icc.png")
    stored = np.asarray(Image.open(folder / "linear_icc.png"))
    assert (stored == 128).all()
    # 128 in linear light is 50.2% light: about 188 once encoded as sRGB.
    assert np.abs(got.pixels.astype(int) - 188).max() <= 2
    assert any("linear gamma" in note and "sRGB" in note for note in got.meta.notes)


def test_srgb_tagged_image_is_left_alone(tmp_path):
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("RGB", (4, 4), (10, 128, 250)).save(tmp_path / "s.png", icc_profile=srgb)
    got = decode_file(tmp_path / "s.png", HOSTILE_LIMITS)
    assert (got.pixels == (10, 128, 250)).all() and not got.meta.notes


def test_palette_transparency_becomes_alpha(corpus):
    folder, _ = corpus
    got = decode(folder, "palette_trns.png")
    assert got.pixels.shape == (4, 8, 4)
    assert (got.pixels[:, :4, 3] == 0).all()  # index 0 is transparent
    assert (got.pixels[:, 4:] == (250, 120, 30, 255)).all()


def test_palette_without_transparency_stays_rgb(corpus):
    folder, _ = corpus
    got = decode(folder, "valid.gif")
    assert got.pixels.shape[2] == 3
    assert {tuple(c) for c in got.pixels.reshape(-1, 3)} <= {(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)}


def test_rgba_la_and_mode1(corpus):
    folder, _ = corpus
    rgba = decode(folder, "rgba.png").pixels
    assert rgba[0, :, 3].tolist() == list(range(0, 256, 16))
    la = decode(folder, "la.png").pixels
    assert (la[..., :3] == 90).all() and la[0, :, 3].tolist() == list(range(0, 256, 16))
    bits = decode(folder, "mode1.png").pixels
    expected = (np.indices((6, 8)).sum(axis=0) % 2) * 255
    for channel in range(3):
        assert np.array_equal(bits[..., channel], expected)


def test_colour_key_transparency_in_rgb_png_becomes_alpha(tmp_path):
    im = Image.new("RGB", (4, 1), (1, 2, 3))
    im.putpixel((0, 0), (9, 9, 9))
    im.save(tmp_path / "key.png", transparency=(9, 9, 9))
    got = decode_file(tmp_path / "key.png", HOSTILE_LIMITS).pixels
    assert got.shape == (1, 4, 4) and got[0, :, 3].tolist() == [0, 255, 255, 255]


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("La", (100, 128), (3, 4)),
        ("PA", None, (3, 4)),
        ("RGBa", (100, 50, 0, 128), (3, 4)),
        ("YCbCr", (128, 128, 128), (3, 3)),
        ("LAB", (255, 128, 128), (3, 3)),
        ("HSV", (0, 255, 255), (3, 3)),
        ("RGBX", (1, 2, 3, 0), (3, 3)),
    ],
)
def test_other_modes_map_to_rgb_or_rgba(mode, colour, expected):
    im = Image.new(mode, (5, 3), colour)
    pixels, depth = _to_array(im, [])
    assert pixels.shape == (3, 5, expected[1]) and pixels.dtype == np.uint8 and depth == 8


def test_mode_values_are_sensible():
    hsv, _ = _to_array(Image.new("HSV", (1, 1), (0, 255, 255)), [])
    assert tuple(hsv[0, 0]) == (255, 0, 0)
    lab, _ = _to_array(Image.new("LAB", (1, 1), (255, 128, 128)), [])
    assert (lab[0, 0] >= 250).all()  # L=100: white
    premultiplied, _ = _to_array(Image.new("RGBa", (1, 1), (50, 25, 0, 128)), [])
    assert tuple(premultiplied[0, 0]) == (99, 49, 0, 128)  # straight alpha


# --------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_makes_the_image_upright(corpus, orientation):
    folder, _ = corpus
    name = f"orient_{orientation}.jpg"
    got = decode(folder, name)
    upright = upright_pattern()
    assert got.meta.orientation == orientation
    assert got.pixels.shape == upright.shape
    assert np.abs(got.pixels.astype(int) - upright).mean() < 6
    h, w = upright.shape[:2]
    corners = [got.pixels[h // 4, w // 4], got.pixels[h // 4, 3 * w // 4],
               got.pixels[3 * h // 4, w // 4], got.pixels[3 * h // 4, 3 * w // 4]]
    for corner, colour in zip(corners, QUADRANT_COLOURS):
        assert np.abs(corner.astype(int) - colour).max() <= 20
    # Cross-check against Pillow's own implementation of the same table.
    reference = np.asarray(ImageOps.exif_transpose(Image.open(folder / name)).convert("RGB"))
    assert np.array_equal(got.pixels, reference)


def test_corrupt_exif_is_a_note_not_a_failure(corpus):
    folder, _ = corpus
    got = decode(folder, "bad_exif.jpg")
    assert got.meta.orientation == 1 and got.pixels.shape == (48, 64, 3)
    assert any("EXIF" in note for note in got.meta.notes)


def test_out_of_range_orientation_is_ignored_with_a_note(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 9
    Image.fromarray(upright_pattern()).save(tmp_path / "o9.jpg", exif=exif.tobytes())
    got = decode_file(tmp_path / "o9.jpg", HOSTILE_LIMITS)
    assert got.meta.orientation == 1 and got.pixels.shape == upright_pattern().shape
    assert any("not 1-8" in note for note in got.meta.notes)


# --------------------------------------------------------------------------- multi-frame


def test_animated_gif_first_frame_only_with_count(corpus):
    folder, _ = corpus
    got = decode(folder, "animated.gif")
    assert got.meta.frames == 3
    assert (got.pixels == (200, 10, 10)).all()  # frame 0 uses palette index 0


def test_truncated_later_frame_costs_only_a_note(corpus, tmp_path):
    folder, _ = corpus
    data = (folder / "animated.gif").read_bytes()
    (tmp_path / "cut.gif").write_bytes(data[: len(data) - 30])
    got = decode_file(tmp_path / "cut.gif", HOSTILE_LIMITS)
    assert (got.pixels == (200, 10, 10)).all()
    assert got.meta.frames == 1
    assert any("could not count frames" in note for note in got.meta.notes)


def test_a_file_growing_while_read_is_still_capped(tmp_path):
    from imgflow.io.filebytes import read_upto as _read_upto

    path = tmp_path / "growing.bin"
    path.write_bytes(b"a" * 10)
    with open(path, "rb") as fh:
        with open(path, "ab") as writer:  # grows after the size was taken
            writer.write(b"b" * 30)
        data = _read_upto(fh, 10, cap=25)
    assert len(data) == 26  # cap + 1: enough to know it is over the cap, no more


# --------------------------------------------------------------------------- failures and caps


def test_truncated_files_fail_and_the_truncation_flag_is_never_set(corpus):
    folder, _ = corpus
    for name in ("truncated.jpg", "truncated.png"):
        err = error_of(folder, name)
        assert err.code == "decode_error" and "truncated" in err.message and name in err.message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    for module in (REPO / "imgflow").rglob("*.py"):
        source = module.read_text()
        assert "LOAD_TRUNCATED_IMAGES =" not in source and "LOAD_TRUNCATED_IMAGES=" not in source, module


def test_file_size_cap_names_cap_size_and_fix(corpus):
    folder, _ = corpus
    err = error_of(folder, "too_big.bmp")
    size = (folder / "too_big.bmp").stat().st_size
    assert err.code == "file_too_large"
    assert f"{size:,}" in err.message and "1,048,576" in err.message
    assert "max_file_mb" in err.message and "too_big.bmp" in err.message


def test_file_size_cap_applies_to_bytes_too():
    with pytest.raises(ItemError) as info:
        decode_bytes(b"x" * 11, DecodeLimits(max_file_bytes=10), source="mem")
    assert info.value.code == "file_too_large"


def test_pixel_cap_names_cap_size_and_fix_and_fails_before_loading(corpus):
    folder, _ = corpus
    start = time.perf_counter()
    err = error_of(folder, "huge_header.png")
    assert time.perf_counter() - start < 0.5  # 900 MP were never allocated
    assert err.code == "too_many_pixels"
    assert "900,000,000" in err.message and "20,000,000" in err.message
    assert "max_pixels" in err.message


@pytest.mark.parametrize("size", [(5000, 5000), (4473, 4473)])  # 1.25x and just over the cap
def test_pixel_cap_between_one_and_two_times_the_cap(tmp_path, size):
    # Pillow only *warns* between its cap and twice its cap; the warning must be an error here.
    (tmp_path / "big.png").write_bytes(raw_png(*size, 8, 0, zlib.compress(b"\x00" * 16)))
    err = error_of(tmp_path, "big.png")
    assert err.code == "too_many_pixels"


def test_our_pixel_cap_governs_not_pillows_global(tmp_path, monkeypatch):
    Image.new("RGB", (15, 10), (5, 5, 5)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # stricter than ours: must not apply
    got = decode_file(tmp_path / "small.png", DecodeLimits(max_pixels=200))
    assert got.pixels.shape == (10, 15, 3)
    assert Image.MAX_IMAGE_PIXELS == 50  # restored after the decode
    err = error_of(tmp_path, "small.png", DecodeLimits(max_pixels=149))
    assert err.code == "too_many_pixels" and "149" in err.message


def test_unsupported_formats_say_what_was_detected(corpus):
    folder, _ = corpus
    eps = error_of(folder, "doc.eps")
    assert eps.code == "unsupported_format" and "EPS" in eps.message
    for name in ("random.jpg", "text.png"):
        err = error_of(folder, name)
        assert err.code == "unsupported_format" and "not a recognised image" in err.message
        assert "JPEG" in err.message  # names what imgflow does read


def test_damaged_header_of_an_allowed_format_is_a_decode_error(corpus):
    folder, _ = corpus
    err = error_of(folder, "bad_crc.png")
    assert err.code == "decode_error" and "checksum" in err.message


def test_format_left_out_of_limits_is_refused(corpus):
    folder, _ = corpus
    err = error_of(folder, "valid.webp", DecodeLimits(formats=("JPEG", "PNG")))
    assert err.code == "unsupported_format" and "WEBP" in err.message
    mpo = error_of(folder, "stereo.mpo", DecodeLimits(formats=("JPEG",)))
    assert mpo.code == "unsupported_format" and "MPO" in mpo.message


def test_unreadable_paths(tmp_path):
    missing = error_of(tmp_path, "nope.jpg")
    assert missing.code == "unreadable" and "nope.jpg" in missing.message
    (tmp_path / "folder.jpg").mkdir()
    directory = error_of(tmp_path, "folder.jpg")
    assert directory.code == "unreadable" and "directory" in directory.message


def test_limits_validation():
    with pytest.raises(ValueError, match="Ghostscript"):
        DecodeLimits(formats=("PNG", "EPS"))
    with pytest.raises(ValueError, match="unknown"):
        DecodeLimits(formats=("PNG", "BOGUS"))
    with pytest.raises(ValueError):
        DecodeLimits(max_pixels=0)
    with pytest.raises(ValueError):
        DecodeLimits(max_file_bytes=-1)
    assert DecodeLimits(formats=("png",)).formats == ("PNG",)
    assert "EPS" not in ALLOWED_FORMATS


def test_sniff_format():
    assert sniff_format(b"%!PS-Adobe") == "EPS"
    assert sniff_format(b"\x89PNG\r\n\x1a\nxxxx") == "PNG"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"hello") is None


# --------------------------------------------------------------------------- child processes


def run_child(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60,
    )


def test_eps_never_reaches_ghostscript(corpus, tmp_path):
    folder, _ = corpus
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "gs-was-run"
    fake_gs = bin_dir / "gs"
    fake_gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake_gs.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    ours = run_child(
        f"""
        from imgflow.io.decode import decode_file, DecodeLimits
        from imgflow.errors import ItemError
        try:
            decode_file({str(folder / 'doc.eps')!r}, DecodeLimits())
        except ItemError as e:
            print(e.code)
        """,
        env,
    )
    assert ours.stdout.strip() == "unsupported_format", ours.stderr
    assert not marker.exists()
    # Control: plain Pillow on the same file does run "Ghostscript" (so the check above can fail).
    plain = run_child(
        f"""
        from PIL import Image
        try:
            Image.open({str(folder / 'doc.eps')!r}).load()
        except Exception as e:
            print(type(e).__name__)
        """,
        env,
    )
    assert marker.exists(), plain.stdout + plain.stderr


def test_memory_cap_turns_a_bomb_under_the_pixel_cap_into_memory_limit(tmp_path):
    # A ~60 KB PNG that decodes to 4000x4000 RGBA (64 MB), well under the pixel cap.
    rows = b"".join(b"\x00" + bytes(4000 * 4) for _ in range(4000))
    (tmp_path / "bomb.png").write_bytes(raw_png(4000, 4000, 8, 6, zlib.compress(rows, 9)))
    result = run_child(
        f"""
        from imgflow.io.decode import decode_file, DecodeLimits, apply_memory_cap
        from imgflow.errors import ItemError
        status = open("/proc/self/status").read().split("VmSize:")[1].split()[0]
        limits = DecodeLimits(memory_mb=int(status) // 1024 + 40)
        assert apply_memory_cap(limits)
        try:
            decode_file({str(tmp_path / 'bomb.png')!r}, limits)
            print("decoded")
        except ItemError as e:
            print(e.code, "|", e.message)
        """
    )
    code, _, message = result.stdout.strip().partition(" | ")
    assert code == "memory_limit", result.stdout + result.stderr
    assert "per-worker cap" in message and "MB" in message and "bomb.png" in message


def test_importing_decode_does_not_import_torch_or_other_pillow_plugins():
    result = run_child(
        """
        import sys
        import imgflow.io.decode
        print("torch" in sys.modules, "PIL.EpsImagePlugin" in sys.modules)
        """
    )
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    start = time.perf_counter()
    err = error_of(tmp_path, "pipe.jpg")
    assert err.code == "unreadable" and "not a regular file" in err.message
    assert time.perf_counter() - start < 1.0


def _mutations(data: bytes, seed: int, count: int) -> list[bytes]:
    """Deterministic damaged copies: flipped bytes, cut tails, a repeated slice."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        buf = bytearray(data)
        kind = i % 3
        if kind == 0:
            for pos in rng.integers(0, len(buf), int(rng.integers(1, 9))):
                buf[pos] = int(rng.integers(0, 256))
        elif kind == 1:
            buf = buf[: int(rng.integers(1, len(buf)))]
        else:
            a = int(rng.integers(0, len(buf)))
            b = min(len(buf), a + int(rng.integers(1, 64)))
            buf[b:b] = buf[a:b]
        out.append(bytes(buf))
    return out


def test_damaged_copies_of_every_valid_file_only_ever_raise_item_error(corpus):
    folder, expected = corpus
    outcomes: dict[str, int] = {}
    for seed, name in enumerate(sorted(n for n, e in expected.items() if e.ok)):
        for damaged in _mutations((folder / name).read_bytes(), seed, 12):
            try:
                got = decode_bytes(damaged, HOSTILE_LIMITS, source=name)
            except ItemError as exc:
                outcomes[exc.code] = outcomes.get(exc.code, 0) + 1
                assert exc.code in {"decode_error", "unsupported_format", "too_many_pixels"}, exc
                assert name in exc.message
            else:
                outcomes["ok"] = outcomes.get("ok", 0) + 1
                assert got.pixels.ndim == 3 and got.pixels.shape[2] in (3, 4)
    assert outcomes.get("decode_error", 0) > 20 and outcomes.get("ok", 0) > 20, outcomes


# --------------------------------------------------------------------------- decode hints


def _jpeg_bytes(width: int, height: int) -> bytes:
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([xs * 255 // width, ys * 255 // height, (xs + ys) % 256], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_draft_request_picks_the_smallest_size_that_still_satisfies_the_stage():
    from imgflow.io.decode import draft_request
    from imgflow.stage import DecodeHint

    assert draft_request((1600, 1200), DecodeHint("longer", 800), 1) == (800, 600)
    assert draft_request((1600, 1200), DecodeHint("longer", 801), 1) is None
    assert draft_request((1600, 1200), DecodeHint("shorter", 300), 1) == (400, 300)
    assert draft_request((1600, 1200), DecodeHint("exact", (100, 400)), 1) == (400, 300)
    # orientation 6 turns the file's 1600x1200 into an upright 1200x1600: an exact (h=400, w=100)
    # request means 400 along the file's width
    assert draft_request((1600, 1200), DecodeHint("exact", (400, 100)), 6) == (400, 300)
    assert draft_request((100, 100), DecodeHint("longer", 256), 1) is None  # never upscale


def test_a_hint_decodes_jpegs_smaller_and_leaves_other_formats_alone():
    from imgflow.stage import DecodeHint

    data = _jpeg_bytes(1600, 1200)
    full = decode_bytes(data, DecodeLimits())
    small = decode_bytes(data, DecodeLimits(hint=DecodeHint("longer", 400)))
    assert full.pixels.shape == (1200, 1600, 3)
    assert small.pixels.shape == (300, 400, 3)
    assert any("reduced scale" in note for note in small.meta.notes)
    # the reduced decode is the same picture: compare with a box-averaged full decode
    boxed = full.pixels.reshape(300, 4, 400, 4, 3).mean(axis=(1, 3))
    assert np.abs(boxed - small.pixels.astype(float)).mean() < 4.0
    buf = io.BytesIO()
    Image.fromarray(full.pixels).save(buf, "PNG")
    png = decode_bytes(buf.getvalue(), DecodeLimits(hint=DecodeHint("longer", 400)))
    assert png.pixels.shape == (1200, 1600, 3)
