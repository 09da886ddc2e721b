"""A corpus of good, odd and hostile image files, generated into a folder, with expected outcomes.

Reuse it from any test::

    from tests.hostile import HOSTILE_LIMITS, make_hostile_corpus

    corpus = make_hostile_corpus(tmp_path)          # {file name: ExpectedOutcome}
    for name, expected in corpus.items():
        ...decode tmp_path / name with HOSTILE_LIMITS and compare with expected...

Every file is written by this module (Pillow, numpy, or raw bytes for what Pillow refuses to
write), deterministically, in well under a second. The expectations hold for ``HOSTILE_LIMITS``
(a 1 MiB file cap, so ``too_big.bmp`` trips it without a big file). Helpers that build single
files (orientation pattern, PNG chunks, ICC profile) are public so tests can build variations.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imgflow.io.decode import DecodeLimits

#: The limits the expectations below are written for.
HOSTILE_LIMITS = DecodeLimits(max_pixels=20_000_000, max_file_bytes=1024**2, memory_mb=None)

#: Colours of the four quadrants of the orientation pattern (top-left, top-right,
#: bottom-left, bottom-right): all distinct, so each of the 8 EXIF transforms looks different.
QUADRANT_COLOURS = ((230, 20, 20), (20, 200, 20), (20, 20, 230), (240, 240, 30))
PATTERN_SIZE = (48, 32)  # (width, height): not square, so a 90-degree turn changes the shape


@dataclass(frozen=True)
class ExpectedOutcome:
    """What decoding one corpus file must produce.

    ``code`` is the ItemError reason code, or None when the file decodes; the other fields then
    describe the result (``shape`` is the pixel array's, after orientation). ``note`` is a
    substring one of ``meta.notes`` must contain; ``message`` one the error message must contain.
    """

    code: str | None = None
    shape: tuple[int, int, int] | None = None
    dtype: str = "uint8"
    mode: str | None = None
    format: str | None = None
    bit_depth: int = 8
    frames: int = 1
    orientation: int = 1
    note: str | None = None
    message: str | None = None
    why: str = ""

    @property
    def ok(self) -> bool:
        return self.code is None


def _ok(shape, mode, fmt, **kw) -> ExpectedOutcome:
    return ExpectedOutcome(shape=shape, mode=mode, format=fmt, **kw)


def _fail(code: str, why: str, message: str | None = None) -> ExpectedOutcome:
    return ExpectedOutcome(code=code, why=why, message=message)


# --------------------------------------------------------------------------- building blocks


def gradient_rgb(width: int = 64, height: int = 48) -> np.ndarray:
    """A smooth RGB test image (compresses well, survives JPEG)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), np.full_like(x, 128)], axis=2
    ).astype(np.uint8)


def noise_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Incompressible pixels: truncating such a file always cuts real image data."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def upright_pattern() -> np.ndarray:
    """The known upright image for the orientation tests: four solid, distinct quadrants."""
    width, height = PATTERN_SIZE
    out = np.zeros((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    out[:h2, :w2], out[:h2, w2:] = QUADRANT_COLOURS[0], QUADRANT_COLOURS[1]
    out[h2:, :w2], out[h2:, w2:] = QUADRANT_COLOURS[2], QUADRANT_COLOURS[3]
    return out


# How a viewer makes a stored image upright for each EXIF orientation, as Pillow transposes.
_UPRIGHT_OP = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_INVERSE = {Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
            Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270}


def orientation_jpeg(orientation: int) -> bytes:
    """A JPEG whose pixels are stored so that applying EXIF ``orientation`` gives the pattern."""
    upright = Image.fromarray(upright_pattern())
    stored = upright
    if orientation in _UPRIGHT_OP:
        op = _UPRIGHT_OP[orientation]
        stored = upright.transpose(_INVERSE.get(op, op))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(stored, "JPEG", quality=95, exif=exif.tobytes())


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    """One PNG chunk; pass ``crc`` to write a wrong checksum on purpose."""
    value = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", value & 0xFFFFFFFF)


def raw_png(width: int, height: int, bit_depth: int, color_type: int, idat: bytes,
            ihdr_crc: int | None = None) -> bytes:
    """A PNG assembled by hand, for headers and streams Pillow would never write."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr, ihdr_crc)
            + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))


def rgb16_png(pixels: np.ndarray) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG, which Pillow can read but not write."""
    height, width, _ = pixels.shape  # filter type 0 (none) on every row
    raw = b"".join(b"\x00" + pixels[row].astype(">u2").tobytes() for row in range(height))
    return raw_png(width, height, 16, 2, zlib.compress(raw))


def icc_profile(gamma: float, description: str) -> bytes:
    """A minimal ICC v2 RGB display profile: sRGB primaries (D50-adapted), one gamma curve.

    gamma=1.0 gives "linear-light sRGB": stored 128 means 50% light, which is about 188 in sRGB,
    so a correct colour-managed decode visibly changes the pixels.
    """
    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ \x00\x00\x00\x00" + s15(x) + s15(y) + s15(z)

    curve = b"curv\x00\x00\x00\x00" + struct.pack(">IH", 1, round(gamma * 256)) + b"\x00\x00"
    text = description.encode("ascii") + b"\x00"
    desc = (b"desc\x00\x00\x00\x00" + struct.pack(">I", len(text)) + text
            + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\x00" * 67)
    tags = [
        (b"desc", desc),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)),
        (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
        (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
        (b"cprt", b"text\x00\x00\x00\x00public domain test profile\x00"),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, blob = b"", b""
    for sig, data in tags:
        data += b"\x00" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(blob), len(data))
        blob += data
    size = offset + len(blob)
    header = (struct.pack(">I", size) + b"\x00\x00\x00\x00" + struct.pack(">I", 0x02100000)
              + b"mntrRGB XYZ " + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp"
              + b"\x00" * 24 + struct.pack(">I", 0)
              + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\x00" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + blob


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


# --------------------------------------------------------------------------- the corpus


def make_hostile_corpus(folder: str | Path) -> dict[str, ExpectedOutcome]:
    """Write every corpus file into ``folder`` (created if needed); return name -> expectation."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[bytes, ExpectedOutcome]] = {}
    for builder in (_valid_files, _mode_files, _orientation_files, _broken_files, _hostile_files):
        files.update(builder())
    for name, (data, _expected) in files.items():
        (root / name).write_bytes(data)
    return {name: expected for name, (_data, expected) in files.items()}


def _valid_files() -> dict[str, tuple[bytes, ExpectedOutcome]]:
    rgb = Image.fromarray(gradient_rgb())
    shape = (48, 64, 3)
    palette = Image.fromarray((gradient_rgb()[..., 0] // 64).astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    frames = [Image.new("P", (20, 10), i) for i in range(3)]
    for frame in frames:
        frame.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200] + [0] * 759)
    def pages() -> list[Image.Image]:  # fresh objects per save: an MPO save leaves JPEG state behind
        return [Image.new("RGB", (30, 20), (10, 20, 30)), Image.new("RGB", (30, 20), (200, 100, 0))]

    tiff_pages, mpo_pages = pages(), pages()
    return {
        "valid.jpg": (_save(rgb, "JPEG", quality=95), _ok(shape, "RGB", "JPEG")),
        "valid.png": (_save(rgb, "PNG"), _ok(shape, "RGB", "PNG")),
        "valid.webp": (_save(rgb, "WEBP", lossless=True), _ok(shape, "RGB", "WEBP")),
        "valid.tif": (_save(rgb, "TIFF", compression="tiff_deflate"), _ok(shape, "RGB", "TIFF")),
        "valid.bmp": (_save(rgb, "BMP"), _ok(shape, "RGB", "BMP")),
        "valid.ppm": (_save(rgb, "PPM"), _ok(shape, "RGB", "PPM")),
        "valid.gif": (_save(palette, "GIF"), _ok(shape, "P", "GIF")),
        "animated.gif": (
            _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
            _ok((10, 20, 3), "P", "GIF", frames=3, why="first frame only, count recorded"),
        ),
        "multipage.tif": (
            _save(tiff_pages[0], "TIFF", save_all=True, append_images=tiff_pages[1:]),
            _ok((20, 30, 3), "RGB", "TIFF", frames=2),
        ),
        "stereo.mpo": (
            _save(mpo_pages[0], "MPO", save_all=True, append_images=mpo_pages[1:]),
            _ok((20, 30, 3), "RGB", "MPO", frames=2),
        ),
    }


def _mode_files() -> dict[str, tuple[bytes, ExpectedOutcome]]:
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    cmyk = Image.new("CMYK", (32, 24))
    for i, colour in enumerate([(255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 255)]):
        cmyk.paste(colour, ((i % 2) * 16, (i // 2) * 12, (i % 2) * 16 + 16, (i // 2) * 12 + 12))
    pal = Image.new("P", (8, 4), 1)
    pal.putpalette([0, 0, 0, 250, 120, 30] + [0] * 762)
    pal.paste(0, (0, 0, 4, 4))  # left half uses index 0, which tRNS makes transparent
    alpha = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))
    rgba = np.dstack([gradient_rgb(16, 4), alpha])
    la = np.dstack([np.full((4, 16), 90, np.uint8), alpha])
    bits = Image.fromarray((np.indices((6, 8)).sum(axis=0) % 2).astype(bool))
    grey = Image.new("RGB", (8, 8), (128, 128, 128))
    linear = icc_profile(1.0, "imgflow test: linear gamma")
    wide16 = np.zeros((4, 6, 3), np.uint16)
    wide16[...] = (1000, 30000, 65535)
    return {
        "cmyk.jpg": (_save(cmyk, "JPEG", quality=95), _ok((24, 32, 3), "CMYK", "JPEG")),
        "cmyk_badicc.jpg": (
            _save(cmyk, "JPEG", quality=95, icc_profile=b"this is not an ICC profile"),
            _ok((24, 32, 3), "CMYK", "JPEG", note="ICC profile unusable"),
        ),
        "gray16.png": (
            _save(Image.fromarray(ramp), "PNG"),
            _ok((256, 256, 3), "I;16", "PNG", dtype="uint16", bit_depth=16),
        ),
        "palette_trns.png": (_save(pal, "PNG", transparency=0), _ok((4, 8, 4), "P", "PNG")),
        "rgba.png": (_save(Image.fromarray(rgba, "RGBA"), "PNG"), _ok((4, 16, 4), "RGBA", "PNG")),
        "la.png": (_save(Image.fromarray(la, "LA"), "PNG"), _ok((4, 16, 4), "LA", "PNG")),
        "mode1.png": (_save(bits, "PNG"), _ok((6, 8, 3), "1", "PNG")),
        "linear_icc.png": (
            _save(grey, "PNG", icc_profile=linear),
            _ok((8, 8, 3), "RGB", "PNG", note="to sRGB"),
        ),
        "rgb48.png": (rgb16_png(wide16), _ok((4, 6, 3), "RGB", "PNG", note="reduced to 8 bits")),
        "int32.tif": (
            _save(Image.fromarray(np.arange(0, 1200, 50, dtype=np.int32).reshape(4, 6), "I"), "TIFF"),
            _ok((4, 6, 3), "I", "TIFF", dtype="uint16", bit_depth=16),
        ),
        "float.tif": (
            _save(Image.fromarray(np.linspace(0, 1, 24, dtype=np.float32).reshape(4, 6), "F"), "TIFF"),
            _ok((4, 6, 3), "F", "TIFF", dtype="uint16", bit_depth=16),
        ),
    }


def _orientation_files() -> dict[str, tuple[bytes, ExpectedOutcome]]:
    width, height = PATTERN_SIZE
    out = {}
    for o in range(1, 9):
        out[f"orient_{o}.jpg"] = (
            orientation_jpeg(o),
            _ok((height, width, 3), "RGB", "JPEG", orientation=o),
        )
    bad = _save(Image.fromarray(gradient_rgb()), "JPEG",
                exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff\x12\x01\x03\x00")
    out["bad_exif.jpg"] = (bad, _ok((48, 64, 3), "RGB", "JPEG", note="EXIF",
                                     why="a corrupt EXIF block is a note, not a failure"))
    return out


def _broken_files() -> dict[str, tuple[bytes, ExpectedOutcome]]:
    noise = Image.fromarray(noise_rgb(96, 64, seed=1))
    jpeg = _save(noise, "JPEG", quality=90)
    png = _save(noise, "PNG")
    good = _save(Image.fromarray(gradient_rgb()), "PNG")
    ihdr_crc_at = 8 + 8 + 13  # signature, length+type, IHDR data
    bad_crc = good[:ihdr_crc_at] + bytes(b ^ 0xFF for b in good[ihdr_crc_at:ihdr_crc_at + 4]) \
        + good[ihdr_crc_at + 4:]
    garbage = np.random.default_rng(2).integers(0, 256, 200, dtype=np.uint8).tobytes()
    return {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], _fail("decode_error", "half the scan data")),
        "truncated.png": (png[: len(png) // 2], _fail("decode_error", "half the IDAT stream")),
        "empty.jpg": (b"", _fail("decode_error", "zero bytes", message="empty")),
        "bad_crc.png": (bad_crc, _fail("decode_error", "IHDR checksum wrong", message="PNG")),
        "corrupt_idat.png": (
            raw_png(64, 48, 8, 2, b"\x78\xff" + garbage),
            _fail("decode_error", "valid chunks, invalid zlib stream"),
        ),
    }


def _hostile_files() -> dict[str, tuple[bytes, ExpectedOutcome]]:
    random_bytes = b"\x00" + np.random.default_rng(3).integers(0, 256, 4095, dtype=np.uint8).tobytes()
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
           b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n")
    return {
        "random.jpg": (random_bytes, _fail("unsupported_format", "random bytes named .jpg")),
        "text.png": (b"hello, this is a text file, not a PNG\n", _fail("unsupported_format", "text")),
        "doc.eps": (eps, _fail("unsupported_format", "PostScript is never run", message="EPS")),
        "huge_header.png": (
            raw_png(30000, 30000, 8, 2, zlib.compress(b"\x00" * 64)),
            _fail("too_many_pixels", "a tiny file claiming 900 MP", message="20,000,000"),
        ),
        "too_big.bmp": (
            _save(Image.fromarray(noise_rgb(640, 640, seed=4)), "BMP"),
            _fail("file_too_large", "over the 1 MiB corpus cap", message="1,048,576"),
        ),
    }
