"""Loading plugins: entry points in the ``being`` group, checked hooks, and the registry they fill."""

from __future__ import annotations

import importlib.metadata
from types import ModuleType

import pluggy

from . import hookspecs
from .errors import PluginError
from .registry import BrokenPlugin, Registry

ENTRY_POINT_GROUP = "being"


def get_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with Being's hookspecs and, unless told not to, every installed plugin.

    A plugin module that fails to import is recorded in ``pm.being_broken`` instead of raising,
    so one broken package never stops runs that do not use it.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.being_broken = []  # type: ignore[attr-defined]
    if load_entry_points:
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else "?"
            if pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # any import-time failure makes the plugin "broken", not fatal
                pm.being_broken.append(BrokenPlugin(ep.name, dist, f"{type(exc).__name__}: {exc}"))
                continue
            register(pm, plugin, name=ep.name)
    return pm


def register(pm: pluggy.PluginManager, plugin: ModuleType | object, name: str | None = None) -> None:
    """Register one plugin object and fail loudly on a hook name Being does not define."""
    pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(plugin)
        raise PluginError(f"plugin '{name or plugin}' implements an unknown hook: {exc}") from None


def build_registry(pm: pluggy.PluginManager) -> Registry:
    registry = Registry()
    registry.broken = list(getattr(pm, "being_broken", []))
    pm.hook.being_register_stages(registry=registry)
    return registry


_default_registry: Registry | None = None


def load_registry(refresh: bool = False) -> Registry:
    """The registry of installed plugins, built once per process."""
    global _default_registry
    if _default_registry is None or refresh:
        _default_registry = build_registry(get_plugin_manager())
    return _default_registry
