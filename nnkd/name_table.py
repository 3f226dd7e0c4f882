"""A name -> factory table filled by a class decorator (the built-ins served by nnkd.builtin_plugin)."""
from __future__ import annotations

from typing import Callable, Dict


class NameTable(Dict[str, Callable]):
    """``table.register("name")`` decorates a class (or function) into the table; a name registered twice fails."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str):
        def deco(cls):
            if name in self:
                raise ValueError(f"built-in {self.kind} {name!r} registered twice")
            self[name] = cls
            return cls

        return deco
