"""Plugin discovery and the registries of generators, encoders, priors and latent spaces.

Plugins are modules listed under the ``latentmap`` entry-point group (the built-ins too, through the
root pyproject). They are imported lazily, once, on the first question asked of a registry. One
plugin failing to import or raising in a hook never breaks the others: the failure is recorded and
shown by ``latentmap plugins`` and in the error for a name it might have provided.

Environment:
- ``LATENTMAP_LOAD_PLUGINS``: comma-separated entry-point names; only these load (empty: none).
- ``LATENTMAP_PLUGIN_MODULES``: comma-separated importable modules loaded as extra plugins
  (development and tests; the same as an entry point without packaging).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import threading
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any, Callable

import pluggy

from latentmap import hookspecs
from latentmap.config import build_options, identity_options, no_options, recorded_options
from latentmap.errors import LatentmapError, UnknownNameError

ENTRY_POINT_GROUP = "latentmap"
LOAD_ENV = "LATENTMAP_LOAD_PLUGINS"
MODULES_ENV = "LATENTMAP_PLUGIN_MODULES"

KINDS = {
    "generators": "register_generators",
    "encoders": "register_encoders",
    "priors": "register_priors",
    "spaces": "register_spaces",
}
SINGULAR = {"generators": "generator", "encoders": "encoder", "priors": "prior", "spaces": "space"}

# The core's own components: registered first and always, whatever LATENTMAP_LOAD_PLUGINS says
# (that variable restricts only the optional, entry-point plugins).
CORE_PLUGINS = {"latentmap.spaces": "spaces", "latentmap.prior.plugin": "diffusion"}  # module -> plugin name


@dataclass
class Registration:
    """One named thing a plugin registered: a factory and how to describe it."""

    name: str
    factory: Any
    plugin: str
    description: str = ""
    options: type | None = None  # the dataclass declaring the factory's options (None: it takes none)
    sampling: type | None = None  # priors: the dataclass of their sampling settings


@dataclass
class PluginInfo:
    """What ``latentmap plugins`` shows about one plugin."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
            "errors": self.errors,
        }


class PluginManager:
    """Loads plugins once and answers which names they registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("latentmap")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._registries: dict[str, dict[str, Registration]] = {}
        self._loaded = False
        self._lock = threading.RLock()

    # -- loading -------------------------------------------------------------------------------
    def load(self) -> None:
        """Import the core plugin, every allowed entry point and every extra module (idempotent)."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            for module_name, plugin_name in CORE_PLUGINS.items():
                self.add_module(importlib.import_module(module_name), name=plugin_name, distribution="latentmap")
            allowed = _env_list(LOAD_ENV)
            for ep in _entry_points():
                if allowed is not None and ep.name not in allowed:
                    continue
                dist = getattr(ep, "dist", None)
                info = PluginInfo(
                    name=ep.name,
                    module=ep.value,
                    distribution=dist.metadata["Name"] if dist is not None else None,
                    version=dist.version if dist is not None else None,
                )
                if ep.name in self.infos:
                    info.errors.append(f"a plugin named {ep.name!r} is already loaded from {self.infos[ep.name].module}")
                    self.infos[f"{ep.name}!{ep.value}"] = info
                    continue
                self.infos[ep.name] = info
                try:
                    module = ep.load()
                except Exception as exc:  # a broken plugin must not break the others
                    info.errors.append(f"import failed: {type(exc).__name__}: {exc}")
                    continue
                self._register(module, info)
            for module_name in _env_list(MODULES_ENV) or []:
                info = PluginInfo(name=module_name, module=module_name)
                self.infos.setdefault(module_name, info)
                try:
                    module = importlib.import_module(module_name)
                except Exception as exc:
                    info.errors.append(f"import failed: {type(exc).__name__}: {exc}")
                    continue
                self._register(module, info)

    def add_module(self, module: ModuleType, *, name: str | None = None, distribution: str | None = None) -> PluginInfo:
        """Register an imported module as a plugin (notebooks and tests; entry points do this for packages)."""
        with self._lock:
            name = name or module.__name__
            info = PluginInfo(name=name, module=module.__name__, distribution=distribution)
            if distribution == "latentmap":
                from latentmap import __version__

                info.version = __version__
            self.infos[name] = info
            self._register(module, info)
            return info

    def _register(self, module: ModuleType, info: PluginInfo) -> None:
        try:
            self.pm.register(module, name=info.name)
        except Exception as exc:
            info.errors.append(f"registration failed: {type(exc).__name__}: {exc}")
            return
        info.hooks = sorted(impl.name for impl in self._hookcallers_of(info.name))
        self._registries.clear()

    def _hookcallers_of(self, plugin_name: str) -> list[Any]:
        plugin = self.pm.get_plugin(plugin_name)
        callers = self.pm.get_hookcallers(plugin) or [] if plugin is not None else []
        return list(callers)

    # -- registries ----------------------------------------------------------------------------
    def registry(self, kind: str) -> dict[str, Registration]:
        """Name -> Registration for ``kind`` ("generators", "encoders", "priors", "spaces")."""
        self.load()
        with self._lock:
            if kind not in self._registries:
                self._registries[kind] = self._collect(kind)
            return self._registries[kind]

    def _collect(self, kind: str) -> dict[str, Registration]:
        hook_name = KINDS[kind]
        found: dict[str, Registration] = {}
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name = impl.plugin_name
            info = self.infos.get(plugin_name)

            def register(
                name: str,
                factory: Callable[..., Any],
                description: str = "",
                options: type | None = None,
                *,
                _plugin: str = plugin_name,
            ) -> None:
                if name in found:
                    raise LatentmapError(
                        f"{SINGULAR[kind]} name {name!r} is registered by two plugins: "
                        f"{found[name].plugin!r} and {_plugin!r}; uninstall one or restrict with {LOAD_ENV}"
                    )
                found[name] = _registration(kind, name, factory, _plugin, description, options)

            try:
                impl.function(register=register)
            except LatentmapError:
                raise
            except Exception as exc:
                if info is not None and info.module in CORE_PLUGINS:
                    raise  # the core's own registrations failing is a bug, never a plugin to skip
                if info is not None:
                    info.errors.append(f"{hook_name} failed: {type(exc).__name__}: {exc}")
        return found

    def failed_plugins(self) -> list[PluginInfo]:
        self.load()
        return [info for info in self.infos.values() if info.errors]

    def resolve(self, kind: str, name: str) -> Registration:
        """The registration for ``name`` or an UnknownNameError listing what exists."""
        registry = self.registry(kind)
        if name in registry:
            return registry[name]
        raise UnknownNameError(self._unknown_message(kind, name, registry))

    def _unknown_message(self, kind: str, name: str, registry: dict[str, Registration]) -> str:
        noun = SINGULAR[kind]
        available = ", ".join(sorted(registry)) or "none"
        message = f"unknown {noun} {name!r}; available: {available}"
        close = difflib.get_close_matches(name, list(registry), n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        failed = self.failed_plugins()
        if failed:
            culprits = [f for f in failed if f.name == name or f.name in name]
            culprits = culprits or failed
            described = "; ".join(f"{f.name}: {f.errors[0]}" for f in culprits)
            message += f"; plugins that failed to load and may provide it: {described}"
        return message


def _env_list(variable: str) -> list[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def _entry_points() -> list[metadata.EntryPoint]:
    seen: set[tuple[str, str]] = set()
    result = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.name, ep.value)
        if key not in seen:  # the same distribution visible twice on sys.path
            seen.add(key)
            result.append(ep)
    return sorted(result, key=lambda ep: ep.name)


_manager: PluginManager | None = None
_manager_lock = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager (created on first use)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = PluginManager()
        return _manager


def reset_plugins() -> None:
    """Forget loaded plugins so the next question reloads them (tests, after installing a plugin)."""
    global _manager
    with _manager_lock:
        _manager = None


def register_module(module: ModuleType, *, name: str | None = None) -> PluginInfo:
    """Register an already imported module as a plugin for this process."""
    manager = get_plugin_manager()
    manager.load()
    return manager.add_module(module, name=name)


def list_plugins() -> list[PluginInfo]:
    """Every plugin seen, loaded or failed, with the hooks it implements."""
    manager = get_plugin_manager()
    manager.load()
    return list(manager.infos.values())


def registrations(kind: str) -> dict[str, Registration]:
    """Name -> Registration for one kind; raises for an unknown kind."""
    if kind not in KINDS:
        raise LatentmapError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    return get_plugin_manager().registry(kind)


def _registration(kind: str, name: str, factory: Any, plugin: str, description: str, options: Any) -> Registration:
    """Check what a plugin registered: options must be a dataclass (a prior class brings its own)."""
    options = options if options is not None else getattr(factory, "Options", None)
    if options is not None and not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        raise TypeError(f"{SINGULAR[kind]} {name!r}: options must be a dataclass declaring them, got {options!r}")
    sampling = getattr(factory, "Sampling", None) if kind == "priors" else None
    if kind == "priors" and not (isinstance(sampling, type) and dataclasses.is_dataclass(sampling)):
        raise TypeError(f"prior {name!r}: register a Prior subclass whose Sampling is a dataclass of its sampling settings")
    return Registration(name, factory, plugin, description, options, sampling)


def resolve(kind: str, name: str) -> Registration:
    """The registration of ``name`` (for encoders, the prefix before ``:``), or a one-line error."""
    return get_plugin_manager().resolve(kind, name.partition(":")[0] if kind == "encoders" else name)


def validate_options(kind: str, name: str, values: Any, *, where: str) -> Any:
    """``values`` (a mapping, or already the declared dataclass) checked against what ``name`` declares."""
    registration = resolve(kind, name)
    declared = registration.options or no_options
    if isinstance(values, declared):
        return values
    return build_options(declared, values, where=where, owner=f"{SINGULAR[kind]} {name!r}")


def build(kind: str, name: str, *args: Any, options: Any = None, where: str = "") -> Any:
    """Resolve ``name``, validate ``options`` against its declaration and call ``factory(*args, options)``.

    A factory that declares no options is called as ``factory(*args)`` and refuses any. The object
    remembers how it was asked for (``registry_name``, ``registry_options`` without placement,
    ``registry_identity_options``), so identities and checkpoints can compare and rebuild it.
    """
    registration = resolve(kind, name)
    validated = validate_options(kind, name, options, where=where)
    declared = registration.options is not None
    made = registration.factory(*args, validated) if declared else registration.factory(*args)
    try:
        made.registry_name = name
        made.registry_options = recorded_options(validated) if declared else {}
        made.registry_identity_options = identity_options(validated) if declared else {}
    except AttributeError:  # immutable objects (a LatentSpace) carry no record
        pass
    return made
