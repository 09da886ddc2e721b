"""Writing an item's outputs: names that mirror the input tree, one owner per name, atomic files.

Thread-safe: the local executor calls :meth:`OutputWriter.write` from several writer threads.
The Ray executor splits a write in two: :meth:`OutputWriter.stage` in a worker (encode, fsynced
temp files beside the final names) and :meth:`OutputWriter.commit` on the driver (claim each
name, rename into place), because only the driver holds the state store the claims consult.
Two inputs that map to one output name (``a.png`` and ``a.jpg`` both to ``a.jpg``) must not
overwrite each other: each name is *claimed* by its input before it is written, against the
names recorded in the state store and those claimed by items still in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imgflow.errors import ItemError

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.batch import Artifact, ImageMeta, Item
    from imgflow.config.sections import OutputSection


class OutputClaims:
    """Which input owns each output name: claimed in flight, else as the state store records."""

    def __init__(self, recorded_owner: Callable[[str], str | None]) -> None:
        self._recorded_owner = recorded_owner
        self._claims: dict[str, str] = {}  # output relpath -> input, for items not yet recorded
        self._lock = threading.Lock()

    def claim(self, rel: str, source: str) -> None:
        """Refuse an output name another input already owns (recorded, or in flight now)."""
        with self._lock:
            owner = self._claims.get(rel)
            if owner is None:
                owner = self._recorded_owner(rel)
            if owner is not None and owner != source:
                raise ItemError("output_collision", f"output {rel} belongs to input {owner}: both inputs map "
                                "to that one output name (fix: [output] naming = \"{name}{variant}.{ext}\" "
                                "keeps the input's extension in the name, or format = \"same\")")
            self._claims[rel] = source

    def release(self, source: str) -> None:
        """Once an item is recorded (done or failed) the store, not the claims, is the truth."""
        with self._lock:
            for rel in [rel for rel, owner in self._claims.items() if owner == source]:
                del self._claims[rel]


@dataclass(frozen=True)
class StagedOutput:
    """An output encoded and written to a temp file beside its final name, not yet committed."""

    relpath: str  # the final name, under the output root
    temp: str  # the fsynced temp file (absolute path)
    is_image: bool  # images obey [output] overwrite and name claims; artefacts are replaced


class OutputWriter:
    """Encodes and writes items and artefacts under the output root, atomically."""

    def __init__(self, root: Path, output: OutputSection, claims: OutputClaims) -> None:
        self.root = root
        self.output = output
        self.claims = claims

    def write(self, source: str, meta: ImageMeta, prior_outputs: Iterable[str], items: list[Item]) -> list[str]:
        """Write every item of one input (its image and artefacts); return the paths written.

        A name this input wrote before may be replaced even with ``overwrite = "never"``: it is
        this input's own earlier output.
        """
        from imgflow.io.atomic import atomic_write
        from imgflow.io.encode import encode_image, encode_uint8
        from imgflow.io.naming import output_relpath, resolve_format

        out = self.output
        prior = set(prior_outputs)
        fmt = resolve_format(out.format, meta.format)
        depth = meta.bit_depth if out.bit_depth == "same" else int(out.bit_depth)
        written: list[str] = []
        for item in items:
            if item.write_image:
                rel = output_relpath(source, out.naming, item.variant, fmt)
                self.claims.claim(rel, source)
                data = encode_uint8(item.uint8, fmt, out.quality, depth) if item.uint8 is not None else None
                if data is None:  # float pixels, or 8-bit ones that need arithmetic (JPEG + alpha)
                    data = encode_image(item.image, item.alpha, fmt, out.quality, depth)
                atomic_write(self.root, rel, data, replace=out.overwrite == "replace" or rel in prior)
                written.append(rel)
            written.extend(self.write_artifacts(item.artifacts))
        return written

    def stage(self, source: str, meta: ImageMeta, items: list[Item]) -> list[StagedOutput]:
        """Encode every item of one input into temp files beside their final names (worker side).

        Nothing is claimed or renamed; on an error the temp files already written are removed.
        """
        from imgflow.io.atomic import stage_file
        from imgflow.io.encode import encode_image
        from imgflow.io.naming import output_relpath, resolve_format

        out = self.output
        fmt = resolve_format(out.format, meta.format)
        depth = meta.bit_depth if out.bit_depth == "same" else int(out.bit_depth)
        staged: list[StagedOutput] = []
        try:
            for item in items:
                if item.write_image:
                    rel = output_relpath(source, out.naming, item.variant, fmt)
                    data = encode_image(item.image, item.alpha, fmt, out.quality, depth)
                    staged.append(StagedOutput(rel, stage_file(self.root, rel, data), True))
                for art in item.artifacts:
                    data = art.data if art.data is not None else encode_image(
                        art.image, None, art.format or "png", out.quality, 8)
                    staged.append(StagedOutput(art.relpath, stage_file(self.root, art.relpath, data), False))
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def commit(self, source: str, prior_outputs: Iterable[str], staged: list[StagedOutput],
               sync: bool = True) -> list[str]:
        """Claim each staged image's name and rename everything into place (driver side).

        The same rules as :meth:`write`: a name another input owns is ``output_exists``; with
        ``overwrite = "never"`` only this input's own earlier outputs are replaced. On an error
        the temp files not yet renamed are removed (names already renamed stay, as with write).
        With ``sync=False`` the caller fsyncs the folders (:meth:`sync`) before recording.
        """
        from imgflow.io.atomic import commit_file, safe_target

        prior = set(prior_outputs)
        written: list[str] = []
        try:
            for index, out in enumerate(staged):
                replace = True
                if out.is_image:
                    self.claims.claim(out.relpath, source)
                    replace = self.output.overwrite == "replace" or out.relpath in prior
                commit_file(out.temp, safe_target(self.root, out.relpath), replace=replace, sync=sync)
                written.append(out.relpath)
        except BaseException:
            self.discard(staged[index:])
            raise
        return written

    def sync(self, written: Iterable[str]) -> None:
        """Persist the renames of ``written`` (output relpaths): one fsync per folder."""
        from imgflow.io.atomic import sync_folder

        for folder in sorted({(self.root / rel).parent for rel in written}):
            sync_folder(folder)

    @staticmethod
    def discard(staged: Iterable[StagedOutput]) -> None:
        """Remove staged temp files that will not be committed."""
        from imgflow.io.atomic import discard_file

        for out in staged:
            discard_file(out.temp)

    def write_artifacts(self, artifacts: Iterable[Artifact]) -> list[str]:
        """Extra files a stage produced (crops, labels, checkpoints); replaced when present."""
        from imgflow.io.atomic import atomic_write
        from imgflow.io.encode import encode_image

        written = []
        for art in artifacts:
            data = art.data if art.data is not None else encode_image(
                art.image, None, art.format or "png", self.output.quality, 8)
            atomic_write(self.root, art.relpath, data, replace=True)
            written.append(art.relpath)
        return written
