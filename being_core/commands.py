"""Subcommands that plugins add to ``being`` (``being images`` comes from the Docker plugin this way)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import PluginError
from .progress import Reporter


@dataclass
class CommandContext:
    """What a command may use: ``console`` prints results to stdout (a rich Console), ``progress`` shows
    bars on stderr (silent with ``-q``), ``quiet`` is the ``-q`` flag."""

    console: Any
    progress: Reporter
    quiet: bool = False


class Command:
    """One ``being`` subcommand. Raise :class:`being_core.errors.BeingError` for anything a user must fix;
    return the exit code otherwise."""

    name: ClassVar[str]
    help: ClassVar[str]
    #: Whether the CLI shows progress bars while it runs (unless ``-q``).
    shows_progress: ClassVar[bool] = False

    def configure(self, parser: argparse.ArgumentParser, parents: list[argparse.ArgumentParser]) -> None:
        """Add the command's arguments. Give nested sub-parsers ``parents=parents``: the options every
        command takes (``-q``, ``--traceback``) are then accepted after them too."""

    def run(self, args: argparse.Namespace, ctx: CommandContext) -> int:
        raise NotImplementedError


class Commands:
    """Collects the commands plugins add through ``being_register_commands``."""

    def __init__(self, reserved: set[str] | frozenset[str] = frozenset()) -> None:
        self._reserved = set(reserved)
        self._commands: dict[str, Command] = {}

    def add(self, command: Command) -> None:
        name = getattr(command, "name", "")
        if not isinstance(command, Command) or not name:
            raise PluginError(f"commands.add() takes a Command with a name, got {command!r}")
        if name in self._reserved or name in self._commands:
            raise PluginError(f"two commands are named '{name}'; a plugin's command must not reuse a name")
        self._commands[name] = command

    def snapshot(self) -> dict[str, Command]:
        return dict(self._commands)

    def restore(self, snapshot: dict[str, Command]) -> None:
        self._commands = dict(snapshot)

    def all(self) -> list[Command]:
        return [self._commands[n] for n in sorted(self._commands)]
