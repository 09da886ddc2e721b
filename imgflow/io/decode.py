"""Reading one image file into pixels, defensively (runs inside decode worker processes).

Image files come from folders nobody curates, so every byte is treated as hostile:

* Only the formats in :data:`ALLOWED_FORMATS` are ever tried. Pillow is always called with
  ``formats=`` so a PostScript file can never reach Ghostscript, and only those format plugins are
  imported here.
* The file is read once, size-capped, hashed, and decoded from memory: the hash the state store
  records is the hash of exactly the bytes that were decoded.
* The pixel count is checked from the header before any pixel is decoded, and Pillow's own
  decompression-bomb warning is turned into an error, so a 300-byte file cannot demand gigabytes.
* Every failure becomes :class:`imgflow.errors.ItemError` with a stable reason code. An image
  object that raised is closed and never touched again (a second ``load()`` after a failed one
  returns garbage), and ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set, so a truncated file is
  an error rather than a silently grey-filled picture.

Output layout: ``Decoded.pixels`` is always one of uint8 HxWx3, uint8 HxWx4, uint16 HxWx3,
uint16 HxWx4 (alpha straight, not premultiplied), upright after EXIF orientation, in sRGB when the
file carried a usable ICC profile. Mode policy (why each is what it is):

* ``1``, ``L`` -> RGB with three equal channels: stages see one layout; ``meta.mode`` keeps "L".
* ``LA``/``La``/``PA``/``RGBa`` -> RGBA (straight alpha); ``P`` -> RGBA when the palette or a
  ``tRNS`` chunk makes any index transparent, else RGB; ``L``/``RGB`` with a PNG colour key ->
  RGBA.
* ``CMYK`` (this includes Adobe/YCCK JPEGs, which Pillow opens as CMYK) -> RGB through the
  embedded ICC profile when there is one, else Pillow's naive conversion.
* ``I;16*`` -> uint16 RGB with levels kept exactly. ``convert('RGB')`` would clip them to 8 bits
  and make a 16-bit scan almost white. With a PNG colour key (``tRNS``), uint16 RGBA: the key's
  level is transparent.
* ``I`` (32-bit integers) -> uint16 when every value fits 0..65535, else clipped (with a note).
* ``F`` (32-bit float) -> uint16: values all within [0, 1] are taken as normalised intensities
  and scaled by 65535; otherwise values are clipped to 0..65535 and rounded (with a note); NaN
  becomes 0 (with a note).
* ``YCbCr``, ``LAB``, ``HSV``, ``RGBX`` -> RGB via Pillow.
* RGB/RGBA with an embedded non-sRGB ICC profile -> converted to sRGB (recorded in notes).
* 16-bit-per-channel colour (48/64-bit PNG or TIFF): Pillow has no 16-bit colour mode and reduces
  such files to 8 bits while decoding; a note records it.

Multi-frame files (animated GIF/WebP/PNG, multi-page TIFF, MPO): the first frame only is decoded;
``meta.frames`` records how many frames the file holds.

GPU decoding (``defer_jpeg``): a JPEG that nvJPEG decodes as this module would is checked, capped
and admitted here as usual, and comes back undecoded: ``Decoded.encoded`` holds its bytes and
``pixels`` only has the shape to come (:mod:`imgflow.io.jpeg_route`).

This module imports Pillow and numpy only (never torch): it is preloaded into every decode worker.
It is meant for one decode at a time per process, as the pool runs it: a decode briefly sets two
process-wide things (Pillow's bomb threshold, the warnings filters). Threads calling it at once
still get the file-size and pixel caps (checked here, not by Pillow), but may lose Pillow's
second-line bomb checks and see each other's warnings in their notes.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import (  # noqa: F401  (the plugin imports register exactly the formats we allow)
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

from imgflow.batch import ImageMeta
from imgflow.errors import ItemError
from imgflow.io.decode_errors import (
    decode_error,
    format_refused,
    memory_error,
    pixel_bomb,
    too_large,
    unidentified,
    warning_notes,
)
from imgflow.io.decode_errors import sniff_format as sniff_format
from imgflow.io.jpeg_route import EncodedJpeg, deferred_meta, gpu_refusal, placeholder
from imgflow.io.filebytes import pillow_pixel_cap, read_capped
from imgflow.io.modes import GRAY16_MODES, bytes_per_pixel, orient, to_array
from imgflow.memory import DecodeCost, ImageShape

if TYPE_CHECKING:  # pragma: no cover - annotations only: the decode workers never import pydantic
    from imgflow.stage import DecodeHint

__all__ = [
    "ALLOWED_FORMATS",
    "OPTIONAL_FORMATS",
    "DecodeLimits",
    "Decoded",
    "apply_memory_cap",
    "decode_bytes",
    "decode_file",
    "sniff_format",
]

#: Pillow format names imgflow opens. Kept to formats with mature, heavily fuzzed decoders that
#: scanners and cameras actually produce; PostScript (EPS) is never allowed because Pillow hands it
#: to Ghostscript, an interpreter.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP", "GIF", "PPM")

#: Further Pillow formats a pipeline may opt into (less fuzzed or rarer; off by default).
OPTIONAL_FORMATS: tuple[str, ...] = ("JPEG2000", "AVIF", "QOI", "TGA", "ICO", "PCX", "SGI", "PSD")

_FORBIDDEN_FORMATS = frozenset({"EPS", "PDF"})

#: The envelope of exceptions Pillow's own fuzz tests accept from a hostile file (MemoryError and
#: the decompression-bomb types are classified separately before this tuple is consulted).
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    NotImplementedError,
    OverflowError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    KeyError,
    ZeroDivisionError,
)

_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class DecodeLimits:
    """Caps that bound what one file may cost; the pipeline's ``[run]`` section sets them.

    ``memory_mb`` is applied per worker process (address-space limit) by :func:`apply_memory_cap`;
    ``None`` leaves memory uncapped.
    """

    max_pixels: int = 100_000_000
    max_file_bytes: int = 512 * 1024**2
    formats: tuple[str, ...] = ALLOWED_FORMATS
    memory_mb: int | None = 4096
    hint: DecodeHint | None = None  # the first stage's smallest useful size (JPEG DCT scaling)
    #: The stages' own work on 8-bit pixels, done here after decoding (imgflow.io.decoder_ops);
    #: ``meta`` still describes the decoded image.
    ops: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        """Reject limits that would silently disable a defence."""
        if self.max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.max_file_bytes <= 0:
            raise ValueError(f"max_file_bytes must be positive, got {self.max_file_bytes}")
        if self.memory_mb is not None and self.memory_mb <= 0:
            raise ValueError(f"memory_mb must be positive or None, got {self.memory_mb}")
        formats = tuple(f.upper() for f in self.formats)
        if not formats:
            raise ValueError("formats must name at least one Pillow format")
        bad = sorted(set(formats) & _FORBIDDEN_FORMATS)
        if bad:
            raise ValueError(f"formats {bad} are never decoded: Pillow runs Ghostscript for them")
        unknown = sorted(set(formats) - set(ALLOWED_FORMATS) - set(OPTIONAL_FORMATS))
        if unknown:
            choices = ", ".join(ALLOWED_FORMATS + OPTIONAL_FORMATS)
            raise ValueError(f"unknown image formats {unknown}; choose from {choices}")
        object.__setattr__(self, "formats", formats)


@dataclass
class Decoded:
    """One decoded image: upright pixels, what the file was, and the hash of its bytes."""

    pixels: np.ndarray  # (H, W, 3|4), uint8 or uint16
    meta: ImageMeta
    content_hash: str  # sha256 hex of the file's bytes
    #: The memory this image holds in the run's budget (imgflow.memory.Reservation), set by the
    #: decode pool in the parent; release it when the item is done with.
    reservation: Any = field(default=None, repr=False, compare=False)
    #: GPU decoding: the file's bytes (an imgflow.io.jpeg_route.EncodedJpeg), left undecoded by the
    #: worker; ``pixels`` is then a placeholder of the right shape, and ``tensor`` the pixels once
    #: decoded on the device: uint8 (3, H, W).
    encoded: Any = field(default=None, repr=False, compare=False)
    tensor: Any = field(default=None, repr=False, compare=False)
    #: The stages' decoder ops (``DecodeLimits.ops``) were applied: the pixels are final.
    stages_done: bool = False

    @property
    def has_alpha(self) -> bool:
        """True for RGBA output (the writer and alpha-aware stages branch on it)."""
        return self.pixels.shape[2] == 4


# --------------------------------------------------------------------------- memory cap


def apply_memory_cap(limits: DecodeLimits) -> bool:
    """Cap this process's address space at ``limits.memory_mb``; True when a cap is in force.

    Called once in each worker, so a decompression bomb that slips past the pixel cap raises
    MemoryError (reported as ``memory_limit``) instead of waking the kernel's OOM killer. Where
    the OS has no RLIMIT_AS (Windows) or refuses it (macOS), the pool's crash handling is what
    remains.
    """
    if limits.memory_mb is None:
        return False
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return False
    want = limits.memory_mb * 1024**2
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    except (ValueError, OSError):  # pragma: no cover - platform refuses
        return False
    return True


# --------------------------------------------------------------------------- public entry points


#: Called with an image's :class:`DecodeCost` after its header is read and before its pixels are
#: decoded; it returns to go ahead, or raises ItemError (``memory_budget``) to refuse.
Admit = Callable[[DecodeCost], None]


def decode_file(path: str | Path, limits: DecodeLimits, admit: Admit | None = None,
                defer_jpeg: bool = False) -> Decoded:
    """Read, hash and decode one file; raise ItemError with a reason code on any failure.

    ``admit`` (see :data:`Admit`) lets the caller wait for, or refuse, the memory the pixels need.
    ``defer_jpeg`` leaves a JPEG that nvJPEG can decode undecoded (see the module docstring).
    """
    try:
        data = read_capped(Path(path), limits)
    except MemoryError:
        raise memory_error(str(path), limits) from None
    return decode_bytes(data, limits, source=str(path), admit=admit, defer_jpeg=defer_jpeg)


def decode_bytes(data: bytes, limits: DecodeLimits, source: str = "<bytes>", admit: Admit | None = None,
                 defer_jpeg: bool = False) -> Decoded:
    """Decode bytes already in memory (``source`` names them in error messages).

    The size cap is checked here too, so callers that read files themselves get the same
    protection as :func:`decode_file`.
    """
    if len(data) > limits.max_file_bytes:
        raise too_large(source, len(data), limits)
    content_hash = hashlib.sha256(data).hexdigest()
    if not data:
        raise ItemError(
            "decode_error",
            f"{source}: the file is empty (0 bytes), probably an interrupted copy "
            "(fix: copy the file again from its origin)",
        )
    notes: list[str] = []
    with pillow_pixel_cap(limits.max_pixels), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            pixels, meta = _decode(data, limits, source, notes, admit, defer_jpeg)
        except ItemError:
            raise
        except MemoryError:
            raise memory_error(source, limits) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise pixel_bomb(source, limits, str(exc)) from None
        except UnidentifiedImageError:
            raise unidentified(source, data, limits) from None
        except _DECODE_ERRORS as exc:
            raise decode_error(source, exc) from None
        except Exception as exc:  # anything else a hostile file provokes is still one bad file
            raise decode_error(source, exc) from None
        meta.notes.extend(warning_notes(caught, notes))
    if pixels is None:  # left for the GPU decoder
        return Decoded(pixels=placeholder(meta.height, meta.width), meta=meta, content_hash=content_hash,
                       encoded=EncodedJpeg(np.frombuffer(data, dtype=np.uint8), source))
    return Decoded(pixels=pixels, meta=meta, content_hash=content_hash, stages_done=ops_applied(pixels, limits))


def ops_applied(pixels: np.ndarray, limits: DecodeLimits) -> bool:
    """Whether a decode under ``limits`` ran the stages' ops: always for 8-bit pixels, never for
    16-bit ones (imgflow.io.decoder_ops). The pool's parent side answers the same from the shape."""
    return bool(limits.ops) and pixels.dtype.itemsize == 1


# --------------------------------------------------------------------------- decoding


def _open(data: bytes, limits: DecodeLimits, source: str) -> ImageFile.ImageFile:
    """A fresh image object over ``data``, restricted to the allowed formats (header only).

    MPO has no opener of its own in Pillow (the JPEG opener returns MPO files), so it is left out
    of the list handed to Pillow and checked on the result instead.
    """
    im = Image.open(io.BytesIO(data), formats=[f for f in limits.formats if f != "MPO"])
    if im.format not in limits.formats:
        im.close()
        raise format_refused(source, im.format, limits.formats)
    return im


def _decode(
    data: bytes, limits: DecodeLimits, source: str, notes: list[str], admit: Admit | None = None,
    defer_jpeg: bool = False,
) -> tuple[np.ndarray | None, ImageMeta]:
    """The decode proper; any exception escapes to :func:`decode_bytes` for classification.

    Pixels are None for a JPEG left to the GPU decoder (``defer_jpeg``).
    """
    im = _open(data, limits, source)
    try:
        fmt = str(im.format)
        mode = im.mode
        _check_pixels(im.size, source, limits)
        frames = _count_frames(im, data, limits, source, notes)
        _note_colour_precision(im, notes)
        if defer_jpeg and gpu_refusal(im, data) is None:
            if admit is not None:
                admit(decode_cost(im))
            return None, deferred_meta(im, frames, notes)
        _draft(im, limits.hint, notes)
        if admit is not None:
            admit(decode_cost(im))
        im.load()
        orientation = _read_orientation(im, notes)
        width, height = im.size if orientation < 5 else im.size[::-1]
        shrunk, ops = _ops_in_pillow(im, orientation, limits.ops)
        pixels, bit_depth = to_array(shrunk, notes)
        if shrunk is not im:
            shrunk.close()
    finally:
        im.close()
    pixels = np.ascontiguousarray(orient(pixels, orientation))
    meta = ImageMeta(
        width=int(width),  # the decoded image's, before any stage
        height=int(height),
        mode=mode,
        format=fmt,
        bit_depth=bit_depth,
        frames=frames,
        orientation=orientation,
        notes=notes,
    )
    if ops:
        from imgflow.io.decoder_ops import apply_ops

        pixels = np.ascontiguousarray(apply_ops(pixels, ops))
    return pixels, meta


def _ops_in_pillow(im: Image.Image, orientation: int, ops: tuple[Any, ...]) -> tuple[Image.Image, tuple[Any, ...]]:
    """Run the stages' ops (imgflow.io.decoder_ops) on the Pillow image itself when they can, and
    return it with the ops left for the numpy pixels.

    Only for plain upright 8-bit RGB or L without a profile or colour key, where Pillow's image
    is exactly what ``to_array`` would hand over: then a full-resolution image is never exported
    to numpy (about 9 ms for 1600x1200 RGB, more than its decode at a reduced scale), only the
    result.
    """
    plain = (im.mode in ("RGB", "L") and orientation == 1 and "icc_profile" not in im.info
             and "transparency" not in im.info)
    if not ops or not plain or not all(hasattr(op, "apply_image") for op in ops):
        return im, ops
    for op in ops:
        im = op.apply_image(im)
    return im, ()


def decode_cost(im: Image.Image) -> DecodeCost:
    """What decoding ``im`` (header read, not yet loaded) will produce and cost this process.

    The shape follows :func:`imgflow.io.modes.to_array`'s policy (alpha, 16-bit levels) and the
    EXIF orientation. The worker's peak: Pillow's own pixels, a whole-image conversion where one
    happens (palette with alpha, colour keys, ICC profiles, 16-bit), and twice the output (the
    array, then its upright copy or the memory file it is handed back in), plus a margin.
    """
    width, height = im.size
    mode = im.mode
    if mode in GRAY16_MODES or mode in ("I", "F"):
        channels, itemsize = 3, 2
    elif mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode in ("1", "L", "RGB") and "transparency" in im.info):
        channels, itemsize = 4, 1
    elif mode == "P":
        channels, itemsize = (4 if im.has_transparency_data else 3), 1
    else:
        channels, itemsize = 3, 1
    if _peek_orientation(im) in (5, 6, 7, 8):
        width, height = height, width
    shape = ImageShape(height=height, width=width, channels=channels, itemsize=itemsize)
    pillow = width * height * bytes_per_pixel(mode)
    whole_conversion = mode not in ("1", "L", "P", "RGB", "RGBA") or "icc_profile" in im.info or (
        mode in ("1", "L", "RGB") and "transparency" in im.info)
    extra = width * height * 4 if whole_conversion else 0
    return DecodeCost(shape=shape, worker_bytes=pillow + extra + 2 * shape.nbytes + (16 << 20))


def _peek_orientation(im: Image.Image) -> int:
    """The EXIF orientation from the header, before loading (1 when absent or unreadable).

    Never for a PNG whose header holds no EXIF: Pillow's PNG ``getexif`` decodes the whole
    image to look for one after the pixels, which is exactly what must not happen yet.
    """
    if im.format not in ("JPEG", "MPO", "TIFF", "WEBP") and "exif" not in im.info:
        return 1
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # the orientation reader notes the problem after loading
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def draft_request(size: tuple[int, int], hint: DecodeHint, orientation: int) -> tuple[int, int] | None:
    """The smallest (width, height) in file coordinates that still satisfies ``hint``.

    None when no reduction is possible (the stage needs the full size or more). EXIF
    orientations 5-8 swap the axes, which matters only for an exact (height, width) hint.
    """
    width, height = size
    if hint.edge == "exact":
        want_h, want_w = hint.size if isinstance(hint.size, tuple) else (hint.size, hint.size)
        if orientation in (5, 6, 7, 8):
            want_h, want_w = want_w, want_h
        scale = max(want_w / width, want_h / height)
    else:
        edge = max(width, height) if hint.edge == "longer" else min(width, height)
        scale = int(hint.size) / edge  # type: ignore[arg-type]
    if scale > 0.5:  # DCT scaling at least halves; nothing to gain
        return None
    return (max(1, -(-int(width * scale * 1000) // 1000)), max(1, -(-int(height * scale * 1000) // 1000)))


def _draft(im: ImageFile.ImageFile, hint: DecodeHint | None, notes: list[str]) -> None:
    """Ask libjpeg to decode at 1/2, 1/4 or 1/8 scale when the first stage shrinks anyway."""
    if hint is None or im.format not in ("JPEG", "MPO") or im.mode not in ("RGB", "L", "CMYK", "YCbCr"):
        return
    orientation = 1
    try:
        orientation = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block is noted later, by the orientation reader
        pass
    request = draft_request(im.size, hint, orientation)
    if request is None:
        return
    before = im.size
    im.draft(im.mode, request)
    if im.size != before:
        notes.append(f"decoded at reduced scale {im.size[0]}x{im.size[1]} of {before[0]}x{before[1]} "
                     "(JPEG DCT scaling for the first stage's resize)")


def _check_pixels(size: tuple[int, int], source: str, limits: DecodeLimits) -> None:
    """Refuse from the header alone: nothing has been allocated for pixels yet."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ItemError(
            "decode_error",
            f"{source}: the header claims a {width}x{height} image (fix: the file is damaged; "
            "re-export it)",
        )
    if width * height > limits.max_pixels:
        raise ItemError(
            "too_many_pixels",
            f"{source}: image is {width}x{height} = {width * height:,} pixels, over the cap of "
            f"{limits.max_pixels:,} pixels (fix: raise [run] max_pixels if the file is genuine, "
            "or remove it: a tiny file claiming huge dimensions is a decompression bomb)",
        )


def _count_frames(
    im: ImageFile.ImageFile, data: bytes, limits: DecodeLimits, source: str, notes: list[str]
) -> int:
    """How many frames the file holds, counted on a separate image object.

    Counting seeks through the file; doing it on a throwaway object keeps the one we decode
    pristine, and a failure (corrupt later frame) costs only a note: we decode frame 0 anyway.
    """
    if not isinstance(getattr(type(im), "n_frames", None), property):
        return max(1, int(getattr(im, "n_frames", 1) or 1))  # a plain attribute set by the header
    counter = _open(data, limits, source)
    try:
        return max(1, int(counter.n_frames))
    except MemoryError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise
    except Exception as exc:
        notes.append(f"could not count frames ({type(exc).__name__}: {exc}); decoded frame 1")
        return 1
    finally:
        counter.close()


def _note_colour_precision(im: ImageFile.ImageFile, notes: list[str]) -> None:
    """Record when Pillow will reduce 16-bit-per-channel colour to 8 bits while decoding."""
    if im.mode not in ("RGB", "RGBA", "LA"):
        return
    for tile in im.tile or ():
        args = tile.args if hasattr(tile, "args") else tile[3]
        rawmode = args if isinstance(args, str) else (args[0] if args else "")
        if isinstance(rawmode, str) and ";16" in rawmode:
            notes.append(
                f"16-bit-per-channel {im.mode} reduced to 8 bits (Pillow has no 16-bit colour mode)"
            )
            return


def _read_orientation(im: Image.Image, notes: list[str]) -> int:
    """The EXIF orientation (1-8); an unreadable or invalid value is a note and means 1."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except MemoryError:
        raise
    except Exception as exc:
        notes.append(f"EXIF block unreadable, orientation not applied ({type(exc).__name__}: {exc})")
        return 1
    if isinstance(value, int) and 1 <= value <= 8:
        return value
    notes.append(f"EXIF orientation {value!r} is not 1-8; ignored")
    return 1


