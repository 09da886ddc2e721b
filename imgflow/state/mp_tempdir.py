"""multiprocessing's temporary folder (``$TMPDIR/pymp-*``), removed by the next run when a run was killed.

The decode pool's forkserver listens on a socket in a folder that multiprocessing makes with
``mkdtemp`` and removes at a normal exit (the CLI does it before its fast exit). A run killed
with SIGKILL (the OOM killer, a power cut, ``kill -9``) cannot, so without this every kill would
leave one folder in ``$TMPDIR`` forever. Each run records its process id and that folder in
``.imgflow/mp-tempdir``; the next run, which holds the output folder's lock, removes the
recorded folder if the process that made it is gone. A process still alive keeps its folder: a
Python session that called ``imgflow.run_pipeline`` keeps its forkserver between runs.

This module does not import torch.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: The record's name in the state folder (listed in :data:`imgflow.state.statedir.STATE_FILES`).
RECORD = "mp-tempdir"
PREFIX = "pymp-"


def sweep_dead(state_dir: Path) -> bool:
    """Remove the folder a dead run recorded; True when one was removed."""
    record = state_dir / RECORD
    try:
        pid_text, _, path_text = record.read_text(encoding="utf-8").partition("\n")
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    folder = Path(path_text.strip())
    if pid == os.getpid() or _alive(pid) or not _is_ours(folder):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


def record_current(state_dir: Path) -> None:
    """Record this process's multiprocessing folder (made now if it does not exist yet)."""
    from multiprocessing import util

    folder = util.get_temp_dir()
    temp = state_dir / f".{RECORD}.tmp"
    temp.write_text(f"{os.getpid()}\n{folder}\n", encoding="utf-8")
    os.replace(temp, state_dir / RECORD)


def _is_ours(folder: Path) -> bool:
    """Only a real ``pymp-*`` folder of this user: a bad record must not remove anything else."""
    try:
        return (folder.is_absolute() and folder.name.startswith(PREFIX) and not folder.is_symlink()
                and folder.is_dir() and folder.stat().st_uid == os.getuid())
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process has that id now
        return True
    return True
