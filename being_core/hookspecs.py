"""Every hook Being calls. One module, one prefix (``being_``), few hooks.

A plugin is a module (or object) named by an entry point in the ``being`` group; it marks its
functions with :data:`being_core.hookimpl`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .registry import Registry

PROJECT = "being"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- start-up: building the registry -----------------------------------------------------------


@hookspec
def being_register_stages(registry: Registry) -> None:
    """Add this plugin's stage implementations with ``registry.add(MyStage)``.

    Receives the typed :class:`being_core.registry.Registry`; returns nothing. Called once per process
    (CLI, ``being-stage`` inside a container, tests) after all plugins are loaded. Must not import
    model stacks: only define and add classes.
    """
