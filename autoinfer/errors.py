"""Errors that reach the user as one line and an exit code, never a traceback."""

from __future__ import annotations


class AutoinferError(Exception):
    """Base for errors the CLI reports as a single line."""

    exit_code = 1


class ConfigError(AutoinferError):
    """The configuration is wrong; `where` is the dotted YAML path (e.g. `space.draft[2]`)."""

    exit_code = 2

    def __init__(self, where: str, message: str, source: str | None = None) -> None:
        self.where = where
        self.message = message
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{where}: {message}" if where else f"{prefix}{message}")


class TrialError(AutoinferError):
    """A trial could not run; the study records it as FAIL and carries on."""


class VerifyFailed(AutoinferError):
    """The served configuration does not behave like its trial (exit 1; bad input stays exit 2)."""

    exit_code = 1
