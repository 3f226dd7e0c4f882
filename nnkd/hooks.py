"""Plugin system: pluggy hook specifications and the process-wide plugin manager.

Built-in losses, trainers, teacher loaders and transforms are registered through
:mod:`nnkd.builtin_plugin`, exactly like a third-party plugin: this module names it in
:data:`BUILTIN_PLUGINS` and imports it when the manager is built, so the plugin modules depend on
this one and never the other way round. External plugins are found through the ``nnkd``
entry-point group::

    [project.entry-points.nnkd]
    my_plugin = "my_package.nnkd_plugin"

Each ``nnkd_register_*`` hook returns a ``{name: factory}`` mapping; names must be unique
across plugins. A factory may be given by reference, ``"package.module:attr"``: it is imported on
first use, so listing what is registered (``nnkd trainers``, ``nnkd plugins``) imports neither torch
nor nnU-Net.
"""
from __future__ import annotations

import ast
import functools
import importlib
import importlib.machinery
import importlib.util
import sys
from typing import Any, Callable, Dict, List, Tuple

import pluggy

PROJECT = "nnkd"
ENTRY_POINT_GROUP = "nnkd"
#: plugin name -> module, registered before the entry-point plugins
BUILTIN_PLUGINS = {"nnkd.builtin": "nnkd.builtin_plugin"}

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

KINDS = ("losses", "trainers", "teacher_loaders", "transforms")
SINGULAR = {"losses": "loss", "trainers": "trainer", "teacher_loaders": "teacher loader", "transforms": "transform"}


class NNKDSpec:
    """Hook specifications. A plugin implements any subset with ``@hookimpl``."""

    @hookspec
    def nnkd_register_losses(self) -> Dict[str, Callable[..., Any]]:
        """Return ``{name: factory}`` of distillation/task losses.

        ``factory(**params)`` must return an ``nn.Module`` whose ``forward`` returns a scalar
        tensor or a ``{term: scalar tensor}`` dict (every term is logged; their sum is the
        loss). ``params`` come from the distillation plan's ``losses[i].params``.
        """

    @hookspec
    def nnkd_register_trainers(self) -> Dict[str, type]:
        """Return ``{class name: trainer class}`` (or ``"package.module:ClassName"``, imported on use).

        Each class must subclass ``nnunetv2...nnUNetTrainer``, keep its constructor
        signature, and be importable by module path (so it pickles). The name must equal
        ``cls.__name__``: it is what users pass to ``nnUNetv2_train -tr``. The class
        docstring's first line is shown by ``nnkd trainers``.
        """

    @hookspec
    def nnkd_register_teacher_loaders(self) -> Dict[str, Callable[..., Any]]:
        """Return ``{kind: loader}`` for teacher models.

        ``loader(spec: dict, device: torch.device)`` receives one ``teachers[i]`` entry of the
        plan and returns a frozen ``nn.Module`` in eval mode (no parameter requires grad)
        plus a metadata dict (at least ``sha256`` of the weights file).
        """

    @hookspec
    def nnkd_register_transforms(self) -> Dict[str, Callable[..., Any]]:
        """Return ``{name: factory}`` of data transforms.

        ``factory(**params)`` returns a batchgeneratorsv2 ``BasicTransform`` operating on one
        sample's ``{'image': (C, *spatial) tensor, 'segmentation': ...}`` dict.
        """


class UnknownNameError(KeyError):
    """A registry lookup for a name nobody registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return self.args[0]


@functools.lru_cache(maxsize=None)
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager: built-ins plus entry-point plugins, validated."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(NNKDSpec)
    for name, module in BUILTIN_PLUGINS.items():
        pm.register(importlib.import_module(module), name=name)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    # A misspelled hook implementation (nnkd_register_loss, ...) fails here, at start-up.
    pm.check_pending()
    return pm


@functools.lru_cache(maxsize=None)
def entries(kind: str) -> Dict[str, Tuple[Any, str]]:
    """``{name: (factory or "module:attr" reference, plugin name)}``, importing nothing registered."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; known: {', '.join(KINDS)}")
    pm = get_plugin_manager()
    hook = getattr(pm.hook, f"nnkd_register_{kind}")
    out: Dict[str, Tuple[Callable[..., Any], str]] = {}
    for impl in hook.get_hookimpls():
        mapping = impl.function() or {}
        for name, obj in mapping.items():
            if name in out:
                raise ValueError(
                    f"{SINGULAR[kind]} {name!r} is registered twice: by {out[name][1]} and by {impl.plugin_name}")
            out[name] = (obj, impl.plugin_name)
    return out


def _check_trainer(name: str, obj: Any, plugin: str) -> None:
    """The trainer contract of :meth:`NNKDSpec.nnkd_register_trainers`, checked at registration."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    if not (isinstance(obj, type) and issubclass(obj, nnUNetTrainer)):
        raise ValueError(f"trainer {name!r} registered by {plugin} is not a subclass of nnU-Net's nnUNetTrainer: {obj!r}")
    if obj.__name__ != name:
        raise ValueError(f"trainer {name!r} registered by {plugin} is the class {obj.__name__}: the name must equal "
                         f"the class name (what nnUNetv2_train -tr looks up)")


@functools.lru_cache(maxsize=None)
def registry(kind: str) -> Dict[str, Tuple[Callable[..., Any], str]]:
    """``{name: (factory, plugin name)}`` for one kind of registered object (references imported)."""
    return {name: (_resolved(kind, name, obj, plugin), plugin) for name, (obj, plugin) in entries(kind).items()}


def _resolved(kind: str, name: str, obj: Any, plugin: str) -> Any:
    """``obj`` imported when a reference; a trainer is checked against the trainer contract."""
    obj = resolve(obj)
    if kind == "trainers":
        _check_trainer(name, obj, plugin)
    return obj


def resolve(obj: Any) -> Any:
    """A registered object; a ``"package.module:attr"`` reference is imported."""
    if not isinstance(obj, str):
        return obj
    module, _, attr = obj.partition(":")
    return getattr(importlib.import_module(module), attr)


def summary(obj: Any) -> str:
    """First line of a registered object's docstring; a reference is read from its source file
    (not imported) unless its module is loaded already or its file cannot be found."""
    if isinstance(obj, str):
        module, _, attr = obj.partition(":")
        doc = None if module in sys.modules else _source_docstring(module, attr)
        if doc is None:
            doc = resolve(obj).__doc__
    else:
        doc = obj.__doc__
    lines = (doc or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def _source_docstring(module: str, attr: str):
    """Docstring of the top-level class/function ``attr`` in ``module``'s source, found without
    importing the module or its parent packages; None when the source or ``attr`` is not found."""
    parts = module.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
        for i in range(1, len(parts)):
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:i + 1]), spec.submodule_search_locations)
        with open(spec.origin, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (AttributeError, ImportError, OSError, SyntaxError, TypeError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == attr:
            return ast.get_docstring(node)
    return None


def lookup(kind: str, name: str) -> Callable[..., Any]:
    """The factory registered as ``name``; an unknown name lists the known ones."""
    reg = entries(kind)
    if name not in reg:
        known = ", ".join(sorted(reg)) or "(none)"
        raise UnknownNameError(f"unknown {SINGULAR[kind]} {name!r}; known: {known}")
    return _resolved(kind, name, *reg[name])


def list_names(kind: str) -> List[str]:
    return sorted(entries(kind))


def build_loss(name: str, **params: Any):
    """Instantiate the loss registered as ``name`` with the plan's ``params``."""
    factory = lookup("losses", name)
    try:
        return factory(**params)
    except TypeError as e:
        raise TypeError(f"loss {name!r}: bad params {params}: {e}") from None
