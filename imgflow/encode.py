"""Output naming, encoding and atomic writing.

Three promises hold here, and the rest of the engine leans on them:

* Nothing is written outside the output root: every target goes through :func:`safe_target`,
  which refuses ``..``, absolute paths, NUL bytes and symlinked folders that lead out.
* No partial file ever sits under a final name: :func:`atomic_write` writes a hidden temp file in
  the same folder, fsyncs it, renames it into place and fsyncs the folder, so a run killed at any
  instant leaves either the old file, the new file, or a stray temp file that
  :func:`sweep_temp_files` removes on the next run.
* Pixels survive: images are quantised with rounding and clamping, 16-bit levels are kept exactly
  by PNG and TIFF, and alpha is kept wherever the format can hold it.

Tensor-facing but torch-free at import: an image may be a torch tensor, which is handled through
its own methods, so importing this module costs neither torch nor numpy nor Pillow.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import stat
import string
import struct
import zlib
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from imgflow.errors import ConfigError, ItemError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "DEFAULT_TEMPLATE",
    "EXTENSIONS",
    "TEMP_MARKER",
    "WRITABLE_FORMATS",
    "atomic_write",
    "encode_image",
    "output_relpath",
    "resolve_format",
    "safe_target",
    "sweep_temp_files",
    "validate_template",
]

WRITABLE_FORMATS: tuple[str, ...] = ("jpeg", "png", "webp", "tiff")
EXTENSIONS: dict[str, str] = {"jpeg": "jpg", "png": "png", "webp": "webp", "tiff": "tif"}
DEFAULT_TEMPLATE = "{stem}{variant}.{ext}"
TEMP_MARKER = ".imgflow-tmp-"

# Pillow format names of inputs -> our output format for `format = "same"`. MPO is what Pillow
# calls a JPEG carrying extra frames (many phone cameras); anything else (BMP, GIF...) has no
# lossless writer of its own here, so it becomes PNG.
_SAME_FORMAT = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "TIFF": "tiff"}
_ALIASES = {"jpg": "jpeg", "tif": "tiff"}
_PLACEHOLDERS = ("stem", "variant", "ext", "name", "parent")


# --------------------------------------------------------------------------- formats and names


def resolve_format(fmt: str, source_format: str) -> str:
    """The output format for one item: ``fmt`` itself, or the input's own for ``"same"``.

    ``source_format`` is Pillow's name for the decoded file (``ImageMeta.format``). ``jpg`` and
    ``tif`` are accepted as spellings of ``jpeg`` and ``tiff``.
    """
    name = _ALIASES.get(fmt.strip().lower(), fmt.strip().lower())
    if name == "same":
        return _SAME_FORMAT.get((source_format or "").upper(), "png")
    if name not in WRITABLE_FORMATS:
        choices = ", ".join((*WRITABLE_FORMATS, "same"))
        raise ConfigError(f"[output] format: expected one of {choices}, got {fmt!r}")
    return name


def validate_template(template: str) -> str | None:
    """Why a naming template is unusable, or None when it is fine.

    Rendered once with sample values (top-level source, no variant) so that templates which could
    produce an empty name, an absolute path or ``..`` are caught before a run, not per item.
    """
    try:
        fields = _template_fields(template)
    except ValueError as exc:
        return f"template {template!r}: {exc}"
    unknown = sorted({f for f in fields if f not in _PLACEHOLDERS})
    if unknown:
        known = ", ".join("{" + p + "}" for p in _PLACEHOLDERS)
        return f"template {template!r}: unknown placeholder {{{unknown[0]}}} (use {known})"
    if "\x00" in template:
        return f"template {template!r}: contains a NUL character; remove it"
    if template.startswith("/"):
        return (
            f"template {template!r}: is absolute; outputs are named relative to the source's folder"
        )
    if ".." in template.split("/"):
        return f"template {template!r}: contains '..'; outputs cannot leave the output folder"
    sample = _render(template, stem="photo", variant="", ext="jpg", name="photo.jpg", parent="")
    parts = sample.split("/")
    if not sample or any(p in ("", ".", "..") for p in parts):
        return (
            f"template {template!r}: gives the empty or invalid name {sample!r} for a top-level "
            "file 'photo.jpg' (fix: include {stem} or {name}, and no empty folder names)"
        )
    return None


def output_relpath(
    source_relpath: str, template: str = DEFAULT_TEMPLATE, variant: str = "", fmt: str = "png"
) -> str:
    """Where one item's image goes, relative to the output root.

    The rendered template sits in the source's own folder, so the output tree mirrors the input
    tree (``sub/dir/a.png`` -> ``sub/dir/a.jpg``). ``{name}`` is the source's file name with its
    extension, ``{parent}`` the name of its folder ("" at the top). Raises :class:`ConfigError`
    for an unusable template.
    """
    problem = validate_template(template)
    if problem:
        raise ConfigError(f"[output] naming: {problem}")
    source = PurePosixPath(source_relpath)
    folder = source.parent.as_posix()
    rendered = _render(
        template,
        stem=source.stem,
        variant=variant,
        ext=EXTENSIONS.get(fmt, fmt),
        name=source.name,
        parent=source.parent.name,
    )
    if not rendered or any(p in ("", ".", "..") for p in rendered.split("/")):
        raise ConfigError(
            f"[output] naming: template {template!r} gives the invalid name {rendered!r} for "
            f"{source_relpath!r} (fix: include {{stem}} or {{name}} in the template)"
        )
    return rendered if folder in ("", ".") else f"{folder}/{rendered}"


def _template_fields(template: str) -> list[str]:
    """Placeholder names in a template; ValueError for braces that do not pair up or extras."""
    fields = []
    for _literal, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if spec or conversion:
            raise ValueError(f"placeholder {{{field}}} takes no format spec or conversion")
        if not field:
            raise ValueError(
                "empty placeholder {} (use {stem}, {variant}, {ext}, {name}, {parent})"
            )
        fields.append(field)
    return fields


def _render(template: str, **values: str) -> str:
    """Substitute placeholders by plain lookup (never str.format: no attribute access)."""
    out = []
    for literal, field, _spec, _conversion in string.Formatter().parse(template):
        out.append(literal)
        if field is not None:
            out.append(values[field])
    return "".join(out)


# --------------------------------------------------------------------------- safe targets


def safe_target(root: Path, relpath: str) -> Path:
    """The absolute path for ``relpath`` under ``root``, with its missing folders created.

    Raises ``ItemError("write_error")`` when the path would land outside ``root``: an absolute
    path, a ``..`` part, a NUL byte, or an existing folder component that is a symlink resolving
    outside ``root``. Folders are created one level at a time after that check, so a symlink that
    leads out can never make us create anything outside. (Symlinks inside the root that stay
    inside are followed: people link sub-folders to other disks of the same tree.)
    """
    root_text = os.path.abspath(os.fspath(root))
    parts = _checked_parts(root_text, relpath)
    try:
        os.makedirs(root_text, exist_ok=True)
        real_root = os.path.realpath(root_text)
        current = root_text
        for part in parts[:-1]:
            current = os.path.join(current, part)
            _enter_folder(current, real_root, relpath)
    except OSError as exc:
        raise ItemError(
            "write_error",
            f"{os.path.join(root_text, *parts)}: cannot create its folder ({_os_reason(exc)}) "
            "(fix: check that the output folder is writable)",
        ) from exc
    return Path(root_text, *parts)


def _checked_parts(root: str, relpath: str) -> list[str]:
    """Split ``relpath`` into names, refusing anything that points outside ``root``."""
    problem = None
    if not relpath or "\x00" in relpath:
        problem = "is empty or contains a NUL byte"
    elif relpath.startswith("/") or os.path.isabs(relpath):
        problem = "is absolute"
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if problem is None and ".." in parts:
        problem = "contains '..'"
    if problem is None and not parts:
        problem = "names no file"
    if problem:
        raise ItemError(
            "write_error",
            f"output path {relpath!r} {problem}; outputs must stay inside {root} "
            "(fix: check the [output] naming template or the stage that chose this path)",
        )
    return parts


def _enter_folder(path: str, real_root: str, relpath: str) -> None:
    """Make sure ``path`` is a folder inside the root, creating it when missing."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        try:
            os.mkdir(path)
        except FileExistsError:  # another writer thread made it first
            pass
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        real = os.path.realpath(path)
        if not _is_within(real, real_root):
            raise ItemError(
                "write_error",
                f"output path {relpath!r}: folder {path} is a symlink to {real}, outside the "
                f"output folder {real_root} (fix: remove the link or choose another output folder)",
            )
        if not os.path.isdir(real):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    elif not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


# --------------------------------------------------------------------------- atomic writes


def atomic_write(root: Path, relpath: str, data: bytes, *, replace: bool = True) -> Path:
    """Write ``data`` to ``root/relpath`` so that the final name only ever holds complete files.

    Temp file in the same folder (same file system, so the rename is atomic), created with
    O_EXCL|O_NOFOLLOW so it can neither clobber nor follow anything; fsync of the file before the
    rename and of the folder after it, so a power cut cannot leave a renamed-but-empty file.
    With ``replace=False`` the file is linked into place, which fails atomically when the name
    exists (``ItemError("output_exists")``) even if another process races us. Any OS error is
    ``ItemError("write_error")`` naming the path, and the temp file is removed.
    """
    target = safe_target(root, relpath)
    folder, name = os.path.split(os.fspath(target))
    if not replace and os.path.lexists(target):
        raise _exists_error(target)
    temp = os.path.join(folder, _temp_name(name))
    try:
        _write_synced(temp, data)
        if replace:
            os.replace(temp, target)
        else:
            _link_into_place(temp, os.fspath(target))
        _fsync_folder(folder)
    except BaseException as exc:
        _remove_quietly(temp)
        if isinstance(exc, ItemError):
            raise
        if isinstance(exc, OSError):
            raise ItemError(
                "write_error",
                f"{target}: cannot write ({_os_reason(exc)}) "
                "(fix: check that the output folder is writable and the disk has space)",
            ) from exc
        raise
    return target


def _temp_name(name: str) -> str:
    """``.{name}.imgflow-tmp-<random>``, shortened so it fits the 255-byte name limit."""
    raw = os.fsencode(name)[:200]
    return "." + os.fsdecode(raw) + TEMP_MARKER + secrets.token_hex(6)


def _write_synced(path: str, data: bytes) -> None:
    """Create ``path`` exclusively (never following a link), write everything, fsync."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o666)  # the umask decides, as for any file the user creates
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _link_into_place(temp: str, target: str) -> None:
    """No-clobber rename: ``link`` fails if the target exists, then drop the temp name."""
    try:
        os.link(temp, target, follow_symlinks=False)
    except FileExistsError:
        raise _exists_error(Path(target)) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            raise
        # File systems without hard links (FAT, some FUSE): check-then-rename is the best left.
        if os.path.lexists(target):
            raise _exists_error(Path(target)) from None
        os.replace(temp, target)
        return
    os.unlink(temp)


def _exists_error(target: Path) -> ItemError:
    return ItemError(
        "output_exists",
        f"{target}: already exists and this run does not overwrite outputs "
        '(fix: set [output] overwrite = "replace", or delete the file)',
    )


def _fsync_folder(folder: str) -> None:
    """Persist the rename itself. Some file systems cannot fsync a folder; that is not an error."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def sweep_temp_files(root: Path) -> int:
    """Remove temp files a killed run left under ``root``; return how many were removed.

    Call it only while holding the output lock: another run's temp files are in use. Only regular
    files named ``.<name>.imgflow-tmp-<hex>`` are touched, and symlinked folders are not entered.
    """
    count = 0
    for folder, _dirs, files in os.walk(os.fspath(root), followlinks=False):
        for name in files:
            if not (name.startswith(".") and TEMP_MARKER in name):
                continue
            path = os.path.join(folder, name)
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    os.unlink(path)
                    count += 1
            except OSError:
                continue  # gone already, or not ours to remove: nothing to clean
    return count


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
