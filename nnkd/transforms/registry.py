"""Built-in data transforms by name (served by :mod:`nnkd.builtin_plugin`)."""
from nnkd.name_table import NameTable

BUILTIN_TRANSFORMS = NameTable("transform")
#: class decorator: ``@register_transform("modality_dropout")``
register_transform = BUILTIN_TRANSFORMS.register
