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
EXIT_LOCKED = 75  # EX_TEMPFAIL from sysexits.h: "try again later"


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
        text = f"{self.where}: {self.problem}"
        return f"{text} (fix: {self.fix})" if self.fix else text


class ValidationFailed(ConfigError):
    """Every problem found in a pipeline, reported at once."""

    def __init__(self, problems: list[Problem], subject: str = "pipeline") -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = f"{subject}: {count} problem{'s' if count != 1 else ''}"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


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
    memory_limit, decoder_crash, decoder_timeout, stage_error, label_error (a trainer could not read
    the input's boxes or mask), write_error, output_exists.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self):  # picklable across processes
        return (type(self), (self.code, self.message))
