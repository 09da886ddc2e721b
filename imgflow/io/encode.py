"""Encoding images in the batch layout into file bytes: JPEG, PNG (8/16-bit), WebP, TIFF.

Pixels survive: images are quantised with rounding and clamping, 16-bit levels are kept exactly
by PNG and TIFF, and alpha is kept wherever the format can hold it.

Tensor-facing but torch-free at import: an image may be a torch tensor, which is handled through
its own methods, so importing this module costs neither torch nor numpy nor Pillow.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import TYPE_CHECKING, Any

from imgflow.errors import ConfigError, ItemError
from imgflow.io.naming import resolve_format

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


# --------------------------------------------------------------------------- encoding


def encode_image(
    image: Any, alpha: Any = None, fmt: str = "png", quality: int = 92, bit_depth: int = 8
) -> bytes:
    """Encode an image in the batch layout into file bytes of format ``fmt``.

    ``image``: a torch float (3, H, W) tensor in [0, 1] as in :mod:`imgflow.batch` (1 or 4
    channels also accepted, for artefacts), or a numpy (H, W, 3) / (H, W) array in [0, 1].
    ``alpha``: None or (1, H, W) / (H, W) in [0, 1]. Values are clamped to [0, 1], NaN becomes 0,
    and levels are rounded to the nearest of 255 (or 65535) steps.

    Per format: JPEG has no alpha, so transparent pixels are flattened onto white (what viewers
    show for transparency on a page); ``quality`` applies, 4:2:0, no optimize pass (speed). PNG
    keeps alpha and writes 16 bits when ``bit_depth == 16``. WEBP is lossy at ``quality`` with
    alpha kept. TIFF is deflate-compressed with alpha kept and 16 bits when asked. An image whose
    three channels are equal is written as grayscale (smaller, and read back identically), except
    in WEBP (no grayscale mode) and 16-bit TIFF with alpha (which Pillow cannot read back).
    JPEG and WEBP are 8-bit whatever ``bit_depth`` says.
    """
    fmt = resolve_format(fmt, "")
    if bit_depth not in (8, 16):
        raise ConfigError(f"[output] bit_depth: expected 8 or 16, got {bit_depth!r}")
    if fmt in ("jpeg", "webp") and not 1 <= int(quality) <= 100:
        raise ConfigError(f"[output] quality: expected an integer in [1, 100], got {quality!r}")
    if fmt in ("jpeg", "webp"):
        bit_depth = 8
    fast = _quantise_tensor(image, alpha, bit_depth, flatten=fmt == "jpeg")
    if fast is not None:
        return _encode_levels(fast, fmt, int(quality), bit_depth)
    rgb, opacity = _as_float_arrays(image, alpha)
    if fmt == "jpeg" and opacity is not None:
        rgb -= 1.0  # rgb * a + white * (1 - a), in place: (rgb - 1) * a + 1
        rgb *= opacity[..., None]
        rgb += 1.0
        opacity = None
    if fmt in ("jpeg", "webp"):
        bit_depth = 8
    return _encode_levels(_quantise(rgb, opacity, bit_depth), fmt, int(quality), bit_depth)


def encode_uint8(pixels: Any, fmt: str = "png", quality: int = 92, bit_depth: int = 8) -> bytes | None:
    """Encode 8-bit (C, H, W) pixels (a torch.uint8 tensor or a numpy view, alpha as channel 4)
    without floats.

    The same bytes :func:`encode_image` writes for the image k/255 (quantising k/255 gives k back
    exactly, and k x 257 at 16 bits), without its float32 copy. Returns None for what needs
    arithmetic on the pixels (JPEG with alpha, which is flattened onto white): use encode_image.
    """
    import numpy as np

    fmt = resolve_format(fmt, "")
    if bit_depth not in (8, 16):
        raise ConfigError(f"[output] bit_depth: expected 8 or 16, got {bit_depth!r}")
    channels = int(pixels.shape[0])
    if pixels.ndim != 3 or channels not in (3, 4) or 0 in pixels.shape or (fmt == "jpeg" and channels == 4):
        return None
    if fmt in ("jpeg", "webp"):
        bit_depth = 8
    if isinstance(pixels, np.ndarray):  # the decode workers' pixels (imgflow.io.decoder_ops): no torch
        hwc = np.ascontiguousarray(pixels.transpose(1, 2, 0))
    else:
        hwc = np.ascontiguousarray(pixels.detach().to("cpu").permute(1, 2, 0).numpy())
    if bit_depth == 16:
        hwc = hwc.astype(np.uint16) * np.uint16(257)
    return _encode_levels(hwc, fmt, int(quality), bit_depth)


def _encode_levels(pixels: np.ndarray, fmt: str, quality: int, bit_depth: int) -> bytes:
    """(H, W, 3|4) uint8/uint16 levels -> file bytes; equal channels are written as grayscale."""
    has_alpha = pixels.shape[-1] == 4
    # WEBP has no grayscale mode; Pillow cannot read 16-bit gray+alpha TIFFs back.
    gray_ok = fmt != "webp" and not (fmt == "tiff" and bit_depth == 16 and has_alpha)
    if gray_ok and _is_gray(pixels):
        pixels = pixels[..., [0]] if not has_alpha else pixels[..., [0, 3]]
    try:
        if fmt == "tiff":
            return _encode_tiff(pixels)
        if fmt == "png" and bit_depth == 16:
            return _encode_png16(pixels)
        return _encode_pillow(pixels, fmt, int(quality))
    except (OSError, ValueError) as exc:
        raise ItemError("write_error", f"cannot encode the image as {fmt}: {exc}") from exc


def _quantise_tensor(image: Any, alpha: Any, bits: int, flatten: bool) -> np.ndarray | None:
    """The fast path for a (3, H, W) tensor (and (1, H, W) alpha): levels as (H, W, C) uint.

    Same rules as the numpy path (NaN -> 0, clamp to [0, 1], round half up, alpha flattened onto
    white for JPEG) but on the contiguous planes, transposing only the final integer levels:
    about 3x faster for an 800x600 image. Returns None for anything else (the general path).
    """
    if not _is_tensor(image) or image.ndim != 3 or image.shape[0] != 3 or 0 in image.shape:
        return None
    if alpha is not None and (not _is_tensor(alpha) or tuple(alpha.shape) != (1, *image.shape[1:])):
        return None
    import numpy as np
    import torch

    rgb = torch.nan_to_num(image.detach().to("cpu", torch.float32), nan=0.0, posinf=1.0, neginf=0.0)
    rgb.clamp_(0.0, 1.0)
    planes = rgb
    if alpha is not None:
        opacity = torch.nan_to_num(alpha.detach().to("cpu", torch.float32), nan=0.0, posinf=1.0, neginf=0.0)
        opacity.clamp_(0.0, 1.0)
        if flatten:  # rgb * a + white * (1 - a)
            planes = rgb.sub_(1.0).mul_(opacity).add_(1.0)
        else:
            planes = torch.cat([rgb, opacity])
    planes = planes.mul_(255.0 if bits == 8 else 65535.0).add_(0.5)
    levels = planes.to(torch.uint8) if bits == 8 else planes.to(torch.int32)
    hwc = levels.permute(1, 2, 0).contiguous().numpy()
    return hwc if bits == 8 else hwc.astype(np.uint16)


def _as_float_arrays(image: Any, alpha: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) float32 colour and (H, W) float32 alpha or None, clamped to [0, 1].

    Both are private copies, so the in-place arithmetic that follows never touches the caller's
    tensors. Shapes that do not fit the batch layout are a stage's mistake:
    ``ItemError("stage_error")``.
    """
    import numpy as np

    rgb = _to_numpy(image, channels_first=_is_tensor(image))
    if rgb.ndim == 2:
        rgb = rgb[..., None]
    if rgb.ndim != 3 or rgb.shape[-1] not in (1, 3, 4) or 0 in rgb.shape:
        raise ItemError(
            "stage_error",
            f"cannot write an image of shape {tuple(rgb.shape)}: expected (3, H, W) tensors or "
            "(H, W, 3) arrays (fix: the last stage must return images in the batch layout)",
        )
    if rgb.shape[-1] == 4:
        if alpha is None:
            alpha = rgb[..., 3]
        rgb = rgb[..., :3]
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    opacity = None
    if alpha is not None:
        opacity = _to_numpy(alpha, channels_first=False)
        height, width = rgb.shape[:2]
        if opacity.size != height * width:
            raise ItemError(
                "stage_error",
                f"alpha of shape {tuple(opacity.shape)} does not fit an image of {width}x{height} "
                "(fix: the stage must return alpha as (1, H, W) with the image's H and W)",
            )
        opacity = _clamp01(opacity.reshape(height, width))
    return _clamp01(rgb), opacity


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "detach") and hasattr(value, "permute")


def _to_numpy(value: Any, channels_first: bool) -> np.ndarray:
    """A private float32 copy of a tensor (moved to CPU, channels moved last) or an array."""
    import numpy as np

    if _is_tensor(value):
        tensor = value.detach().to(device="cpu").float()
        if channels_first and tensor.ndim == 3:
            tensor = tensor.permute(1, 2, 0)
        value = tensor.numpy()  # a view; the copy below is the only one made
    return np.array(value, dtype=np.float32, order="C", copy=True)


def _clamp01(values: np.ndarray) -> np.ndarray:
    """Clamp to [0, 1] in place; fmax/fmin also send NaN to 0 and infinities to the ends."""
    import numpy as np

    np.fmax(values, 0.0, out=values)
    np.fmin(values, 1.0, out=values)
    return values


def _quantise(rgb: np.ndarray, opacity: np.ndarray | None, bits: int) -> np.ndarray:
    """(H, W, 3 or 4) uint8/uint16 levels, rounded half up (no bias toward even levels).

    Values are >= 0.5 after adding the half, so the truncating cast is a floor. float32 keeps
    16-bit levels exact: k/65535 times 65535 lands within 0.01 of k.
    """
    import numpy as np

    planes = rgb
    if opacity is not None:
        planes = np.empty((*rgb.shape[:2], 4), dtype=np.float32)
        planes[..., :3] = rgb
        planes[..., 3] = opacity
    planes *= 255.0 if bits == 8 else 65535.0
    planes += 0.5
    return planes.astype(np.uint8 if bits == 8 else np.uint16)


def _is_gray(pixels: np.ndarray) -> bool:
    """Red, green and blue levels all equal: worth writing as one channel."""
    import numpy as np

    return bool(
        np.array_equal(pixels[..., 0], pixels[..., 1])
        and np.array_equal(pixels[..., 0], pixels[..., 2])
    )


def _encode_pillow(pixels: np.ndarray, fmt: str, quality: int) -> bytes:
    """8-bit JPEG, PNG and WEBP through Pillow."""
    from PIL import Image

    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[pixels.shape[-1]]
    data = pixels[..., 0] if mode == "L" else pixels
    picture = Image.fromarray(data)
    if picture.mode != mode:  # pragma: no cover - guards against Pillow changing its inference
        picture = picture.convert(mode)
    buffer = io.BytesIO()
    if fmt == "jpeg":
        picture.save(buffer, "JPEG", quality=quality, optimize=False, subsampling="4:2:0")
    elif fmt == "webp":
        picture.save(buffer, "WEBP", quality=quality, method=4)
    else:
        picture.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def _encode_tiff(pixels: np.ndarray) -> bytes:
    """8- or 16-bit TIFF through tifffile: deflate with horizontal predictor, alpha unassociated."""
    import tifffile

    channels = pixels.shape[-1]
    gray = channels in (1, 2)
    data = pixels[..., 0] if channels == 1 else pixels
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        data,
        photometric="minisblack" if gray else "rgb",
        planarconfig="contig" if channels > 1 else None,
        extrasamples=("unassalpha",) if channels in (2, 4) else None,
        compression="zlib",
        predictor=True,
        metadata=None,
    )
    return buffer.getvalue()


# PNG is written by hand for 16 bits because Pillow cannot write 48/64-bit colour PNGs.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> gray, gray+alpha, RGB, RGBA


def _encode_png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG (any of gray, gray+alpha, RGB, RGBA) from (H, W, C) uint16 pixels.

    Rows are filtered and compressed in blocks of about 4 MB so that the scratch arrays stay
    small however large the image is.
    """
    import numpy as np

    height, width, channels = pixels.shape
    raw = np.ascontiguousarray(pixels.astype(">u2")).view(np.uint8).reshape(height, -1)
    header = struct.pack(">IIBBBBB", width, height, 16, _PNG_COLOR_TYPE[channels], 0, 0, 0)
    compressor = zlib.compressobj(6)
    pieces = []
    block = max(1, (4 << 20) // raw.shape[1])
    previous = np.zeros(raw.shape[1], dtype=np.uint8)
    for start in range(0, height, block):
        rows = raw[start : start + block]
        pieces.append(compressor.compress(_png_filter(rows, previous, 2 * channels).tobytes()))
        previous = rows[-1]
    pieces.append(compressor.flush())
    return b"".join(
        [
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", b"".join(pieces)),
            _png_chunk(b"IEND", b""),
        ]
    )


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(kind)) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_filter(rows: np.ndarray, previous: np.ndarray, bytes_per_pixel: int) -> np.ndarray:
    """Filter each scanline with whichever PNG filter gives the smallest absolute residuals.

    This is libpng's own heuristic. All five filters depend only on unfiltered bytes (``previous``
    is the unfiltered row above the block, zeros at the top), so each is computed for the whole
    block at once. Returns (rows, 1 + row bytes): the filter type byte, then the filtered bytes.
    """
    import numpy as np

    bpp = bytes_per_pixel
    x = rows.astype(np.int16)
    up = np.empty_like(x)
    up[0] = previous
    up[1:] = x[:-1]
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    up_left = np.zeros_like(x)
    up_left[:, bpp:] = up[:, :-bpp]
    estimate = left + up - up_left
    dist_left, dist_up, dist_ul = (np.abs(estimate - v) for v in (left, up, up_left))
    paeth = np.where(
        (dist_left <= dist_up) & (dist_left <= dist_ul),
        left,
        np.where(dist_up <= dist_ul, up, up_left),
    )
    # Casting to uint8 wraps modulo 256, which is exactly the arithmetic the PNG spec asks for.
    candidates = np.stack([x, x - left, x - up, x - (left + up) // 2, x - paeth]).astype(np.uint8)
    cost = np.abs(candidates.view(np.int8).astype(np.int32)).sum(axis=2)
    best = cost.argmin(axis=0)
    chosen = candidates[best, np.arange(rows.shape[0])]
    return np.concatenate([best.astype(np.uint8)[:, None], chosen], axis=1)

