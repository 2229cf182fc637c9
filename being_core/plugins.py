"""Loading plugins: entry points in the ``being`` group, checked hooks, and the registry they fill.

The core's own runners enter the same way (the ``being-core`` distribution's entry point), which keeps the
public API honest: whatever a built-in can do, a third-party plugin can do too.
"""

from __future__ import annotations

import importlib.metadata
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .commands import Commands
from .errors import PluginError
from .registry import BrokenPlugin, Registry

ENTRY_POINT_GROUP = "being"


class PluginManager(pluggy.PluginManager):
    """pluggy's manager with what Being needs to blame the right package: plugins that failed to import
    (``broken``) and the distribution of each entry point (``distributions``)."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.broken: list[BrokenPlugin] = []
        self.distributions: dict[str, str] = {}


def get_plugin_manager(load_entry_points: bool = True) -> PluginManager:
    """A plugin manager with Being's hookspecs and, unless told not to, every installed plugin.

    A plugin module that fails to import is recorded in ``pm.broken`` instead of raising,
    so one broken package never stops runs that do not use it.
    """
    pm = PluginManager()
    if load_entry_points:
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else "?"
            if pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # any import-time failure makes the plugin "broken", not fatal
                pm.broken.append(BrokenPlugin(ep.name, dist, f"{type(exc).__name__}: {exc}"))
                continue
            try:
                register(pm, plugin, name=ep.name)
            except PluginError as exc:
                pm.broken.append(BrokenPlugin(ep.name, dist, str(exc)))
                continue
            pm.distributions[ep.name] = dist
    return pm


def register(pm: PluginManager, plugin: ModuleType | object, name: str | None = None) -> None:
    """Register one plugin object and fail loudly on a hook name Being does not define."""
    pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(plugin)
        raise PluginError(f"plugin '{name or plugin}' implements an unknown hook: {exc}") from None


def _each_plugin(pm: PluginManager, hooks: tuple[str, ...], target: Any,
                 snapshot, restore, broken: list[BrokenPlugin]) -> None:
    """Call ``hooks`` of one plugin at a time with ``target``. A plugin whose hook raises is rolled back
    (``restore(snapshot())``) and appended to ``broken``: its bug is its own problem, the others still load."""
    distributions = pm.distributions
    for name, plugin in pm.list_name_plugin():
        before = snapshot()
        try:
            for hook in hooks:
                for impl in getattr(pm.hook, hook).get_hookimpls():
                    if impl.plugin is plugin:
                        impl.function(**{arg: target for arg in impl.argnames})
        except Exception as exc:  # any failure in a plugin's own code
            restore(before)
            message = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
            broken.append(BrokenPlugin(name, distributions.get(name, name), message))


def build_registry(pm: PluginManager) -> Registry:
    """Every plugin's runners and stages; a plugin whose hook fails registers nothing and is listed as broken."""
    registry = Registry()
    registry.broken = list(pm.broken)
    _each_plugin(pm, ("being_register_runners", "being_register_stages"), registry, registry.snapshot,
                 registry.restore, registry.broken)
    return registry


def collect_commands(pm: PluginManager, reserved: set[str], broken: list[BrokenPlugin]) -> Commands:
    """The subcommands plugins add; a plugin whose hook fails adds none and is appended to ``broken``."""
    commands = Commands(reserved)
    _each_plugin(pm, ("being_register_commands",), commands, commands.snapshot, commands.restore, broken)
    return commands


_default: tuple[PluginManager, Registry] | None = None


def load_plugins(refresh: bool = False) -> tuple[PluginManager, Registry]:
    """The plugin manager and registry of installed plugins, built once per process."""
    global _default
    if _default is None or refresh:
        pm = get_plugin_manager()
        _default = (pm, build_registry(pm))
    return _default


def load_registry(refresh: bool = False) -> Registry:
    """The registry of installed plugins, built once per process."""
    return load_plugins(refresh)[1]
