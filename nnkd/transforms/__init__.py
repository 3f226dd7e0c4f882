"""Data transforms, one file each, registered by name (served by :mod:`nnkd.builtin_plugin`)."""
from nnkd.transforms.registry import BUILTIN_TRANSFORMS, register_transform
from nnkd.transforms import dose, modality_dropout  # noqa: F401  (registration)

__all__ = ["BUILTIN_TRANSFORMS", "register_transform"]
