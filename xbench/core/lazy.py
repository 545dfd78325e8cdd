"""Lazy package exports (PEP 562), so that importing a package loads no Keras.

Configs are checked before TensorFlow starts: ``xbench.models`` and
``xbench.explain`` name their members here and import each one's module only
when the member is first used.
"""

from __future__ import annotations

import importlib
from typing import Callable, Mapping


def exports(package: str, where: Mapping[str, str]) -> tuple[Callable[[str], object], list[str]]:
    """(``__getattr__``, ``__all__``) for a package whose member ``name`` lives in module ``where[name]``."""

    def __getattr__(name: str):
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(where)
