"""The one family of errors Being raises at users.

Library code raises these; only the CLI turns them into an ``ERROR: ...`` line and an exit code.
Each class carries its fixed exit code so scripts can tell a bad config from a failed stage.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_STAGE_FAILED = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_PLUGIN = 4
EXIT_INTERRUPTED = 130


class BeingError(Exception):
    """Base of every error meant for a user: the message alone must say what to do."""

    exit_code = EXIT_STAGE_FAILED


class UsageError(BeingError):
    """A command line or config that cannot work as written."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A run config with one or more problems, all reported at once."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{source} has {n} problem{'s' if n != 1 else ''}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


class UnknownImplementationError(UsageError):
    """A stage implementation name that no installed plugin provides.

    One message shape everywhere: what was asked, what is installed, and how to get more.
    """

    def __init__(self, kind: str, name: str, installed: list[str], broken: list[str] | None = None):
        self.kind, self.name, self.installed = kind, name, sorted(installed)
        listed = ", ".join(self.installed) if self.installed else "none"
        msg = (
            f"unknown {kind} implementation '{name}'; installed: {listed}. "
            f"Install the plugin that provides it (see `being plugins`)."
        )
        if broken:
            msg += " Plugins that failed to load: " + "; ".join(broken) + "."
        super().__init__(msg)


class InputError(BeingError):
    """A user file (video, audio, run folder) that Being cannot use; the message names the file."""

    exit_code = EXIT_INPUT


class PluginError(BeingError):
    """A plugin that is wrong as written: a duplicate name, a misspelled hook, a bad stage class."""

    exit_code = EXIT_PLUGIN


class StageFailed(BeingError):
    """A stage ran and failed, or left no result."""

    exit_code = EXIT_STAGE_FAILED


def os_error_text(exc: OSError) -> str:
    """One line for a refusal of the file system (a full disk, a read-only or vanished folder), naming the file;
    such an error exits with :data:`EXIT_INPUT`."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"
