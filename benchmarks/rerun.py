"""Incremental reruns at scale: what a nightly cron run over a large, finished archive costs.

    uv run python benchmarks/rerun.py                    # 100,000 and 1,000,000 items (one-off set-up: ~6 min)
    uv run python benchmarks/rerun.py --items 10000 100000 --reps 3

For each size N it builds, once (cached in ``_work/`` behind a stamp file), a tree of N small
files in folders of 1,000, and a state store in which every one of them is done with the
pipeline's real fingerprint, size and mtime. The store is written by a child process through
imgflow's own ``StateStore`` API (the same records a first run would leave, one output each), so
no first run over a million images is needed. Then it times, alternated, ``imgflow run`` (which
must report ``0 done, N skipped``) and the floor of any incremental check: a Python process that
walks the tree and stats every file. Rows: the rerun's wall time, seconds per 10,000 items
(target: at most 0.3 s), the floor, and how the per-item cost grows from the smallest to the
largest N (target: linear, i.e. a ratio near 1).

The tree's files are copies of one tiny JPEG: a rerun never opens them. The pipeline resizes to
32 px and writes the manifest (the default) but no report; ``--no-manifest`` leaves the manifest
out, so that only the walk and the state lookups are timed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import IMGFLOW, BenchmarkError, Row, median, print_machine_facts, machine_facts, print_table, run_measured  # noqa: E402

HERE = Path(__file__).resolve().parent
BASELINES = HERE / "_baselines.py"
PER_FOLDER = 1000
TREE_VERSION = 1

#: The child that writes the synthetic store: imgflow's own API, the pipeline's own fingerprint.
STORE_WRITER = r"""
import json, os, sys
from pathlib import Path
from imgflow.config import load_pipeline
from imgflow.state import ItemRecord, StateStore

pipeline = load_pipeline(sys.argv[1])
fingerprint = pipeline.fingerprint(pipeline.build_stages())
root, out = pipeline.input_path, pipeline.output_path
with StateStore(out) as store:
    run_id = store.begin_run(pipeline=pipeline.name, pipeline_path=sys.argv[1], fingerprint=fingerprint,
                             options={"argv": ["run", sys.argv[1]]})
    for folder in sorted((e for e in os.scandir(root) if e.is_dir()), key=lambda e: e.name):
        for entry in sorted(os.scandir(folder.path), key=lambda e: e.name):
            st = entry.stat()
            rel = f"{folder.name}/{entry.name}"
            store.record(ItemRecord(input=rel, status="done", size=st.st_size, mtime_ns=st.st_mtime_ns,
                                    content_hash=None, fingerprint=fingerprint, outputs=[rel], error=None,
                                    results={}, timings={"decode_s": 0.001}, meta={"width": 64, "height": 48},
                                    run_id=run_id))
    store.finish_run(run_id, status="finished", counts={}, exit_code=0)
print(json.dumps({"fingerprint": fingerprint}))
"""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def tiny_jpeg() -> bytes:
    """One 64x48 JPEG's bytes (every file of the tree is a copy: a rerun never reads them)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 150)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_pipeline(path: Path, source: Path, output: Path, manifest: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# written by benchmarks/rerun.py; regenerated on every run\n"
        f"[pipeline]\nname = \"bench_rerun\"\n\n"
        f"[input]\npath = {json.dumps(str(source))}\ninclude = [\"**/*.jpg\"]\n\n"
        f"[output]\npath = {json.dumps(str(output))}\nformat = \"jpeg\"\nmanifest = {str(manifest).lower()}\n\n"
        "[run]\ndevice = \"cpu\"\nworkers = 2\n\n"
        "[[stages]]\nuse = \"resize\"\nsize = 32\nedge = \"longer\"\n")
    return path


def ensure_tree(root: Path, count: int) -> None:
    """``count`` copies of one JPEG in folders of 1,000 under ``root``, behind a stamp file."""
    stamp = root / ".stamp.json"
    want = {"count": count, "per_folder": PER_FOLDER, "version": TREE_VERSION}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return
    say(f"  generating {count:,} files under {root} (one-off)")
    data = tiny_jpeg()
    for start in range(0, count, PER_FOLDER):
        folder = root / f"d{start // PER_FOLDER:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, min(count, start + PER_FOLDER)):
            (folder / f"img{i:07d}.jpg").write_bytes(data)
    stamp.write_text(json.dumps(want))


def ensure_store(pipeline: Path, output: Path, root: Path) -> None:
    """The synthetic state store for this tree (rebuilt when the tree's stamp changed)."""
    stamp = output / ".bench-stamp.json"
    want = (root / ".stamp.json").read_text()
    if stamp.is_file() and stamp.read_text() == want:
        return
    say(f"  writing the synthetic state store under {output} (one-off)")
    if output.exists():
        subprocess.run(["rm", "-rf", str(output)], check=True)
    done = subprocess.run([sys.executable, "-c", STORE_WRITER, str(pipeline)], capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchmarkError(f"writing the synthetic store failed:\n{done.stderr[-2000:]}")
    stamp.write_text(want)


def measure(count: int, workdir: Path, reps: int, manifest: bool) -> tuple[float, float]:
    """Median rerun wall and median walk+stat floor for ``count`` items."""
    root = workdir / "inputs" / f"rerun-tree-{count}"
    output = workdir / "out" / f"rerun-{count}{'' if manifest else '-nomanifest'}"
    pipeline = write_pipeline(workdir / "pipelines" / f"rerun-{count}.toml", root, output, manifest)
    ensure_tree(root, count)
    ensure_store(pipeline, output, root)
    # Untimed: a real archive's last recording run exported the manifest; this one does it for
    # the synthetic store, so the timed reruns start from the same state a cron rerun finds.
    run_measured([IMGFLOW, "run", pipeline, "-q"])
    walls, floors = [], []
    for _ in range(reps):
        m = run_measured([IMGFLOW, "run", pipeline, "--json"])
        result = json.loads(m.stdout)
        counts = result.get("counts", {})
        if counts.get("skipped") != count or counts.get("done"):
            raise BenchmarkError(f"rerun of {count:,} items: expected 0 done, {count:,} skipped, got {counts}")
        floor = run_measured([sys.executable, BASELINES, "walk-stat", root])
        if json.loads(floor.stdout)["images"] != count:
            raise BenchmarkError(f"walk-stat saw a different number of files than {count} in {root}")
        walls.append(m.wall_s)
        floors.append(floor.wall_s)
        say(f"  {count:,}: rerun {m.wall_s:.2f}s, walk+stat {floor.wall_s:.2f}s")
    return median(walls), median(floors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-manifest", action="store_true", help="[output] manifest = false: time the walk "
                        "and the lookups alone")
    parser.add_argument("--workdir", type=Path, default=HERE / "_work")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    facts = machine_facts()
    print_machine_facts(facts)
    rows: list[Row] = []
    per_item: dict[int, float] = {}
    for count in sorted(args.items):
        say(f"rerun: {count:,} done items, {args.reps} reruns alternated with walk+stat")
        wall, floor = measure(count, args.workdir, args.reps, not args.no_manifest)
        per_item[count] = wall / count
        rows.append(Row(f"rerun of {count:,} done items, wall", wall, floor, unit="s", digits=2,
                        note="median, whole process; baseline: walk the tree and stat every file"))
        rows.append(Row("  per 10,000 items", wall / count * 10_000, floor / count * 10_000, unit="s",
                        digits=3, target="<= 0.3 s", meets=lambda r: r.imgflow <= 0.3))
    if len(per_item) > 1:
        small, large = min(per_item), max(per_item)
        rows.append(Row(f"per-item cost, {large:,} vs {small:,} items", per_item[large] * 1e6,
                        per_item[small] * 1e6, unit="us", digits=1, target="linear (ratio ~1)",
                        meets=lambda r: r.ratio is not None and r.ratio <= 1.25))
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"machine": facts, "rows": [r.as_dict() for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
