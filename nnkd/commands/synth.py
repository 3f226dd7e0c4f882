"""`nnkd synth KIND --id N`: write synthetic nnU-Net raw datasets with known ground truth."""
from __future__ import annotations

import argparse
import importlib
import importlib.util

from nnkd.synthetic import KINDS

_EPILOG = """\
Datasets go to $nnUNet_raw with case labels in dataset.json (key "nnkd") and the ground truth
(class, lesion centres and boxes, seed per case) in synth_truth.json. Next:
  nnUNetv2_plan_and_preprocess -d {ids} -c {config} --verify_dataset_integrity"""


def register(subparsers) -> None:
    p = subparsers.add_parser("synth", help="write small synthetic nnU-Net raw datasets with known ground truth")
    sub = p.add_subparsers(dest="kind", metavar="{" + ",".join(KINDS) + "}", required=True)
    for kind in KINDS:
        module = _describe(kind)
        ndim = len(module.DEFAULT_SIZE)
        two = kind != "paired3d"
        k = sub.add_parser(kind, help=module.__doc__.splitlines()[0].split(": ", 1)[1],
                           description=module.__doc__.replace("``", ""),
                           epilog=_EPILOG.format(ids="N N+1" if two else "N",
                                                 config="3d_fullres" if ndim == 3 else "2d"),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        k.add_argument("--id", type=int, required=True, dest="dataset_id", metavar="N",
                       help="dataset id" + (" of the student; the teacher gets N+1" if two else ""))
        k.add_argument("--cases", type=int, default=module.DEFAULT_CASES,
                       help=f"training cases{' per dataset' if two else ''} (default {module.DEFAULT_CASES})")
        k.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        k.add_argument("--size", type=int, nargs="+", default=module.DEFAULT_SIZE, metavar="SIZE",
                       help=f"image size, {'z y x' if ndim == 3 else 'y x'} or one value for all axes "
                            f"(default {' '.join(map(str, module.DEFAULT_SIZE))})")
        k.add_argument("--name", default=module.DEFAULT_NAME,
                       help=f"dataset name{' stem' if two else ''} (default {module.DEFAULT_NAME})")
        k.add_argument("--overwrite", action="store_true", help="replace existing datasets of the same id and name")
        if kind == "unpaired2d":
            k.add_argument("--lesion-masks", action="store_true",
                           help="label 1 = the polyp (default: label 1 = the endoscope's field of view, no lesion "
                                "information)")
        k.set_defaults(func=run)


def _describe(kind: str):
    """The docstring and DEFAULT_* constants of ``nnkd.synthetic.<kind>``, read from its source so
    that building the parser (``nnkd --help``) does not import numpy/scipy; imported as a fallback."""
    import ast
    import os
    import types

    path = os.path.join(os.path.dirname(importlib.util.find_spec("nnkd.synthetic").origin), f"{kind}.py")
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        values = {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                  for t in node.targets if isinstance(t, ast.Name) and t.id.startswith("DEFAULT_")}
        values["DEFAULT_SIZE"] = tuple(values["DEFAULT_SIZE"])
        return types.SimpleNamespace(__doc__=ast.get_docstring(tree, clean=False), **values)
    except (OSError, SyntaxError, ValueError, KeyError):
        return importlib.import_module(f"nnkd.synthetic.{kind}")


def run(args) -> int:
    module = importlib.import_module(f"nnkd.synthetic.{args.kind}")
    options = {"lesion_masks": args.lesion_masks} if args.kind == "unpaired2d" else {}
    folders = module.generate(args.dataset_id, cases=args.cases, seed=args.seed, size=args.size, name=args.name,
                              overwrite=args.overwrite, **options)
    for folder in folders:
        print(f"written: {folder}")
    config = "3d_fullres" if len(module.DEFAULT_SIZE) == 3 else "2d"
    ids = " ".join(str(args.dataset_id + i) for i in range(len(folders)))
    print(f"next: nnUNetv2_plan_and_preprocess -d {ids} -c {config} --verify_dataset_integrity")
    return 0
