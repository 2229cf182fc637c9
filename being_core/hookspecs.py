"""Every hook Being calls. One module, one prefix (``being_``), few hooks.

A plugin is a module (or object) named by an entry point in the ``being`` group; it marks its
functions with :data:`being_core.hookimpl`. Each hook is called once per plugin, in isolation: a plugin
whose hook raises is listed as broken (``being plugins``) and registers nothing, the others still load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .commands import Commands
    from .registry import Registry

PROJECT = "being"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- start-up: building the registry -----------------------------------------------------------


@hookspec
def being_register_runners(registry: Registry) -> None:
    """Add this plugin's runners with ``registry.add_runner(MyRunner)``.

    Receives the typed :class:`being_core.registry.Registry`; returns nothing. Called once per process,
    before ``being_register_stages``. A runner decides where a stage request runs (this process, a child
    process, a container, a cluster); ``inprocess`` and ``subprocess`` come with the core this way.
    """


@hookspec
def being_register_stages(registry: Registry) -> None:
    """Add this plugin's stage implementations with ``registry.add(MyStage)``.

    Receives the typed :class:`being_core.registry.Registry`; returns nothing. Called once per process
    (CLI, ``being-stage`` inside a container, tests) after all plugins are loaded. Must not import
    model stacks: only define and add classes.
    """


# --- the command line --------------------------------------------------------------------------


@hookspec
def being_register_commands(commands: Commands) -> None:
    """Add ``being`` subcommands with ``commands.add(MyCommand())``.

    Receives :class:`being_core.commands.Commands`; returns nothing. Called by the CLI only, when it builds
    its argument parser. A command's name must not clash with a built-in one (``prepare``, ``train``, ...).
    """
