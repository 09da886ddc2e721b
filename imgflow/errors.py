"""User-facing error types.

Every error a user can cause derives from :class:`ImgflowError`; the CLI prints its message (no
traceback) and exits with its ``exit_code``. A message names the subject, the problem ("expected …,
got …") and the fix, so the person reading a cron mail knows what to change.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_ITEMS_FAILED = 1
EXIT_CONFIG = 2
EXIT_NO_INPUT = 66  # EX_NOINPUT from sysexits.h: the input folder matched no file (empty, unmounted)
EXIT_LOCKED = 75  # EX_TEMPFAIL from sysexits.h: "try again later"
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug in imgflow or a plugin

MAX_PROBLEM_CHARS = 2000  # one problem line is cut after this many characters


class ImgflowError(Exception):
    """Base of every error imgflow raises on purpose."""

    exit_code = EXIT_CONFIG


class ConfigError(ImgflowError):
    """A pipeline file, CLI option or stage parameter is wrong. Exit code 2."""


@dataclass(frozen=True)
class Problem:
    """One validation problem: where it is, what is wrong, and how to fix it."""

    where: str  # e.g. "pipelines/x.toml: [output] format"
    problem: str
    fix: str = ""

    def __str__(self) -> str:
        from imgflow.display import safe_text

        text = f"{self.where}: {self.problem}"
        text = safe_text(f"{text} (fix: {self.fix})" if self.fix else text)
        if len(text) > MAX_PROBLEM_CHARS:  # a runaway value must not make a runaway line
            text = f"{text[:MAX_PROBLEM_CHARS]}... ({len(text):,} characters in all)"
        return text


class ValidationFailed(ConfigError):
    """Every problem found in a pipeline, reported at once.

    ``problems`` holds them all; the message lists the first few (``imgflow.display.SHOWN_PROBLEMS``) and
    says how many more there are, so a file with a million bad keys still prints one screen.
    """

    def __init__(self, problems: list[Problem], subject: str = "pipeline") -> None:
        from imgflow.display import SHOWN_PROBLEMS, safe_text

        self.problems = list(problems)
        count = len(self.problems)
        head = safe_text(f"{subject}: {count:,} problem{'s' if count != 1 else ''}")
        shown = count if count <= SHOWN_PROBLEMS + 1 else SHOWN_PROBLEMS  # never "and 1 more"
        lines = [f"  - {p}" for p in self.problems[:shown]]
        if count > shown:
            lines.append(f"  ... and {count - SHOWN_PROBLEMS:,} more problems (fix those above and "
                         "validate again to see the rest)")
        super().__init__("\n".join([head, *lines]))


class PluginError(ImgflowError):
    """A plugin is broken: it failed to import, or two plugins claim one stage name."""


class LockBusy(ImgflowError):
    """Another run holds the output root's lock. Exit code 75."""

    exit_code = EXIT_LOCKED


class DeviceError(ConfigError):
    """The requested device does not exist on this machine."""


class ItemError(Exception):
    """One work item failed; the run goes on. ``code`` is a stable reason code for the manifest.

    Reason codes: unreadable, file_too_large, unsupported_format, decode_error, too_many_pixels,
    memory_limit, memory_budget, decoder_crash, decoder_timeout, stage_error, label_error (a
    trainer could not read the input's boxes or mask), write_error, output_exists (a file imgflow
    did not write holds the name and ``overwrite = "never"``), output_collision (another input
    already owns the output name), outside_input (a symlink leading outside the input folder).
    ``memory_budget``: the image's own working set (decoding, the stages, the write) is larger
    than one image may use (half the machine's memory, or a configured ``[run] max_memory_mb``),
    so it was refused from its header without being decoded. ``gpu_memory``: the stages ran out
    of GPU memory with this image alone (batches are halved first; imgflow.engine.oom).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self):  # picklable across processes
        return (type(self), (self.code, self.message))


@dataclass(frozen=True)
class Notice:
    """One finding of a stage's preflight: the problem, its fix, and whether it stops the run."""

    message: str
    fix: str = ""
    error: bool = True

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message
