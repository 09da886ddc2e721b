"""Configuration mistakes are exit 2 with file, key and fix, found by ``validate`` (issue 10).

Every case here once ended as exit 70 "internal error … this is a bug", or passed validation
silently: infinite numbers, a seed beyond 64 bits, ``true`` as a number, a NUL in a path, deep
nesting, a byte-order mark, an output folder that cannot be written, 16 bits with JPEG, a
million unknown keys, and parameter errors that named no fix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from imgflow.cli import cli
from imgflow.config import load_pipeline
from imgflow.errors import ValidationFailed
from tests.helpers import write_pipeline


def validate(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["validate", *map(str, args)], catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def pipe(tmp_path: Path, test_plugin) -> Path:
    (tmp_path / "in").mkdir()
    return write_pipeline(tmp_path / "p.toml", input="in", output="out", stages=[{"use": "invert"}])


def append(path: Path, text: str) -> Path:
    path.write_text(path.read_text() + text)
    return path


def problems_of(path: Path, **overrides) -> str:
    with pytest.raises(ValidationFailed) as info:
        load_pipeline(path)
    return "\n".join(str(p) for p in info.value.problems)


@pytest.mark.parametrize("key, value, expected", [
    ("decode_timeout_s", "inf", "expected a finite number, got inf"),
    ("max_file_mb", "inf", "expected a finite number, got inf"),
    ("prefetch_mb", "nan", "finite number"),
    ("seed", "18446744073709551615", "less than or equal to 9223372036854775807"),
    ("seed", "-1", "greater than or equal to 0"),
    ("batch_size", "true", "expected an integer, got true"),
    ("max_file_mb", "true", "expected a number, got true"),
    ("max_pixels", "99999999999999999999999", "fits in 64 bits"),
    ("decode_timeout_s", "1e300", "less than or equal to 86400"),  # once: OverflowError in the pool
])
def test_run_values_are_checked_by_validate(pipe, key, value, expected):
    text = pipe.read_text().replace("[run]\n", f"[run]\n{key} = {value}\n")
    pipe.write_text(text)
    code, out = validate(pipe)
    assert code == 2, out
    assert f"[run] {key}: " in out and expected in out and "(fix: " in out, out
    assert "internal error" not in out


def test_stage_parameters_follow_the_same_rules(pipe, tmp_path):
    """The rules live in the Params base class, so every stage (ours or a plugin's) has them."""
    path = write_pipeline(tmp_path / "s.toml", input="in", output="out", stages=[
        {"use": "resize", "size": True},
        {"use": "color_jitter", "id": "cj", "brightness": float("inf")},
        {"use": "augment", "copies": True, "ops": [{"op": "flip_horizontal"}]},
    ])
    text = problems_of(path)
    assert "(resize) size: expected an int >= 1" in text and "got True" in text
    assert "(color_jitter) brightness" in text and "finite number" in text
    assert "(augment) copies: expected an integer, got true" in text


def test_nul_in_a_path_bom_and_deep_nesting(pipe, tmp_path):
    text = pipe.read_text()
    nul = tmp_path / "nul.toml"
    nul.write_text(text.replace('path = "out"', 'path = "out\\u0000x"'))
    code, out = validate(nul)
    assert code == 2 and "[output] path: 'out\\x00x' contains a NUL character" in out, out
    style = write_pipeline(tmp_path / "t.toml", input="in", output="out", stages=[{"use": "tag", "label": "a\x00"}])
    assert "(tag) label: 'a\\x00' contains a NUL character" in problems_of(style)  # any text value

    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())  # what Windows Notepad writes
    code, out = validate(bom)
    assert code == 0, out

    deep = tmp_path / "deep.toml"
    deep.write_text(text + "[[stages]]\nuse = \"tag\"\nlabel = " + "[" * 600 + "]" * 600 + "\n")
    code, out = validate(deep)
    assert code == 2 and "nested more than 32 levels deep" in out, out
    sized = write_pipeline(tmp_path / "r.toml", input="in", output="out", stages=[{"use": "resize", "size": 8}])
    code, out = validate(sized, "-p", "resize.size=" + "[" * 600 + "]" * 600)  # too deep: stays text
    assert code == 2 and "(resize) size: expected an int >= 1" in out and len(out) < 1000, out


def test_bit_depth_16_needs_a_format_that_holds_it(pipe):
    path = append(pipe, "").read_text().replace("[output]\n", '[output]\nformat = "jpeg"\nbit_depth = 16\n')
    pipe.write_text(path)
    code, out = validate(pipe)
    assert code == 2 and "bit_depth = 16 with format = 'jpeg'" in out and 'format = "png"' in out, out
    pipe.write_text(path.replace('"jpeg"', '"png"'))
    assert validate(pipe)[0] == 0


def test_output_folder_below_a_file_is_caught_by_validate(pipe, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, out = validate(pipe, "-o", tmp_path / "afile" / "sub")
    assert code == 2 and "which is a file, not a folder" in out, out
    (tmp_path / "taken" / ".imgflow").parent.mkdir()
    (tmp_path / "taken" / ".imgflow").write_text("x")
    code, out = validate(pipe, "-o", tmp_path / "taken")
    assert code == 2 and ".imgflow is a file where imgflow keeps its state folder" in out, out
    result = CliRunner().invoke(cli, ["run", str(pipe), "-o", str(tmp_path / "afile" / "sub")],
                                catch_exceptions=False)
    assert result.exit_code == 2 and "internal error" not in result.output, result.output


def _make_unwritable(folder: Path) -> list[str]:
    """Permissions (not root), else the immutable flag (root): returns how to undo it."""
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return []
    chattr = shutil.which("chattr")
    if chattr and subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode == 0:
        if not os.access(folder, os.W_OK):
            return [chattr, "-i", str(folder)]
    pytest.skip("cannot make a folder unwritable here (root without chattr +i)")


def test_an_unwritable_output_folder_is_exit_2_for_validate_and_run(pipe, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    undo = _make_unwritable(locked)
    try:
        code, out = validate(pipe, "-o", locked / "out")
        assert code == 2 and f"{locked} (where it would be created) is not writable" in out, out
        result = CliRunner().invoke(cli, ["run", str(pipe), "-o", str(locked)], catch_exceptions=False)
        assert result.exit_code == 2 and "is not writable" in result.output, result.output
        assert "internal error" not in result.output
    finally:
        if undo:
            subprocess.run(undo, check=True)
        locked.chmod(0o755)


def test_fifty_thousand_unknown_keys_print_one_screen(pipe, tmp_path):
    lines = [f"k{i} = 1" for i in range(50_000)]
    append(pipe, "\n".join(lines) + "\n")
    started = time.perf_counter()
    code, out = validate(pipe)
    assert code == 2 and time.perf_counter() - started < 15
    assert out.count("\n") < 30 and len(out) < 5000, out[:3000]
    assert "49,980 more unknown keys" in out and "k0: unknown key" in out


def test_every_parameter_problem_names_a_fix(test_plugin):
    """A sweep of bad values over every stage's every key: no message is left without a fix."""
    from imgflow.config.validate import check_stages
    from imgflow.plugins import stage_registry

    values = [True, -1, 0, "x", [], [1, 2, 3], [2.0, 1.0], {"a": 1}, [{"op": "nope"}],
              [{"op": "flip_horizontal", "p": 2}], [{"op": "color_jitter", "brightness": -1}]]
    missing = []
    for name, entry in sorted(stage_registry().items()):
        for key in entry.cls.Params.model_fields:
            for value in values:
                problems: list = []
                check_stages("p.toml", {"stages": [{"use": name, key: value}]}, problems)
                missing += [str(p) for p in problems if "fix:" not in str(p)]
    assert not missing, "\n".join(missing[:10])
