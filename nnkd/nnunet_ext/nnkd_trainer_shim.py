"""Shim for nnU-Net's external trainer lookup (``nnUNet_extTrainer`` points at this folder).

nnU-Net imports modules found there by bare file name and drops them from ``sys.modules``
afterwards, so no class is defined here: the trainers (built-in and plugin-provided) live in
importable packages and are only re-exported, which keeps them picklable.
"""
from nnkd.hooks import registry as _registry

globals().update({_name: _cls for _name, (_cls, _plugin) in _registry("trainers").items()})
