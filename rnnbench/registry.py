"""Registries of cells and tasks: registry names are the CLI's names.

Three ways in, all ending in the same name -> class table:

1. built-ins: every module of ``rnnbench.cells`` / ``rnnbench.tasks`` is imported on
   the first lookup and registers itself with ``@register_cell`` / ``@register_task``;
2. installed plugins: entry points in the groups ``rnnbench.cells`` /
   ``rnnbench.tasks``. Their *names* are listed without importing anything; a
   plugin is imported only when its name is asked for. The entry point may name a
   module (that registers on import) or a class (registered under the entry
   point's name). Set ``RNNBENCH_NO_PLUGINS=1`` to ignore them;
3. a user's own file: ``plugins=[path/to/my_cells.py]`` on the command line, or
   :func:`load_plugin_file`.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import pkgutil
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Callable, Generic, Optional, TypeVar

from .errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> class table for one kind of plugin (``"cell"`` or ``"task"``)."""

    def __init__(self, kind: str, builtin_package: str, entry_point_group: str, base: str,
                 required: tuple[tuple[str, ...], ...] = ()):
        self.kind = kind
        self.builtin_package = builtin_package
        self.entry_point_group = entry_point_group
        self.base = base  # "module:Class" that every registered class must subclass
        self.required = required  # per entry, methods of the base class of which one must be overridden
        self._classes: dict[str, type] = {}
        self._builtins_loaded = False
        self._loading_builtins = False

    # --- registration -----------------------------------------------------------
    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: ``@register_cell("gru")``."""
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise RegistryError(f"{self.kind} name {name!r} is invalid: use letters, digits, '_' or '-'.")

        def decorator(cls: type) -> type:
            self.add(name, cls)
            return cls

        return decorator

    def add(self, name: str, cls: type) -> None:
        self._check_api(name, cls)
        old = self._classes.get(name)
        if old is not None and _qualified(old) != _qualified(cls):
            raise RegistryError(
                f"{self.kind} name {name!r} is registered twice: by {_qualified(old)} and by "
                f"{_qualified(cls)}. Rename one of them (registry names must be unique)."
            )
        # The same class re-registered (a module imported twice) simply replaces itself.
        cls.name = name
        self._classes[name] = cls

    def _check_api(self, name: str, cls: type) -> None:
        """Refuse a class that does not implement this registry's API (base class, methods)."""
        module, _, attribute = self.base.partition(":")
        base = getattr(importlib.import_module(module), attribute)
        api = f"the {base.__name__} API of {base.__module__}"
        if not (isinstance(cls, type) and issubclass(cls, base)):
            what = _qualified(cls) if isinstance(cls, type) else repr(cls)
            raise RegistryError(f"{self.kind} {name!r} ({what}) does not implement {api}: it must be a subclass "
                                f"of {base.__name__}.")
        # Each entry of ``required`` names methods of which at least one must be overridden.
        missing = [alternatives for alternatives in self.required
                   if all(getattr(cls, m, None) is getattr(base, m) for m in alternatives)]
        if missing:
            wanted = ", ".join(" or ".join(m + "()" for m in alternatives) for alternatives in missing)
            raise RegistryError(f"{self.kind} {name!r} ({_qualified(cls)}) does not implement {api}: it must "
                                f"define {wanted}.")

    # --- discovery ----------------------------------------------------------------
    def load_builtins(self) -> None:
        if self._builtins_loaded or self._loading_builtins:
            return
        self._loading_builtins = True
        try:
            package = importlib.import_module(self.builtin_package)
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self.builtin_package}.{info.name}")
            self._builtins_loaded = True
        finally:
            self._loading_builtins = False

    def entry_points(self) -> dict[str, EntryPoint]:
        """Installed plugin entry points by name (imports nothing)."""
        if os.environ.get("RNNBENCH_NO_PLUGINS", "").strip() not in ("", "0"):
            return {}
        return {ep.name: ep for ep in entry_points(group=self.entry_point_group)}

    def names(self) -> list[str]:
        """Every name that can be asked for: built-ins, loaded plugins, installed plugins."""
        self.load_builtins()
        return sorted(set(self._classes) | set(self.entry_points()))

    def _load_entry_point(self, ep: EntryPoint) -> None:
        dist = getattr(ep.dist, "name", None) or "unknown distribution"
        try:
            obj = ep.load()
            if isinstance(obj, type) and ep.name not in self._classes:
                self.add(ep.name, obj)
        except Exception as exc:  # an import error, a duplicate name, a class that is no Cell/Task ...
            raise RegistryError(
                f"{self.kind} plugin {ep.name!r} from distribution {dist!r} failed to load "
                f"({ep.value}): {type(exc).__name__}: {exc}"
            ) from exc
        if ep.name not in self._classes:
            raise RegistryError(
                f"{self.kind} plugin {ep.name!r} from distribution {dist!r} ({ep.value}) was imported "
                f"but registered no {self.kind} named {ep.name!r}: decorate its class with "
                f"@register_{self.kind}({ep.name!r}) or point the entry point at the class."
            )

    # --- lookup ----------------------------------------------------------------------
    def get(self, name: str) -> type:
        """The class registered as ``name``; a clear error listing known names otherwise."""
        self.load_builtins()
        if name not in self._classes:
            ep = self.entry_points().get(name)
            if ep is not None:
                self._load_entry_point(ep)
        if name in self._classes:
            return self._classes[name]
        known = self.names()
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(
            f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(known)}. "
            f"(Add your own with plugins=[path/to/file.py] or an installed "
            f"'{self.entry_point_group}' entry point.)"
        )

    def is_loaded(self, name: str) -> bool:
        """True if ``name`` is registered already (a plugin that was asked for, or a built-in)."""
        self.load_builtins()
        return name in self._classes

    def __contains__(self, name: str) -> bool:
        return name in self.names()


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


CELLS: Registry = Registry("cell", "rnnbench.cells", "rnnbench.cells", base="rnnbench.cell:Cell",
                           required=(("recurrence", "step", "step_with_gates"),))
TASKS: Registry = Registry("task", "rnnbench.tasks", "rnnbench.tasks", base="rnnbench.task:Task",
                           required=(("build_model",), ("loss_and_metrics",)))


def register_cell(name: str):
    """Register a :class:`rnnbench.cell.Cell` subclass under ``name`` (``cell=<name>``)."""
    return CELLS.register(name)


def register_task(name: str):
    """Register a :class:`rnnbench.task.Task` subclass under ``name`` (``task=<name>``)."""
    return TASKS.register(name)


def load_plugin_file(path: str | os.PathLike) -> None:
    """Import a user's Python file so that its ``@register_*`` decorators run.

    The module name is derived from the file's absolute path, so loading the same
    file twice is harmless and two files with the same stem do not clash.
    """
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise RegistryError(f"plugins: file {str(path)!r} does not exist (resolved to {file}).")
    if file.suffix != ".py":
        raise RegistryError(f"plugins: {str(path)!r} is not a Python file (.py).")
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:10]
    module_name = f"rnnbench_user_plugin_{file.stem}_{digest}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except RegistryError:
        del sys.modules[module_name]
        raise
    except Exception as exc:
        del sys.modules[module_name]
        raise RegistryError(f"plugins: {str(path)!r} failed to import: {type(exc).__name__}: {exc}") from exc


def get_cell(name: str) -> type:
    return CELLS.get(name)


def get_task(name: str) -> type:
    return TASKS.get(name)
