"""Decompression bombs under the run's memory budget: peak RSS of the whole process tree.

    uv run python benchmarks/bombs.py                    # 16 bombs, resize pipeline: about 2-4 min on 2 cores
    uv run python benchmarks/bombs.py --stage jitter     # a stage that needs float pixels
    uv run python benchmarks/bombs.py --count 4          # a smoke run

The inputs are files under every cap that decode to huge images: PNGs of 10,000 x 10,000 pixels
(about 310 KB each: one colour, deflate compresses 300 MB of pixels ~1000:1) and GIFs of
9,000 x 9,000 (about 60 KB), half of each, generated once into the work folder. One
``imgflow run`` processes all of them with every ``[run]`` setting at its default (the memory
budget included), and the benchmark polls the resident memory of imgflow and all its
descendants (forkserver, decode workers) every 20 ms. Target: the peak stays below 2 GiB for
``resize``; for ``jitter``, whose bombs each need more than the default budget and so run one at
a time, below half the machine's memory (the most one image may use).

Pipelines (``--stage``):
  resize  longer edge to 1024 px, PNG out: the stage works on uint8 pixels
  jitter  color_jitter (brightness/contrast), then the same resize: float32 pixels are needed

The run may fail items with ``memory_budget`` (an item whose own working set does not fit the
budget): the table counts them, and the run is still measured. This script never imports torch
or imgflow: it only starts them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this file

from _common import (  # noqa: E402
    IMGFLOW,
    Row,
    _kib_field,
    ensure_generated,
    machine_facts,
    missing_console_script,
    print_machine_facts,
    print_table,
    process_tree,
    run_measured,
    warm_page_cache,
)

HERE = Path(__file__).resolve().parent
#: The resize pipeline's target: 8-bit stages keep a bomb small enough for the default budget.
TARGET_MIB = 2048


def target_mib(stage: str) -> int:
    """The peak to stay under. A float stage's bomb needs more than the default budget, so the
    run gives it the machine alone, up to half its memory (README: Memory): that is the bound."""
    if stage == "resize":
        return TARGET_MIB
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (2 * 1024 * 1024)
#: Bump when the generated bombs change, so a cached set is rebuilt.
BOMB_VERSION = 1

STAGES = {
    "resize": '[[stages]]\nuse = "resize"\nsize = 1024\nedge = "longer"\n',
    "jitter": ('[[stages]]\nuse = "color_jitter"\nbrightness = 0.3\ncontrast = 0.3\n\n'
               '[[stages]]\nuse = "resize"\nsize = 1024\nedge = "longer"\n'),
}


def _write_bomb(job: tuple[str, int]) -> None:
    """One bomb: a one-colour PNG of 10,000^2 (even index) or palette GIF of 9,000^2 (odd)."""
    from PIL import Image

    path, index = job
    if path.endswith(".png"):
        Image.new("RGB", (10_000, 10_000), (40 + 10 * index, 120, 200 - 10 * index)).save(path, compress_level=9)
    else:
        gif = Image.new("P", (9_000, 9_000), index % 256)
        gif.putpalette([(i * 7 + index) % 256 for i in range(768)])
        gif.save(path)


def ensure_bombs(folder: Path, count: int, say) -> list[Path]:
    """``count`` bombs in ``folder`` (cached behind a stamp file)."""
    paths = [folder / (f"bomb{i:02d}.png" if i % 2 == 0 else f"bomb{i:02d}.gif") for i in range(count)]
    stamp = {"version": BOMB_VERSION, "count": count}
    # One bomb at a time per core costs ~0.5 GB each: fine on any machine that runs this.
    return ensure_generated(folder, stamp, paths, _write_bomb, [(str(p), i) for i, p in enumerate(paths)],
                            say, "bombs")


def write_pipeline(path: Path, source: Path, output: Path, stage: str, device: str | None) -> Path:
    """The benchmark's pipeline: defaults everywhere in ``[run]`` (except ``--device``)."""
    run = f'[run]\ndevice = "{device}"\n\n' if device else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# written by benchmarks/bombs.py; regenerated on every run\n"
        f'[pipeline]\nname = "bench_bombs_{stage}"\n\n'
        f'[input]\npath = {json.dumps(str(source))}\ninclude = ["*.png", "*.gif"]\n\n'
        f'[output]\npath = {json.dumps(str(output))}\nformat = "png"\n\n{run}{STAGES[stage]}'
    )
    return path


def pixel_files_kib(pids: list[int]) -> int:
    """KiB of imgflow's pixel memory files mapped in ``pids``, each file counted once.

    Decoded pixels travel from a decoder to the main process in anonymous memory files. A file
    waiting in the queue is mapped by the main process but not yet read, so its pages are in
    memory but in no process's RSS; this adds them (whole: the decoder wrote every page).
    """
    sizes: dict[str, int] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as fh:
                for line in fh:
                    if "memfd:imgflow-pixels" not in line:
                        continue
                    fields = line.split()
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    sizes[f"{pid}:{fields[4]}"] = (end - start) // 1024  # per mapping (one per image)
        except OSError:
            continue
    return sum(sizes.values())


class MemoryPoller(threading.Thread):
    """Polls the tree: VmRSS minus shared pages already counted, plus every pixel file whole."""

    def __init__(self, root: int, skip_root: bool, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True, name="bench-pixel-poller")
        self.root, self.skip_root, self.interval_s = root, skip_root, interval_s
        self.stop_event = threading.Event()
        self.peak_kib = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            pids = [pid for pid in process_tree(self.root) if not (self.skip_root and pid == self.root)]
            private = sum(_kib_field(f"/proc/{pid}/status", b"VmRSS:") - _kib_field(f"/proc/{pid}/status", b"RssShmem:")
                          for pid in pids)
            self.peak_kib = max(self.peak_kib, private + pixel_files_kib(pids))
            self.stop_event.wait(self.interval_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=16, help="bombs in the run (default 16)")
    parser.add_argument("--stage", choices=sorted(STAGES), default="resize", help="the pipeline (default resize)")
    parser.add_argument("--device", default=None, help="[run] device (default: the pipeline default, auto)")
    parser.add_argument("--workdir", type=Path, default=HERE / "_work", help="inputs and outputs")
    parser.add_argument("--json", type=Path, help="also write the rows and machine facts here")
    args = parser.parse_args()
    if missing_console_script("bombs.py"):
        return 2
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    facts = machine_facts()
    print_machine_facts(facts)
    source = ensure_bombs(args.workdir / "inputs" / f"bombs-{args.count}", args.count, say)
    warm_page_cache(source)
    out = args.workdir / "out" / f"bombs-{args.stage}"
    if out.exists():
        shutil.rmtree(out)
    pipeline = write_pipeline(args.workdir / "pipelines" / f"bombs-{args.stage}.toml", source[0].parent, out,
                              args.stage, args.device)
    say(f"bombs: {args.count} files ({sum(p.stat().st_size for p in source) / 1024:.0f} KiB in all) "
        f"through `{args.stage}`, every [run] setting at its default")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGFLOW_TEST")}
    poller: list[MemoryPoller] = []

    def watch(pid: int, wrapped: bool) -> None:
        poller.append(MemoryPoller(pid, skip_root=wrapped))
        poller[0].start()

    try:
        m = run_measured([IMGFLOW, "run", pipeline], poll_s=0.02, gnu_time=True, env=env, check=False,
                         on_start=watch)
    finally:
        for p in poller:
            p.stop_event.set()
            p.join()
    with_files = poller[0].peak_kib / 1024 if poller else None
    try:
        summary = json.loads((out / "run-summary.json").read_text())
    except (OSError, ValueError):
        print(m.stderr, file=sys.stderr)
        say(f"the run wrote no summary (exit code {m.returncode}); see its stderr above")
        return 1
    counts = summary.get("counts", {})
    codes: dict[str, int] = {}
    for failure in summary.get("failures", []):
        codes[failure["code"]] = codes.get(failure["code"], 0) + 1
    largest = m.time_v_max_rss_mib if m.time_v_max_rss_mib is not None else m.max_rss_mib
    limit = target_mib(args.stage)
    rows = [
        Row(f"{args.count} bombs, {args.stage}: peak RSS of process tree", m.peak_tree_rss_mib, unit="MiB",
            digits=0, target=f"< {limit}", meets=lambda r: r.imgflow is not None and r.imgflow < limit,
            note="sum of VmRSS over imgflow and every descendant, polled every 20 ms; shared pages "
                 "count once per process that maps them"),
        Row(f"{args.count} bombs, {args.stage}: peak RSS of largest process", largest, unit="MiB", digits=0,
            note="kernel high-water mark (/usr/bin/time -v, else wait4's ru_maxrss)"),
        Row(f"{args.count} bombs, {args.stage}: peak of tree incl. queued pixel files", with_files, unit="MiB",
            digits=0, note="private RSS of every process, plus imgflow's pixel memory files whole (decoded "
                           "images waiting in the queue are in memory but in no process's RSS until read), "
                           "polled every 50 ms"),
        Row(f"{args.count} bombs, {args.stage}: wall time", m.wall_s, unit="s", digits=1,
            note=f"exit code {m.returncode}; {counts.get('done', 0)} done, {counts.get('failed', 0)} failed"
                 + (f" ({', '.join(f'{n} {c}' for c, n in sorted(codes.items()))})" if codes else "")),
    ]
    print()
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"machine": facts, "rows": [r.as_dict() for r in rows],
                                         "counts": counts, "failure_codes": codes}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
