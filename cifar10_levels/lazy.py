"""Lazy re-exports for the folders' `__init__`s: `from cifar10_levels.checkpoint import BEST_NAME`
loads the one module that defines it, so `--help` and `cifar10-report` answer without importing torch."""
from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """`exports`: submodule -> the names it gives the package. Returns `__getattr__`, `__dir__` and
    `__all__` for the package's `__init__`."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__, sorted(where)
