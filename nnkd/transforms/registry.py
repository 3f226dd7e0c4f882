"""Name -> factory table of the built-in data transforms (served by :mod:`nnkd.builtin_plugin`)."""
from __future__ import annotations

from typing import Callable, Dict

BUILTIN_TRANSFORMS: Dict[str, Callable] = {}


def register_transform(name: str):
    """Class decorator: ``@register_transform("modality_dropout")``."""

    def deco(cls):
        if name in BUILTIN_TRANSFORMS:
            raise ValueError(f"built-in transform {name!r} registered twice")
        BUILTIN_TRANSFORMS[name] = cls
        return cls

    return deco
