"""The engine's image path against the tools people use for the same job: libvips, ImageMagick,
a plain PIL loop.

    uv run python benchmarks/imagepath.py                 # 300 images, 2 alternated reps: ~6 min on 2 cores
    uv run python benchmarks/imagepath.py --count 100 --reps 1
    uv run python benchmarks/imagepath.py --only full     # the full-resolution figure alone

The job (issue 17): generated 1600x1200 photo-like JPEGs (q90) shrunk to 800 px on the longer edge
and saved as JPEG q90. Every side is a process of its own, timed from launch to exit, each
writing into an empty folder; the sides alternate (A B C ..., then ... C B A) and the table
gives medians.

* imgflow: ``imgflow run`` of a ``resize`` pipeline (bilinear, antialiased: the stage's
  default), 2 decode workers, batch 8, CPU. "DCT" runs with ``decode_downscale = true`` (the
  default: JPEGs decode at 1/2 scale when the stage shrinks at least that much); "full" with
  ``decode_downscale = false``: every pixel decoded, as for PNG or TIFF inputs or a crop
  before the resize.
* PIL loop (``_baselines.py pil-resize``): one process, open, convert, ``resize(BILINEAR)``, save.
* ImageMagick ``mogrify -resize 800x800 -quality 90``, one call per folder, with and without
  its size hint ``-define jpeg:size=800x800`` (Debian's imagemagick; ``/usr/bin/mogrify``).
* libvips ``thumbnail`` (shrink-on-load) + ``jpegsave Q=90`` through pyvips, in 1 and in 2
  processes. pyvips is not an imgflow dependency: the benchmark runs it with the Python of
  ``--vips-python`` (default ``benchmarks/_work/vips-env/bin/python``; set it up with
  ``uv venv benchmarks/_work/vips-env && uv pip install --python benchmarks/_work/vips-env/bin/python
  pyvips pillow``, libvips from Debian: ``apt-get install libvips42``). Without it those rows
  say so.

Checks: every side must write every output at 800x600; imgflow's summary must say N done. The
note gives the mean and largest difference between imgflow's and the PIL loop's pictures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    IMGFLOW,
    BenchmarkError,
    Row,
    ensure_images,
    machine_facts,
    median,
    print_machine_facts,
    print_table,
    run_measured,
    warm_page_cache,
)
from engine import bench_env, read_summary  # noqa: E402

HERE = Path(__file__).resolve().parent
BASELINES = HERE / "_baselines.py"
WIDTH, HEIGHT, SIZE, QUALITY = 1600, 1200, 800, 90


def write_pipeline(path: Path, source: Path, output: Path, downscale: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# written by benchmarks/imagepath.py; regenerated on every run\n"
        f"[pipeline]\nname = \"bench_imagepath\"\n\n"
        f"[input]\npath = {json.dumps(str(source))}\ninclude = [\"**/*.jpg\"]\n\n"
        f"[output]\npath = {json.dumps(str(output))}\nformat = \"jpeg\"\nquality = {QUALITY}\n\n"
        f"[run]\ndevice = \"cpu\"\nworkers = 2\nbatch_size = 8\ndecode_downscale = {str(downscale).lower()}\n\n"
        f"[[stages]]\nuse = \"resize\"\nsize = {SIZE}\nedge = \"longer\"\n")
    return path


def check_folder(out: Path, count: int, who: str) -> None:
    found = sorted(out.rglob("*.jpg"))
    if len(found) != count:
        raise BenchmarkError(f"{who} wrote {len(found)} JPEGs into {out}, expected {count}")
    with Image.open(found[0]) as im:
        if im.size != (SIZE, SIZE * HEIGHT // WIDTH):
            raise BenchmarkError(f"{who}: {found[0]} is {im.size}, expected {(SIZE, SIZE * HEIGHT // WIDTH)}")


def difference(a: Path, b: Path) -> tuple[float, int]:
    with Image.open(a) as x, Image.open(b) as y:
        d = np.abs(np.asarray(x.convert("RGB"), dtype=np.int16) - np.asarray(y.convert("RGB"), dtype=np.int16))
    return float(d.mean()), int(d.max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--only", choices=("dct", "full"), action="append",
                        help="dct: the job with JPEG DCT scaling against every peer; full: imgflow at full "
                             "resolution against the PIL loop (repeatable; default both)")
    parser.add_argument("--vips-python", type=Path, default=HERE / "_work" / "vips-env" / "bin" / "python")
    parser.add_argument("--workdir", type=Path, default=HERE / "_work")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    only = set(args.only or ("dct", "full"))
    work = args.workdir.resolve()
    facts = machine_facts()
    print_machine_facts(facts)
    src = work / "inputs" / f"photo-{WIDTH}x{HEIGHT}-{args.count}"
    paths = ensure_images(src, args.count, WIDTH, HEIGHT, quality=QUALITY,
                          progress=lambda m: print(m, file=sys.stderr))
    warm_page_cache(paths)
    out = work / "out" / "imagepath"
    pipelines = {mode: write_pipeline(work / "pipelines" / f"imagepath-{mode}.toml", src, out / f"imgflow-{mode}",
                                      downscale=mode == "dct") for mode in ("dct", "full")}
    vips_ok = args.vips_python.exists()

    def imgflow(mode: str) -> float:
        m = run_measured([IMGFLOW, "run", pipelines[mode], "-q"], env=bench_env())
        read_summary(out / f"imgflow-{mode}", expect_done=args.count)
        check_folder(out / f"imgflow-{mode}", args.count, f"imgflow ({mode})")
        return m.wall_s

    def baseline(name: str, python: Path, *extra: str) -> float:
        m = run_measured([python, BASELINES, *extra[:1], src, out / name, *extra[1:]])
        check_folder(out / name, args.count, name)
        return m.wall_s

    sides = {}
    if "dct" in only:
        sides["imgflow DCT"] = lambda: imgflow("dct")
    if "full" in only:
        sides["imgflow full"] = lambda: imgflow("full")
    sides["PIL loop"] = lambda: baseline("pil", Path(sys.executable), "pil-resize")
    if "dct" in only:
        sides["mogrify"] = lambda: baseline("mogrify", Path(sys.executable), "mogrify")
        sides["mogrify + size hint"] = lambda: baseline("mogrify-hint", Path(sys.executable), "mogrify", "--hint")
        if vips_ok:
            sides["libvips, 1 process"] = lambda: baseline("vips1", args.vips_python, "vips-thumbnail")
            sides["libvips, 2 processes"] = lambda: baseline("vips2", args.vips_python, "vips-thumbnail",
                                                              "--processes", "2")
    walls: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for rep in range(args.reps):
        for name in order if rep % 2 == 0 else order[::-1]:
            folder = {"imgflow DCT": "imgflow-dct", "imgflow full": "imgflow-full", "PIL loop": "pil",
                      "mogrify": "mogrify", "mogrify + size hint": "mogrify-hint", "libvips, 1 process": "vips1",
                      "libvips, 2 processes": "vips2"}[name]
            if (out / folder).exists():
                shutil.rmtree(out / folder)
            walls[name].append(sides[name]())
            print(f"  {name:<22} {walls[name][-1]:6.2f} s ({args.count / walls[name][-1]:6.1f} img/s)", file=sys.stderr)
    rate = {name: args.count / median(w) for name, w in walls.items()}
    first = paths[0].relative_to(src)
    rows: list[Row] = []
    label = f"{args.count} x {WIDTH}x{HEIGHT} JPEG -> {SIZE} px JPEG q{QUALITY}"
    if "dct" in only:
        mean_d, max_d = difference(out / "imgflow-dct" / first, out / "pil" / first)
        rows.append(Row(f"{label}, imgflow (DCT scaling) vs libvips, 2 processes", rate["imgflow DCT"],
                        rate.get("libvips, 2 processes"), unit="img/s", target=">= 0.8x",
                        meets=lambda r: r.ratio is not None and r.ratio >= 0.8,
                        note=("" if vips_ok else f"libvips rows skipped: no {args.vips_python} (see the "
                              "module docstring); ") + f"medians of {args.reps} alternated runs, whole "
                              f"processes; imgflow vs the PIL loop's picture: mean {mean_d:.2f}, max {max_d} "
                              "levels (DCT scaling and filters differ)"))
        rows.append(Row("  vs libvips, 1 process", rate["imgflow DCT"], rate.get("libvips, 1 process"), unit="img/s"))
        rows.append(Row("  vs mogrify with its size hint (-define jpeg:size)", rate["imgflow DCT"],
                        rate["mogrify + size hint"], unit="img/s", target=">= 1.0x",
                        meets=lambda r: r.ratio is not None and r.ratio >= 1.0))
        rows.append(Row("  vs mogrify", rate["imgflow DCT"], rate["mogrify"], unit="img/s"))
        rows.append(Row("  vs the PIL loop", rate["imgflow DCT"], rate["PIL loop"], unit="img/s", target=">= 1.5x",
                        meets=lambda r: r.ratio is not None and r.ratio >= 1.5))
    if "full" in only:
        rows.append(Row(f"{label}, imgflow at full resolution (decode_downscale = false) vs the PIL loop",
                        rate["imgflow full"], rate["PIL loop"], unit="img/s", target=">= 1.0x",
                        meets=lambda r: r.ratio is not None and r.ratio >= 1.0))
    print()
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"machine": facts, "walls": walls, "rows": [r.as_dict() for r in rows]},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
