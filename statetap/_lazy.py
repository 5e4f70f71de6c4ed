"""Public names of a package that load on first use, so that importing the package imports
none of the heavy libraries (torch, transformers, datasets) its modules need."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping


def lazy_names(package: str, names: Mapping[str, str]) -> None:
    """Make each of ``names`` (public name -> the module that defines it) an attribute of
    ``package`` that imports its module when first read.

    The names win over submodules of the same name (``lens.train`` is the function, even once
    the module ``lens/train.py`` is imported, as it was with eager imports): the package's
    module class looks them up before its own attributes, where the import system puts each
    submodule it loads.  A value set on the package (``monkeypatch.setattr``) is read as set.
    """

    class LazyPackage(types.ModuleType):
        def __getattribute__(self, name: str):
            if name in names:
                value = super().__getattribute__("__dict__").get(name)
                if value is None or isinstance(value, types.ModuleType):
                    return getattr(importlib.import_module(names[name]), name)
                return value
            return super().__getattribute__(name)

        def __dir__(self) -> list[str]:
            return sorted({*super().__dir__(), *names})

    sys.modules[package].__class__ = LazyPackage
