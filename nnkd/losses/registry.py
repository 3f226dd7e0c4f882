"""Name -> factory table of the built-in losses (served to pluggy by :mod:`nnkd.builtin_plugin`)."""
from __future__ import annotations

from typing import Callable, Dict

BUILTIN_LOSSES: Dict[str, Callable] = {}


def register_loss(name: str):
    """Class decorator: ``@register_loss("logit_kd")`` registers a built-in loss."""

    def deco(cls):
        if name in BUILTIN_LOSSES:
            raise ValueError(f"built-in loss {name!r} registered twice")
        BUILTIN_LOSSES[name] = cls
        return cls

    return deco
