"""Built-in trainers by class name (served by :mod:`nnkd.builtin_plugin`)."""
from nnkd.name_table import NameTable

BUILTIN_TRAINERS = NameTable("trainer")
#: class decorator: ``@register_trainer("nnKDTrainerCls")`` (the name must equal the class name)
register_trainer = BUILTIN_TRAINERS.register
