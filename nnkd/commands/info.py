"""`nnkd env`, `nnkd trainers`, `nnkd plugins`: set-up line and what is registered."""
from __future__ import annotations

import os

from nnkd.environment import NNUNET_PATH_VARS, SHIM_FOLDER, ext_trainer_value, workspace_env
from nnkd.hooks import KINDS, entries, get_plugin_manager, summary

def _env(args) -> int:
    import shlex

    values = {"nnUNet_extTrainer": ext_trainer_value()}
    if args.workspace:
        values.update(workspace_env(args.workspace))
        for path in list(values.values())[1:]:
            os.makedirs(path, exist_ok=True)
    for k, v in values.items():
        print(f"export {k}={shlex.quote(v)}")
    missing = [k for k in NNUNET_PATH_VARS if k not in values and not os.environ.get(k)]
    if missing:
        print(f"# not set: {', '.join(missing)} (nnU-Net needs them; `nnkd env --workspace DIR` sets all three)")
    return 0


def _trainers(args) -> int:
    reg = entries("trainers")  # descriptions are read without importing the trainers (torch, nnU-Net)
    width = max(len(n) for n in reg)
    for name, (cls, plugin) in sorted(reg.items()):
        print(f"{name:<{width}}  {summary(cls)}" + (f"  [{plugin}]" if plugin != "nnkd.builtin" else ""))
    print("\nEach method, its losses and plan fields: docs/methods.md in the nnkd repository.")
    if os.path.abspath(SHIM_FOLDER) not in [os.path.abspath(p) for p in
                                            os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]:
        print('\nnnUNetv2_train finds these once you run:  eval "$(nnkd env)"')
    return 0


def _plugins(args) -> int:
    pm = get_plugin_manager()
    for name, plugin in pm.list_name_plugin():
        source = getattr(plugin, "__file__", None) or repr(plugin)
        dist = next((d for p, d in pm.list_plugin_distinfo() if p is plugin), None)
        origin = f"{dist.project_name} {dist.version}" if dist else "built-in"
        print(f"{name}  ({origin}; {source})")
        for kind in KINDS:
            names = sorted(n for n, (_, owner) in entries(kind).items() if owner == name)
            if names:
                print(f"  {kind}: {', '.join(names)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("env", help="print the shell lines that let nnUNetv2_train find nnkd trainers",
                       description='Usage: eval "$(nnkd env)"  (or add the printed lines to your shell profile)')
    p.add_argument("--workspace", help="also set nnUNet_raw/_preprocessed/_results under this folder (created)")
    p.set_defaults(func=_env)
    p = sub.add_parser("trainers", help="list nnkd trainers (built-in and from plugins)")
    p.set_defaults(func=_trainers)
    p = sub.add_parser("plugins", help="list registered plugins and what each provides")
    p.set_defaults(func=_plugins)
