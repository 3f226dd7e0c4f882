"""Plugins through the real entry-point group, in fresh interpreters."""
import os
import sys
import textwrap

import pytest

from conftest import nnkd_cli, run_cli

PLUGIN = '''
import torch
from nnkd.hooks import hookimpl
from nnkd.trainers import nnKDTrainerCls


class nnKDTrainerFromPlugin(nnKDTrainerCls):
    """A trainer that a third-party plugin provides."""


class ZeroLoss(torch.nn.Module):
    def forward(self, student, teachers, batch):
        return student.logits.sum() * 0


@hookimpl
def nnkd_register_trainers():
    return {"nnKDTrainerFromPlugin": nnKDTrainerFromPlugin}


@hookimpl
def nnkd_register_losses():
    return {"zero": ZeroLoss}
'''


def _install_plugin(tmp_path, source, name="nnkd_test_plugin"):
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{name}.py").write_text(source)
    dist = site / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[nnkd]\n{name} = {name}\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_plugin_found_listed_and_used(tmp_path, nnunet_env):
    env = dict(nnunet_env, **_install_plugin(tmp_path, PLUGIN))
    out = nnkd_cli("plugins", env=env).stdout
    assert "nnkd_test_plugin" in out and "nnkd-test-plugin 1.0" in out.replace("_", "-") and "zero" in out
    assert "nnKDTrainerFromPlugin" in nnkd_cli("trainers", env=env).stdout
    # nnU-Net's own lookup, through the shim folder, finds built-in and plugin trainers; they pickle.
    code = textwrap.dedent("""
        import pickle
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find
        for name in ("nnKDTrainer", "nnKDTrainerCls", "nnKDTrainerFromPlugin"):
            cls = find(name)
            assert cls.__name__ == name and pickle.loads(pickle.dumps(cls)) is cls, name
        from nnkd.hooks import build_loss
        assert type(build_loss("zero")).__name__ == "ZeroLoss"
        print("OK")
    """)
    assert run_cli([sys.executable, "-c", code], env=env).stdout.strip().endswith("OK")


def test_misspelled_hook_fails_at_startup(tmp_path, nnunet_env):
    bad = "from nnkd.hooks import hookimpl\n\n@hookimpl\ndef nnkd_register_loss():\n    return {}\n"
    env = dict(nnunet_env, **_install_plugin(tmp_path, bad, "nnkd_bad_plugin"))
    p = nnkd_cli("plugins", env=env, check=False)
    assert p.returncode != 0 and "nnkd_register_loss" in p.stderr


def test_unknown_name_lists_known():
    from nnkd.hooks import UnknownNameError, build_loss

    with pytest.raises(UnknownNameError) as e:
        build_loss("no_such_loss")
    assert "unknown loss 'no_such_loss'; known:" in str(e.value) and "logit_kd" in str(e.value)


def test_nnunet_does_not_find_trainers_without_env(nnunet_env):
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
            "f('nnKDTrainerCls')")
    p = run_cli([sys.executable, "-c", code], env={"nnUNet_extTrainer": ""}, check=False)
    # documents why `eval "$(nnkd env)"` is needed: nnU-Net itself does not find the trainer
    assert p.returncode != 0 and "Could not find requested nnunet trainer nnKDTrainerCls" in p.stderr
    assert "export nnUNet_extTrainer=" in nnkd_cli("env").stdout


def _register_temporarily(trainers):
    """Register a plugin providing ``trainers`` in this process's manager; returns the cleanup."""
    import types

    from nnkd.hooks import entries, get_plugin_manager, hookimpl, registry

    plugin = types.ModuleType("nnkd_bad_trainers")
    plugin.nnkd_register_trainers = hookimpl(lambda: trainers)
    pm = get_plugin_manager()
    pm.register(plugin, name="nnkd_bad_trainers")
    entries.cache_clear()
    registry.cache_clear()

    def cleanup():
        pm.unregister(name="nnkd_bad_trainers")
        entries.cache_clear()
        registry.cache_clear()

    return cleanup


@pytest.mark.parametrize("make, message", [
    (lambda: {"nnKDTrainerRenamed": __import__("nnkd.trainers", fromlist=["x"]).nnKDTrainerCls},
     "trainer 'nnKDTrainerRenamed' registered by nnkd_bad_trainers is the class nnKDTrainerCls: the name must equal "
     "the class name"),
    (lambda: {"NotATrainer": type("NotATrainer", (), {})},
     "trainer 'NotATrainer' registered by nnkd_bad_trainers is not a subclass of nnU-Net's nnUNetTrainer"),
])
def test_registry_checks_the_trainer_contract(make, message):
    from nnkd.hooks import registry

    cleanup = _register_temporarily(make())
    try:
        with pytest.raises(ValueError) as e:
            registry("trainers")
        assert str(e.value).startswith(message)
    finally:
        cleanup()
    assert "nnKDTrainerCls" in registry("trainers")


def test_builtins_are_registered_like_a_plugin():
    """Every kind comes from the one built-in plugin, from the package's NameTable of that kind."""
    from nnkd.hooks import BUILTIN_PLUGINS, KINDS, registry
    from nnkd.losses import BUILTIN_LOSSES
    from nnkd.name_table import NameTable
    from nnkd.teachers import BUILTIN_TEACHER_LOADERS
    from nnkd.trainers import BUILTIN_TRAINERS
    from nnkd.transforms import BUILTIN_TRANSFORMS

    assert BUILTIN_PLUGINS == {"nnkd.builtin": "nnkd.builtin_plugin"}
    tables = dict(zip(KINDS, (BUILTIN_LOSSES, BUILTIN_TRAINERS, BUILTIN_TEACHER_LOADERS, BUILTIN_TRANSFORMS)))
    for kind, table in tables.items():
        assert isinstance(table, NameTable) and table, kind
        reg = registry(kind)
        assert {n: f for n, (f, plugin) in reg.items() if plugin == "nnkd.builtin"} == dict(table), kind


def test_builtin_references_match_the_registered_classes():
    """The built-in plugin registers by reference (for fast listing); the references must name
    exactly the classes the modules register with their decorators and the trainer list."""
    from nnkd import builtin_plugin
    from nnkd.hooks import _source_docstring, registry, resolve
    from nnkd.losses import BUILTIN_LOSSES
    from nnkd.teachers import BUILTIN_TEACHER_LOADERS
    from nnkd.trainers import BUILTIN_TRAINERS
    from nnkd.transforms import BUILTIN_TRANSFORMS

    import nnkd.transforms.dose  # noqa: F401  (registration)
    import nnkd.transforms.modality_dropout  # noqa: F401

    expected = {"losses": dict(BUILTIN_LOSSES), "teacher_loaders": dict(BUILTIN_TEACHER_LOADERS),
                "transforms": dict(BUILTIN_TRANSFORMS), "trainers": dict(BUILTIN_TRAINERS)}
    tables = {"losses": builtin_plugin.LOSSES, "teacher_loaders": builtin_plugin.TEACHER_LOADERS,
              "transforms": builtin_plugin.TRANSFORMS, "trainers": builtin_plugin.TRAINERS}
    for kind, table in tables.items():
        assert {n: resolve(ref) for n, ref in table.items()} == expected[kind], kind
        assert {n: obj for n, (obj, _) in registry(kind).items()} == expected[kind], kind
    # descriptions read from the source equal the imported docstrings' first lines
    for name, ref in builtin_plugin.TRAINERS.items():
        module, _, attr = ref.partition(":")
        assert _source_docstring(module, attr).splitlines()[0] == resolve(ref).__doc__.strip().splitlines()[0], name
