"""Issue 10, "what a new user hit", with real processes: the README's plugin example built,
installed and run; the README's cron line under cron's empty environment; `uv run` without a
bytecode compile on every start; closed pipes; a dry run that never loads torch."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import imgflow
from imgflow.testing import write_images
from tests.helpers import write_pipeline

ROOT = Path(__file__).resolve().parent.parent
IMGFLOW = Path(sys.executable).parent / "imgflow"
EXAMPLE = ROOT / "examples" / "plugin" / "imgflow-sepia"
README = (ROOT / "README.md").read_text()


def uv() -> str:
    """The uv that runs this suite (`uv run` sets $UV), or the one on PATH."""
    found = os.environ.get("UV") or shutil.which("uv")
    assert found, "uv is needed for this test: pip install uv (the README's set-up)"
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the virtualenv markers of the suite's own `uv run`."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    return {**env, **extra}


def readme_block(language: str, first_line: str) -> str:
    """The README code block of ``language`` that starts with ``first_line``."""
    for block in re.findall(rf"```{language}\n(.*?)```", README, re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"README has no ```{language} block starting with {first_line!r}")


# ---------------------------------------------------------------- item 13: the plugin example


def test_readme_plugin_example_is_the_file_the_suite_builds_installs_and_runs(tmp_path):
    # the README shows these files verbatim, so what is tested here is what a reader copies
    assert readme_block("toml", "# pyproject.toml of imgflow-sepia") == (EXAMPLE / "pyproject.toml").read_text()
    init = (EXAMPLE / "imgflow_sepia" / "__init__.py").read_text()
    assert readme_block("python", '"""imgflow-sepia: tints images sepia.') == init
    wheels = tmp_path / "wheels"
    built = subprocess.run([uv(), "build", "--offline", "--wheel", "--out-dir", str(wheels), str(EXAMPLE)],
                           capture_output=True, text=True, timeout=300, env=clean_env())
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("imgflow_sepia-0.1.0-*.whl")
    # A throw-away environment on top of this one: its own site-packages, ours through a .pth file.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # addsitedir, not a bare path: it also reads our .pth files (imgflow itself is installed editable)
    ours = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "_imgflow_suite.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in ours))
    installed = subprocess.run([uv(), "pip", "install", "--offline", "--no-deps", "--python", str(python), str(wheel)],
                               capture_output=True, text=True, timeout=300, env=clean_env())
    assert installed.returncode == 0, installed.stderr
    env = clean_env(IMGFLOW_LOAD_PLUGINS="sepia")
    listed = subprocess.run([str(python), "-m", "imgflow", "plugins", "--json"], capture_output=True, text=True,
                            env=env, timeout=300, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    (sepia,) = json.loads(listed.stdout)["plugins"]
    assert (sepia["distribution"], sepia["version"], sepia["stages"]) == ("imgflow-sepia", "0.1.0", ["sepia"])
    pipe = tmp_path / "sepia.toml"
    pipe.write_text('[input]\npath = "in"\n[output]\npath = "out"\n[[stages]]\nuse = "sepia"\nstrength = 2\n')
    (tmp_path / "in").mkdir()
    checked = subprocess.run([str(python), "-m", "imgflow", "validate", str(pipe)], capture_output=True,
                             text=True, env=env, timeout=300, cwd=tmp_path)
    assert checked.returncode == 2 and "strength" in checked.stderr, checked.stderr  # its Params, checked
    # the plugin's own tests: the stage with imgflow's test kit, and a whole pipeline run through
    # imgflow.run_pipeline (the engine path `imgflow run` takes), with the installed entry point
    tested = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                            capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert tested.returncode == 0 and "2 passed" in tested.stdout, tested.stdout + tested.stderr


# ---------------------------------------------------------------- item 16: cron, bytecode


def test_readme_cron_line_works_in_crons_empty_environment(tmp_path):
    line = next(l for l in README.splitlines() if re.match(r"^\d+ \d+ \* \* \* ", l))
    command = line.split(None, 5)[5]
    assert " uv " not in command and command.count("cd /srv/imgflow && .venv/bin/imgflow run ") == 1
    write_images(tmp_path / "in", 2, size=(24, 32))
    pipe = write_pipeline(tmp_path / "nightly.toml", input=tmp_path / "in", output=tmp_path / "out",
                          stages=[{"use": "resize", "size": 16}], out={"format": "png"}, run={"workers": 1})
    # Last night's run (in this process, where torch is loaded already) did them; tonight's, from
    # cron, starts, finds nothing new, records its run and exits 0: the line, the environment and
    # the whole start-up are exercised without paying a second torch start-up.
    assert imgflow.run_pipeline(pipe, echo=lambda m: None).exit_code == 0
    # the documented line with this checkout's paths: its folder, its environment, a test pipeline and log
    command = (command.replace("cd /srv/imgflow", f"cd {ROOT}")
               .replace(".venv/bin/imgflow", str(IMGFLOW))
               .replace("pipelines/colorize_archive.toml", str(pipe))
               .replace("/var/log/imgflow.log", str(tmp_path / "imgflow.log")))
    done = subprocess.run(["env", "-i", "/bin/sh", "-c", command], capture_output=True, text=True, timeout=300)
    log = (tmp_path / "imgflow.log").read_text()
    assert done.returncode == 0, log
    assert "imgflow: nightly: 0 done, 0 failed, 2 skipped" in log


def test_uv_run_does_not_compile_the_whole_environment_on_every_start(tmp_path):
    """A throw-away project with this project's [tool.uv] settings and one small dependency."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("uv", {})
    assert "compile-bytecode" not in settings
    lines = ["[project]", 'name = "probe"', 'version = "0"', 'requires-python = ">=3.11"',
             'dependencies = ["pluggy"]', "", "[tool.uv]", "package = false"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items() if key != "package"]
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n")
    runs = [subprocess.run([uv(), "run", "--offline", "--python", sys.executable, "python", "-c", "pass"],
                           capture_output=True, text=True, cwd=tmp_path, env=clean_env(), timeout=300)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert "Bytecode compiled" not in runs[1].stderr, runs[1].stderr


# ---------------------------------------------------------------- item 5 (closed pipes), item 19 (--dry-run)


def test_a_closed_pipe_ends_listing_commands_quietly():
    for args in (["stages", "list"], ["models", "list"], ["plugins"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # like `| head -1` that has already exited
        try:
            done = subprocess.run([str(IMGFLOW), *args], stdout=write_end, stderr=subprocess.PIPE, text=True,
                                  timeout=120)
        finally:
            os.close(write_end)
        assert done.returncode == 141 and done.stderr == "", (args, done.returncode, done.stderr)


def test_dry_run_does_not_import_torch(tmp_path):
    write_images(tmp_path / "in", 2, size=(24, 32))
    pipe = write_pipeline(tmp_path / "p.toml", input=tmp_path / "in", output=tmp_path / "out",
                          stages=[{"use": "resize", "size": 16}, {"use": "colorize"}])
    code = ("import sys\nfrom imgflow.cli import main\n"
            f"try:\n    main(['run', {str(pipe)!r}, '--dry-run'])\nexcept SystemExit as exc:\n    code = exc.code\n"
            "print('exit', code, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().endswith("exit 0 False"), done.stdout + done.stderr
    assert "would process 2, skip 0" in done.stdout and not (tmp_path / "out").exists()
