"""Plugin discovery for the registries (frame sources, inference backends): import a package's modules once,
so that the classes in them register themselves; the code that picks one then names no class."""

from __future__ import annotations

import functools
import importlib
import pkgutil


@functools.cache
def import_package_modules(package: str, skip: frozenset[str] = frozenset()) -> None:
    """Import every module of `package` but those named in `skip` (once per process)."""
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if module.name not in skip:
            importlib.import_module(f"{package}.{module.name}")
