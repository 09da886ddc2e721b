"""The baselines the engine is compared with, run as their own processes (like imgflow is).

    python benchmarks/_baselines.py pil-resize INPUT OUTPUT --size 800 --quality 90
    python benchmarks/_baselines.py walk-stat INPUT

``pil-resize`` is the plain loop someone would write instead of using imgflow: one process,
for each JPEG open it, convert to RGB, shrink the longer edge to ``--size`` with
``Image.resize(..., Image.Resampling.BILINEAR)`` and save it as JPEG. Pillow's BILINEAR widens
its kernel when shrinking (it averages every source pixel, no aliasing), which is what the
``resize`` stage does with its defaults (bilinear, ``antialias = true``). No draft mode and no
``reducing_gap``: those would let libjpeg skip DCT work that imgflow's decoder does not skip.
Outputs are saved in place with no temp file or fsync; imgflow's atomic write pays for both.

``walk-stat`` is the floor of an incremental rerun: walk the folder and ``stat`` every JPEG,
which any "is this file new?" check must do at least.

``vips-thumbnail`` and ``mogrify`` are the other tools such a job is done with (libvips, run
with the benchmark-only environment that has pyvips; ImageMagick from Debian).

Each prints one JSON line: how many images, and the seconds spent in the loop (after imports).
Only the standard library and Pillow are imported (and pyvips by ``vips-thumbnail``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _jpegs(root: Path) -> list[Path]:
    """Every visible ``*.jpg`` under ``root``, sorted: the files imgflow's include glob selects."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(folder) / f for f in sorted(files) if f.lower().endswith(".jpg") and not f.startswith("."))
    return found


def longer_edge_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) with the longer edge ``size`` and the aspect kept, truncating like the stage."""
    if width >= height:
        return size, max(1, int(size * height / width))
    return max(1, int(size * width / height)), size


def pil_resize(src: Path, dst: Path, size: int, quality: int) -> dict[str, float]:
    """The plain single-process loop; returns the image count and the loop's seconds."""
    from PIL import Image

    started = time.perf_counter()
    count = 0
    for path in _jpegs(src):
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        small = rgb.resize(longer_edge_size(*rgb.size, size), Image.Resampling.BILINEAR)
        small.save(out, "JPEG", quality=quality)
        count += 1
    return {"images": count, "loop_s": time.perf_counter() - started}


def vips_thumbnail(src: Path, dst: Path, size: int, quality: int, processes: int) -> dict[str, float]:
    """libvips' ``thumbnail`` (shrink-on-load, then a Lanczos reduce) and a JPEG save, in
    ``processes`` processes over interleaved halves of the file list. Needs pyvips (benchmark-only:
    ``benchmarks/_work/vips-env``, see benchmarks/README.md)."""
    from concurrent.futures import ProcessPoolExecutor

    paths = _jpegs(src)
    jobs = [(paths[i::processes], src, dst, size, quality) for i in range(processes)]
    started = time.perf_counter()
    if processes == 1:
        count = _vips_part(*jobs[0])
    else:
        with ProcessPoolExecutor(processes) as pool:
            count = sum(pool.map(_vips_part, *zip(*jobs, strict=True)))
    return {"images": count, "loop_s": time.perf_counter() - started}


def _vips_part(paths: list[Path], src: Path, dst: Path, size: int, quality: int) -> int:
    import pyvips

    for path in paths:
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        pyvips.Image.thumbnail(str(path), size, height=size, size="down").jpegsave(str(out), Q=quality)
    return len(paths)


def mogrify(src: Path, dst: Path, size: int, quality: int, hint: bool) -> dict[str, float]:
    """ImageMagick's ``mogrify -resize SIZExSIZE`` into the mirrored folders, one process per folder
    (ImageMagick threads inside). ``hint``: ``-define jpeg:size=SIZExSIZE``, which lets libjpeg
    decode at a reduced DCT scale that is still at least that size."""
    import subprocess

    folders: dict[Path, list[Path]] = {}
    for path in _jpegs(src):
        folders.setdefault(path.parent, []).append(path)
    started = time.perf_counter()
    for folder, files in folders.items():
        out = dst / folder.relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        define = ["-define", f"jpeg:size={size}x{size}"] if hint else []
        subprocess.run(["/usr/bin/mogrify", "-path", str(out), *define, "-resize", f"{size}x{size}",
                        "-quality", str(quality), *map(str, files)], check=True)
    return {"images": sum(len(f) for f in folders.values()), "loop_s": time.perf_counter() - started}


def walk_stat(src: Path) -> dict[str, float]:
    """Walk and stat every input: the least work any incremental check can do."""
    started = time.perf_counter()
    count = 0
    for path in _jpegs(src):
        st = path.stat()
        count += st.st_size >= 0
    return {"images": count, "loop_s": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    resize = sub.add_parser("pil-resize", help="the plain PIL loop")
    resize.add_argument("input", type=Path)
    resize.add_argument("output", type=Path)
    resize.add_argument("--size", type=int, default=800)
    resize.add_argument("--quality", type=int, default=90)
    walk = sub.add_parser("walk-stat", help="walk and stat every input")
    walk.add_argument("input", type=Path)
    vips = sub.add_parser("vips-thumbnail", help="libvips thumbnail + jpegsave (needs pyvips)")
    magick = sub.add_parser("mogrify", help="ImageMagick mogrify -resize")
    for command in (vips, magick):
        command.add_argument("input", type=Path)
        command.add_argument("output", type=Path)
        command.add_argument("--size", type=int, default=800)
        command.add_argument("--quality", type=int, default=90)
    vips.add_argument("--processes", type=int, default=1)
    magick.add_argument("--hint", action="store_true", help="-define jpeg:size (decode at reduced scale)")
    args = parser.parse_args(argv)
    if args.command == "pil-resize":
        result = pil_resize(args.input, args.output, args.size, args.quality)
    elif args.command == "vips-thumbnail":
        result = vips_thumbnail(args.input, args.output, args.size, args.quality, args.processes)
    elif args.command == "mogrify":
        result = mogrify(args.input, args.output, args.size, args.quality, args.hint)
    else:
        result = walk_stat(args.input)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
