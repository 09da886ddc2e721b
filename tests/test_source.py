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


def test_symlink_loop_terminates_and_linked_files_are_included(tmp_path: Path) -> None:
    root = tmp_path / "in"
    touch(root, "a/x.jpg")
    real = touch(tmp_path, "elsewhere/real.png")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    (root / "a" / "up").symlink_to("..", target_is_directory=True)
    (root / "linked.png").symlink_to(real)
    (root / "broken.jpg").symlink_to(tmp_path / "missing.jpg")

    started = time.perf_counter()
    items = list(walk_inputs(root))
    assert time.perf_counter() - started < 5
    assert rels(items) == ["a/x.jpg", "linked.png"]
    assert items[1].path == root / "linked.png"  # read through the link
    assert items[1].size == real.stat().st_size


def test_undecodable_file_name_gets_stable_text_key_and_exact_path(tmp_path: Path) -> None:
    raw_root = os.fsencode(tmp_path)
    name = b"caf\xe9-\xff.jpg"  # Latin-1 bytes: not UTF-8
    with open(os.path.join(raw_root, name), "wb") as handle:
        handle.write(b"pixels")
    os.mkdir(os.path.join(raw_root, b"d\xe8r"))
    with open(os.path.join(raw_root, b"d\xe8r", b"x.png"), "wb") as handle:
        handle.write(b"more")

    items = list(walk_inputs(tmp_path))
    assert rels(items) == ["caf\\xe9-\\xff.jpg", "d\\xe8r/x.png"]
    for item in items:
        item.relpath.encode("utf-8")  # strict: valid text for JSON and SQLite
    assert items[0].path.read_bytes() == b"pixels"
    assert os.fsencode(items[0].path) == os.path.join(raw_root, name)
    assert rels(walk_inputs(tmp_path)) == rels(items)
    assert relpath_text(os.fsdecode(b"\xe9t\xc3\xa9")) == "\\xe9t\u00e9"


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
