"""nnkd's own losses, trainers, teacher loaders and transforms, registered like any plugin."""
from nnkd.hooks import hookimpl


@hookimpl
def nnkd_register_losses():
    from nnkd.losses import BUILTIN_LOSSES

    return dict(BUILTIN_LOSSES)


@hookimpl
def nnkd_register_trainers():
    from nnkd.trainers import BUILTIN_TRAINERS

    return {cls.__name__: cls for cls in BUILTIN_TRAINERS}


@hookimpl
def nnkd_register_teacher_loaders():
    from nnkd.teachers import BUILTIN_TEACHER_LOADERS

    return dict(BUILTIN_TEACHER_LOADERS)


@hookimpl
def nnkd_register_transforms():
    import nnkd.transforms.modality_dropout  # noqa: F401  (registration)
    import nnkd.transforms.dose  # noqa: F401
    from nnkd.transforms.registry import BUILTIN_TRANSFORMS

    return dict(BUILTIN_TRANSFORMS)
