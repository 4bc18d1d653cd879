"""The plugin manager: entry-point discovery, the name registry, and error isolation.

Built-in providers and third-party ones are found the same way: modules named by entry points in the
``rewardhub`` group. A plugin that fails to import, or whose hook raises, is recorded as a
:class:`PluginFailure` (shown by ``rewardhub plugins`` and logged) while the others still load. Two
plugins registering one name (or a plugin registering a core command's name) is an error naming both
packages.

``REWARDHUB_LOAD_PLUGINS`` controls autoloading: unset loads every installed plugin; an empty string loads
none (tests use this and register what they need); ``a,b`` loads only the entry points named ``a`` and
``b``.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import pluggy

from rewardhub import hookspecs
from rewardhub.errors import PluginConflictError, UnknownNameError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "rewardhub"
LOAD_PLUGINS_ENV = "REWARDHUB_LOAD_PLUGINS"
KINDS = ("reward", "verifier", "task", "command")
_HOOK_OF_KIND = {
    "reward": "rewardhub_register_rewards",
    "verifier": "rewardhub_register_verifiers",
    "task": "rewardhub_register_tasks",
    "command": "rewardhub_register_commands",
}
VERIFIER_ATTR = "__rewardhub_verifier__"
CORE = "core"  # the plugin name the CLI's own commands are registered under


class Command(NamedTuple):
    """A ``rewardhub`` subcommand, as registered through ``rewardhub_register_commands`` (or by the core CLI)."""

    add_parser: Callable[[argparse._SubParsersAction], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace], int | None]


@dataclass(frozen=True)
class RegistryEntry:
    """One registered provider, verifier, task or command, and where it came from."""

    kind: str
    name: str
    obj: Any
    plugin: str
    package: str
    version: str
    description: str = ""


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or whose hook raised."""

    plugin: str
    package: str
    error: str


@dataclass
class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    entries: dict[str, dict[str, RegistryEntry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    failures: list[PluginFailure] = field(default_factory=list)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: str, name: str) -> RegistryEntry:
        """Look a name up; an unknown name raises with the list of what is available."""
        try:
            return self.entries[kind][name]
        except KeyError:
            available = ", ".join(self.names(kind)) or "(none registered)"
            hint = ""
            if self.failures:
                hint = " Some plugins failed to load (see `rewardhub plugins`): " + ", ".join(
                    f.plugin for f in self.failures
                )
            raise UnknownNameError(
                f"unknown {kind} {name!r}. Available {kind}s: {available}.{hint}"
            ) from None

    def add(self, entry: RegistryEntry) -> None:
        existing = self.entries[entry.kind].get(entry.name)
        if existing is not None and existing.plugin == CORE:
            raise PluginConflictError(
                f"{entry.kind} {entry.name!r} is a core rewardhub {entry.kind}; package {entry.package} (plugin "
                f"{entry.plugin}) cannot register it. Rename it there, uninstall the package, or leave the plugin "
                f"out with {LOAD_PLUGINS_ENV}=name1,name2."
            )
        if existing is not None and existing.obj != entry.obj:
            raise PluginConflictError(
                f"{entry.kind} {entry.name!r} is registered twice: by package {existing.package} "
                f"(plugin {existing.plugin}) and by package {entry.package} (plugin {entry.plugin}). "
                f"Uninstall one of them, or choose plugins with {LOAD_PLUGINS_ENV}=name1,name2."
            )
        self.entries[entry.kind][entry.name] = entry


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus the package/version of each entry-point plugin and the load failures."""

    def __init__(self) -> None:
        super().__init__("rewardhub")
        self.add_hookspecs(hookspecs)
        self.origins: dict[str, tuple[str, str]] = {}
        self.load_failures: list[PluginFailure] = []

    def load_entry_points(self, only: set[str] | None = None) -> None:
        """Import and register every ``rewardhub`` entry point (or only the named ones), isolating failures."""
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            if (only is not None and ep.name not in only) or self.has_plugin(ep.name):
                continue
            package, version = (ep.dist.name, ep.dist.version) if ep.dist else ("?", "?")
            try:
                self.register(ep.load(), name=ep.name)
            except Exception as exc:
                self.load_failures.append(PluginFailure(ep.name, package, f"{type(exc).__name__}: {exc}"))
                log.warning("rewardhub plugin %r (%s) failed to load: %s", ep.name, package, exc)
                continue
            self.origins[ep.name] = (package, version)
        self.check_pending()

    def origin(self, plugin_name: str, plugin: Any) -> tuple[str, str]:
        """(package, version) for an entry-point plugin; the module name for one registered in code."""
        if plugin_name in self.origins:
            return self.origins[plugin_name]
        if plugin_name.startswith("file:"):
            return (plugin_name[len("file:"):], "-")
        module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
        return (f"{module} (registered in code)", "-")


def selected_entry_points() -> set[str] | None:
    """Entry-point names chosen by ``REWARDHUB_LOAD_PLUGINS`` (None = all)."""
    value = os.environ.get(LOAD_PLUGINS_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


_manager: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide manager, with entry points loaded on first use."""
    global _manager
    if _manager is None:
        _manager = PluginManager()
        _manager.load_entry_points(selected_entry_points())
    return _manager


def reset_plugin_manager() -> None:
    """Forget the process-wide manager, so the next call reloads plugins (tests, after an install)."""
    global _manager
    _manager = None


def build_registry(pm: PluginManager | None = None) -> Registry:
    """Call every registration hook, one plugin at a time, and collect what they register.

    Hooks are called per implementation (not through ``pm.hook``) so that a hook that raises is blamed on
    its own plugin, and so every registered name is attributed to the package that registered it.
    """
    pm = pm or get_plugin_manager()
    registry = Registry(failures=list(pm.load_failures))
    for kind in KINDS:
        _call_hook(pm, registry, kind)
    for plugin_name, plugin in pm.list_name_plugin():
        if isinstance(plugin, ModuleType):
            package, version = pm.origin(plugin_name, plugin)
            register = _registrar(registry, "verifier", plugin_name, package, version)
            for fn_name, check in decorated_verifiers(plugin):
                register(fn_name, check, description=inspect.getdoc(check) or "")
    return registry


def build_commands(core: Mapping[str, Command], pm: PluginManager | None = None) -> Registry:
    """The ``rewardhub`` subcommands: the core's (``core``, in order), then every plugin's.

    Only ``rewardhub_register_commands`` is called, so a reward plugin's trouble cannot break ``--help``.
    A plugin command named like a core command, or like another plugin's, raises
    :class:`PluginConflictError` naming both packages; a hook that raises is recorded in ``failures``.
    """
    from rewardhub import __version__

    pm = pm or get_plugin_manager()
    registry = Registry(failures=list(pm.load_failures))
    for name, command in core.items():
        registry.add(RegistryEntry("command", name, command, CORE, "rewardhub", __version__))
    _call_hook(pm, registry, "command")
    return registry


def _call_hook(pm: PluginManager, registry: Registry, kind: str) -> None:
    """Call ``kind``'s registration hook of each plugin in turn, recording a plugin whose hook raises."""
    hook = _HOOK_OF_KIND[kind]
    for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):  # registration order, for stable listings
        package, version = pm.origin(impl.plugin_name, impl.plugin)
        register = _registrar(registry, kind, impl.plugin_name, package, version)
        kwargs = {"register": register}
        try:
            impl.function(**{k: kwargs[k] for k in impl.argnames})
        except PluginConflictError:
            raise
        except Exception as exc:
            registry.failures.append(PluginFailure(impl.plugin_name, package, f"{hook}: {type(exc).__name__}: {exc}"))
            log.warning("rewardhub plugin %r raised in %s: %s", impl.plugin_name, hook, exc)


def decorated_verifiers(module: ModuleType) -> list[tuple[str, Callable]]:
    """Functions in ``module`` decorated with ``@rewardhub.verifier(name)``, as (name, function)."""
    found = []
    for value in vars(module).values():
        name = getattr(value, VERIFIER_ATTR, None)
        if name and callable(value) and getattr(value, "__module__", None) == module.__name__:
            found.append((name, value))
    return found


def _registrar(registry: Registry, kind: str, plugin: str, package: str, version: str) -> Callable[..., None]:
    def add(name: str, obj: Any, description: str, documented: Any) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{kind} names must be non-empty strings, got {name!r}")
        summary = description or (inspect.getdoc(documented) or "").split("\n", 1)[0]
        registry.add(RegistryEntry(kind, name, obj, plugin, package, version, summary))

    def register(name: str, obj: Any, *, description: str = "") -> None:
        add(name, obj, description, obj)

    def register_command(name: str, add_parser: Callable, run: Callable, *, description: str = "") -> None:
        if not callable(add_parser) or not callable(run):
            raise TypeError(f"command {name!r}: register(name, add_parser, run) takes two callables, got "
                            f"{type(add_parser).__name__} and {type(run).__name__}")
        add(name, Command(add_parser, run), description, run)

    return register_command if kind == "command" else register


def load_python_file(file: str | Path) -> Any:
    """Import a ``.py`` file as a module (used by ``--verifier file.py`` and ``file.py:attr`` specs)."""
    path = Path(file)
    if not path.is_file():
        raise UnknownNameError(f"python file {str(path)!r} does not exist")
    module_name = f"rewardhub_user_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise UnknownNameError(f"importing {str(path)!r} failed: {type(exc).__name__}: {exc}") from exc
    return module


def register_verifier_file(path: str | Path, pm: PluginManager | None = None) -> None:
    """``--verifier file.py``: import the file and register it as a plugin, so its ``@verifier`` functions
    (and any hooks it implements) are found exactly like an installed plugin's."""
    pm = pm or get_plugin_manager()
    name = f"file:{Path(path).resolve()}"
    if not pm.has_plugin(name):
        pm.register(load_python_file(path), name=name)


def verifier(name: str) -> Callable[[Callable], Callable]:
    """Mark a plain function ``(completion, row) -> float | bool | None`` as a named verifier.

    The function is registered when its module is loaded as a plugin (an entry point) or with
    ``--verifier path/to/file.py``::

        from rewardhub import verifier

        @verifier("ends_politely")
        def ends_politely(completion: str, row: dict) -> float:
            return 1.0 if completion.rstrip().endswith("thank you.") else 0.0
    """
    if not isinstance(name, str) or not name:
        raise TypeError("@verifier needs a name: @verifier('my_check')")

    def mark(fn: Callable) -> Callable:
        setattr(fn, VERIFIER_ATTR, name)
        return fn

    return mark
