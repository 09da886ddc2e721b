"""Tests for imgflow.io.source: the lazy, ordered, filtered walk over real folders on disk."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgflow.errors import ConfigError
from imgflow.io.source import (
    DEFAULT_INCLUDE,
    SourceFile,
    compile_globs,
    relpath_text,
    validate_glob,
    walk_inputs,
)


def touch(root: Path, relpath: str, data: bytes = b"x") -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rels(items) -> list[str]:
    return [item.relpath for item in items]


# --------------------------------------------------------------------------- globs


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        (
            "**/*.jpg",
            ["a.jpg", "x/a.jpg", "x/y/z/a.JPG", "Photo.Jpg"],
            ["a.jpgx", "a.png", "x/a.jpeg"],
        ),
        ("*.jpg", ["a.jpg"], ["x/a.jpg"]),
        ("raw/**", ["raw/a.png", "raw/b/c.png", "RAW/x"], ["rawx/a.png", "raw", "x/raw/a"]),
        (
            "a/**/b.png",
            ["a/b.png", "a/x/b.png", "a/x/y/b.png"],
            ["ab.png", "a/xb.png", "c/a/b.png"],
        ),
        ("**/thumbs/**", ["thumbs/a.jpg", "x/thumbs/y/a.jpg"], ["x/thumbsy/a.jpg"]),
        ("**", ["a", "a/b/c"], []),
        ("img?.png", ["img1.png", "imgA.png"], ["img.png", "img12.png", "img/.png"]),
        ("[ab]*.tif", ["a1.tif", "B.tif"], ["c.tif"]),
        ("[!ab]*.tif", ["c.tif"], ["a.tif", "/x.tif"]),
        ("x[]]y", ["x]y"], ["xy"]),
        ("scan[0-9].gif", ["scan7.gif"], ["scanx.gif"]),
        ("./sub//*.png", ["sub/a.png"], ["a.png"]),
        ("a*b/*.png", ["axxb/a.png", "ab/a.png"], ["a/b/a.png"]),
    ],
)
def test_glob_semantics(pattern: str, matches: list[str], misses: list[str]) -> None:
    match = compile_globs([pattern])
    for relpath in matches:
        assert match(relpath), f"{pattern!r} should match {relpath!r}"
    for relpath in misses:
        assert not match(relpath), f"{pattern!r} should not match {relpath!r}"


def test_compile_globs_any_of_several_and_none() -> None:
    match = compile_globs(["**/*.png", "keep/*"])
    assert match("x/a.png") and match("keep/a.txt")
    assert not match("x/a.txt")
    assert not compile_globs([])("a.jpg")
    assert compile_globs("**/*.png")("a/b.png")  # a lone string is one pattern


def test_default_include_covers_formats_case_insensitively() -> None:
    match = compile_globs(DEFAULT_INCLUDE)
    for name in ["a.jpg", "a.JPEG", "s/a.png", "a.Tif", "a.tiff", "a.webp", "a.BMP", "a.gif"]:
        assert match(name), name
    for name in ["a.txt", "a.json", "a.jpg.part", "a.heic"]:
        assert not match(name), name


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("/abs/*.jpg", "absolute"),
        ("../up/*.jpg", ".."),
        ("a/../b", ".."),
        ("a[bc", "unclosed"),
        ("a\\b.jpg", "backslash"),
        ("a\x00b", "NUL"),
    ],
)
def test_validate_glob_reports_problem_and_fix(pattern: str, words: str) -> None:
    message = validate_glob(pattern)
    assert message is not None and words in message
    with pytest.raises(ConfigError, match="pattern|empty"):
        compile_globs([pattern])


@pytest.mark.parametrize("pattern", ["**/*.jpg", "a/[!x]?.png", "x[]]", "**"])
def test_validate_glob_accepts_good_patterns(pattern: str) -> None:
    assert validate_glob(pattern) is None


# --------------------------------------------------------------------------- the walk


def test_walk_order_filters_and_metadata(tmp_path: Path) -> None:
    for rel in ["b.jpg", "a/c.PNG", "a.jpg", "c/d/e.tif", "notes.txt", "c/x.json"]:
        touch(tmp_path, rel, data=b"12345")
    os.utime(tmp_path / "b.jpg", ns=(1_000_000_000, 1_234_567_891_000))

    items = list(walk_inputs(tmp_path))
    assert rels(items) == ["a/c.PNG", "a.jpg", "b.jpg", "c/d/e.tif"]
    b = items[2]
    assert isinstance(b, SourceFile)
    assert b.path == tmp_path / "b.jpg" and b.path.is_absolute()
    assert (b.size, b.mtime_ns) == (5, 1_234_567_891_000)

    # Same tree, same order, every time.
    assert rels(walk_inputs(tmp_path)) == rels(items)


def test_walk_include_exclude_and_recursive(tmp_path: Path) -> None:
    for rel in ["a.jpg", "raw/b.jpg", "raw/deep/c.JPG", "keep/d.png", "keep/thumbs/e.png"]:
        touch(tmp_path, rel)
    assert rels(walk_inputs(tmp_path, include=["**/*.jpg"])) == [
        "a.jpg",
        "raw/b.jpg",
        "raw/deep/c.JPG",
    ]
    assert rels(walk_inputs(tmp_path, exclude=["raw/**", "**/thumbs/**"])) == [
        "a.jpg",
        "keep/d.png",
    ]
    assert rels(walk_inputs(tmp_path, recursive=False)) == ["a.jpg"]
    assert rels(walk_inputs(tmp_path, include=["*.jpg"])) == ["a.jpg"]


def test_walk_is_lazy_and_lists_directories_only_when_reached(tmp_path: Path) -> None:
    # 5,000 files in 50 folders. If the first next() had listed the whole tree, files changed in
    # the last folder afterwards would not be seen the way they are now.
    for d in range(50):
        folder = tmp_path / f"d{d:02d}"
        folder.mkdir()
        for f in range(100):
            (folder / f"img{f:03d}.jpg").write_bytes(b"")
    walk = walk_inputs(tmp_path)
    assert inspect.isgenerator(walk)

    started = time.perf_counter()
    first = next(walk)
    first_s = time.perf_counter() - started
    assert first.relpath == "d00/img000.jpg"

    (tmp_path / "d49" / "img099.jpg").unlink()
    (tmp_path / "d49" / "late.jpg").write_bytes(b"")
    rest = rels(walk)
    assert len(rest) == 4999
    assert rest[-1] == "d49/late.jpg" and "d49/img099.jpg" not in rest

    started = time.perf_counter()
    total = sum(1 for _ in walk_inputs(tmp_path))
    full_s = time.perf_counter() - started
    assert total == 5000
    assert first_s < full_s / 5, (first_s, full_s)  # one folder out of fifty


def test_output_folder_inside_input_is_skipped_under_any_spelling(tmp_path: Path) -> None:
    root = tmp_path / "in"
    touch(root, "a.jpg")
    touch(root, "sub/b.jpg")
    touch(root, "out/a.jpg")
    touch(root, "out/deep/c.jpg")
    expected = ["a.jpg", "sub/b.jpg"]

    assert rels(walk_inputs(root, skip_dirs=[root / "out"])) == expected
    # Through "..": a different string for the same folder.
    assert rels(walk_inputs(root, skip_dirs=[root / "sub" / ".." / "out"])) == expected
    # Through a symlink outside the tree.
    link = tmp_path / "link-to-out"
    link.symlink_to(root / "out", target_is_directory=True)
    assert rels(walk_inputs(root, skip_dirs=[link])) == expected
    # An output folder that does not exist yet is simply not skipped.
    assert rels(walk_inputs(root, skip_dirs=[tmp_path / "nowhere"])) == [
        "a.jpg",
        "out/a.jpg",
        "out/deep/c.jpg",
        "sub/b.jpg",
    ]
    # The input root itself given as the output root yields nothing rather than re-reading outputs.
    assert rels(walk_inputs(root, skip_dirs=[root])) == []


def test_symlinks_are_followed_inside_the_input_folder_and_refused_outside(tmp_path: Path) -> None:
    """One policy for files and folders (imgflow.io.links); loops end; nothing vanishes silently."""
    root = tmp_path / "in"
    touch(root, "a/x.jpg")
    touch(root, "b/y.jpg")
    real = touch(tmp_path, "elsewhere/real.png")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    (root / "a" / "up").symlink_to("..", target_is_directory=True)
    (root / "away").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "bee").symlink_to("b", target_is_directory=True)
    (root / "inside.jpg").symlink_to(root / "a" / "x.jpg")
    (root / "linked.png").symlink_to(real)
    (root / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    (root / "ring1.jpg").symlink_to("ring2.jpg")
    (root / "ring2.jpg").symlink_to("ring1.jpg")
    os.mkfifo(root / "pipe.jpg")

    warnings: list[str] = []
    started = time.perf_counter()
    items = {i.relpath: i for i in walk_inputs(root, on_warning=warnings.append)}
    assert time.perf_counter() - started < 5
    readable = sorted(rel for rel, i in items.items() if i.refusal is None)
    assert readable == ["a/x.jpg", "b/y.jpg", "bee/y.jpg", "inside.jpg"]
    assert items["inside.jpg"].size == (root / "a" / "x.jpg").stat().st_size
    refused = {rel: i.refusal for rel, i in items.items() if i.refusal is not None}
    assert refused["linked.png"][0] == "outside_input" and str(real) in refused["linked.png"][1]
    assert refused["broken.jpg"][0] == "unreadable" and "does not exist" in refused["broken.jpg"][1]
    assert "loops back" in refused["ring1.jpg"][1] and "loops back" in refused["ring2.jpg"][1]
    assert refused["pipe.jpg"][0] == "unreadable" and "FIFO" in refused["pipe.jpg"][1]
    # folders not entered are named in a warning: two loops and one link leading outside
    assert len(warnings) == 3, warnings
    assert sum("would loop" in w for w in warnings) == 2 and any("outside the input folder" in w for w in warnings)
    # an exclude glob silences a folder link as it leaves out a file
    quiet: list[str] = []
    list(walk_inputs(root, exclude=["away/**", "**/loop/**", "**/up/**"], on_warning=quiet.append))
    assert quiet == []


def test_undecodable_file_name_keeps_its_exact_bytes_as_key(tmp_path: Path) -> None:
    """b"caf\\xe9.jpg" and a file literally named "caf\\\\xe9.jpg" are two inputs, not one."""
    raw_root = os.fsencode(tmp_path)
    name = b"caf\xe9-\xff.jpg"  # Latin-1 bytes: not UTF-8
    with open(os.path.join(raw_root, name), "wb") as handle:
        handle.write(b"pixels")
    touch(tmp_path, "caf\\xe9-\\xff.jpg")  # the escaped spelling, as a real name
    os.mkdir(os.path.join(raw_root, b"d\xe8r"))
    with open(os.path.join(raw_root, b"d\xe8r", b"x.png"), "wb") as handle:
        handle.write(b"more")

    items = list(walk_inputs(tmp_path))
    assert rels(items) == ["caf\\xe9-\\xff.jpg", "caf\udce9-\udcff.jpg", "d\udce8r/x.png"]
    assert os.fsencode(items[1].relpath) == name
    assert items[1].path.read_bytes() == b"pixels"
    assert os.fsencode(items[1].path) == os.path.join(raw_root, name)
    assert rels(walk_inputs(tmp_path)) == rels(items)
    assert relpath_text(os.fsdecode(b"\xe9t\xc3\xa9")) == "\\xe9t\u00e9"  # for people, not a key


def test_hidden_files_and_folders_are_skipped(tmp_path: Path) -> None:
    for rel in [".hidden.jpg", ".imgflow/state.jpg", "sub/.cache/a.jpg", "sub/.b.png", "ok.jpg"]:
        touch(tmp_path, rel)
    assert rels(walk_inputs(tmp_path, include=["**"])) == ["ok.jpg"]


def test_files_and_folders_vanishing_mid_walk_are_skipped(tmp_path: Path) -> None:
    for rel in ["a/1.jpg", "a/2.jpg", "a/3.jpg", "b/4.jpg", "c/5.jpg"]:
        touch(tmp_path, rel)
    errors: list[tuple[Path, OSError]] = []
    walk = walk_inputs(tmp_path, on_error=lambda path, exc: errors.append((path, exc)))
    assert next(walk).relpath == "a/1.jpg"
    # "a" is already listed; its 2.jpg goes away before being stat'ed. "b" goes away entirely.
    (tmp_path / "a" / "2.jpg").unlink()
    (tmp_path / "b" / "4.jpg").unlink()
    (tmp_path / "b").rmdir()
    assert rels(walk) == ["a/3.jpg", "c/5.jpg"]
    assert sorted(p.name for p, _ in errors) == ["2.jpg", "b"]
    assert all(isinstance(exc, FileNotFoundError) for _, exc in errors)


def test_bad_root_is_a_config_error_at_call_time(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist.*fix"):
        walk_inputs(tmp_path / "missing")
    touch(tmp_path, "file.jpg")
    with pytest.raises(ConfigError, match="not a folder"):
        walk_inputs(tmp_path / "file.jpg")
    with pytest.raises(ConfigError, match="unclosed"):
        walk_inputs(tmp_path, include=["a[b"])


def test_importing_source_does_not_import_torch() -> None:
    code = "import sys, imgflow.io.source; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
