"""Output names: which format an item is written in, and where, relative to the output root.

Outputs mirror the input tree: the rendered naming template sits in the source's own folder
(``sub/dir/a.png`` -> ``sub/dir/a.jpg``). Templates are checked before a run, so a template that
could produce an empty name, an absolute path or ``..`` fails validation, not every item.

Imports nothing heavy.
"""

from __future__ import annotations

import string
from pathlib import PurePosixPath

from imgflow.errors import ConfigError

WRITABLE_FORMATS: tuple[str, ...] = ("jpeg", "png", "webp", "tiff")
EXTENSIONS: dict[str, str] = {"jpeg": "jpg", "png": "png", "webp": "webp", "tiff": "tif"}
DEFAULT_TEMPLATE = "{stem}{variant}.{ext}"

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


