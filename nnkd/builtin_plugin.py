"""nnkd's own losses, trainers, teacher loaders and transforms, registered like any plugin.

Each kind has one :class:`nnkd.name_table.NameTable` (``BUILTIN_<KIND>``), filled when its package is
imported; the hooks hand out copies of them.
"""
from nnkd.hooks import hookimpl


@hookimpl
def nnkd_register_losses():
    from nnkd.losses import BUILTIN_LOSSES

    return dict(BUILTIN_LOSSES)


@hookimpl
def nnkd_register_trainers():
    from nnkd.trainers import BUILTIN_TRAINERS

    return dict(BUILTIN_TRAINERS)


@hookimpl
def nnkd_register_teacher_loaders():
    from nnkd.teachers import BUILTIN_TEACHER_LOADERS

    return dict(BUILTIN_TEACHER_LOADERS)


@hookimpl
def nnkd_register_transforms():
    from nnkd.transforms import BUILTIN_TRANSFORMS

    return dict(BUILTIN_TRANSFORMS)
