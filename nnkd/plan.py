"""Distillation plans: one JSON file per experiment, validated with errors naming the field.

The format is documented in ``plans/README.md``. A trainer finds its plan (first match):

1. ``<fold folder>/nnkd_plan.json`` when continuing (``--c``), validating (``--val``) or
   when ``NNKD_PLAN`` is unset: the effective plan of the earlier run of this fold;
2. the file named by the environment variable ``NNKD_PLAN``;
3. ``nnkd_plan.json`` in the dataset's ``nnUNet_preprocessed`` folder;
4. no file: the trainer's class-level ``plan_defaults`` over the defaults below.

A plan file's fields override the trainer's ``plan_defaults`` (which fill in what the file leaves
out): objects (``student``, ``classification``, ...) key by key, everything else (``losses``,
``teachers``, ...) as a whole; ``DEFAULTS`` fill in the rest.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, List, Optional

from nnkd.errors import NNKDError

PLAN_ENV = "NNKD_PLAN"
PLAN_FILENAME = "nnkd_plan.json"

DEFAULTS: Dict[str, Any] = {
    "name": "default",
    "description": "",
    "seed": None,
    "student": {"channels": None, "train_fraction": 1.0, "init_from_teacher": False},
    # head: average + max of every encoder stage, standardised, trained at 0.1 x the rate (nnkd/nets/head.py)
    # cbam_mode: x + CBAM(x) with centred spatial logits, so the attention cannot silence the bottleneck
    # (nnkd/nets/cbam.py)
    "network": {"cbam": True, "cbam_reduction": 8, "cbam_mode": "centred_residual", "head_hidden": 256,
                "head_dropout": 0.2, "head_stages": "all", "head_pool": "avgmax", "head_standardize": True,
                "head_lr_scale": 0.1},
    "classification": {
        "loss": "ce", "params": {}, "weight": 1.0, "seg_weight": 1.0,
        "balanced_sampling": False, "select_best_by": "ema_dice",
    },
    "modality_dropout": None,
    "augmentation": [],
    "teachers": [],
    "losses": [],
    "schedule": {},
}
MODALITY_DROPOUT_DEFAULTS = {"p": 0.3, "keep": [], "droppable": None, "fill": 0.0}
TEACHER_DEFAULTS = {
    "name": None, "loader": "nnunet", "model_folder": None, "fold": 0,
    "checkpoint": "checkpoint_final.pth", "channels": None, "paired": True, "dataset": None,
    "weight": 1.0,
}
LOSS_DEFAULTS = {"name": None, "weight": 1.0, "params": {}}
SCHEDULE_KEYS = {"num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch",
                 "initial_lr", "save_every"}
SELECT_BEST = ("ema_dice", "auc")
CBAM_MODES = ("centred_residual", "centred", "plain")  # nnkd.nets.cbam.MODES (kept here: no torch import)
INIT_FROM_TEACHER = (False, True, "auto")


def _fail(field: str, msg: str, source: str) -> None:
    raise NNKDError(f"{source}: field '{field}': {msg}")


def _check_keys(obj: Any, allowed, field: str, source: str) -> None:
    if not isinstance(obj, dict):
        _fail(field, f"must be an object, got {type(obj).__name__}", source)
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        _fail(f"{field}.{unknown[0]}" if field else unknown[0],
              f"unknown key (known: {', '.join(sorted(allowed))})", source)


def _merge(defaults: Dict[str, Any], given: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(defaults)
    out.update(copy.deepcopy(given))
    return out


def _typed(value: Any, types, field: str, source: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        _fail(field, f"must be {_tname(types)}, got a boolean", source)
    if not isinstance(value, types):
        _fail(field, f"must be {_tname(types)}, got {json.dumps(value)}", source)


def _tname(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false",
             list: "a list", dict: "an object"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _channels(value: Any, field: str, source: str) -> None:
    _typed(value, list, field, source, allow_none=True)
    for i, c in enumerate(value or []):
        _typed(c, (int, str), f"{field}[{i}]", source)


def validate_plan(raw: Dict[str, Any], source: str = "plan") -> Dict[str, Any]:
    """Return the effective plan (defaults filled in); :class:`NNKDError` names a bad field."""
    _check_keys(raw, DEFAULTS, "", source)
    plan = _merge(DEFAULTS, raw)
    _typed(plan["name"], str, "name", source)
    _typed(plan["description"], str, "description", source)
    _typed(plan["seed"], int, "seed", source, allow_none=True)

    _check_keys(plan["student"], DEFAULTS["student"], "student", source)
    student = plan["student"] = _merge(DEFAULTS["student"], plan["student"])
    _channels(student["channels"], "student.channels", source)
    _typed(student["train_fraction"], (int, float), "student.train_fraction", source)
    if not 0 < student["train_fraction"] <= 1:
        _fail("student.train_fraction", "must be within (0, 1]", source)
    if not (isinstance(student["init_from_teacher"], bool) or student["init_from_teacher"] == "auto"):
        _fail("student.init_from_teacher", f"must be one of {', '.join(map(json.dumps, INIT_FROM_TEACHER))}", source)

    _check_keys(plan["network"], DEFAULTS["network"], "network", source)
    plan["network"] = _merge(DEFAULTS["network"], plan["network"])
    _typed(plan["network"]["cbam"], bool, "network.cbam", source)
    for k in ("cbam_reduction", "head_hidden"):
        _typed(plan["network"][k], int, f"network.{k}", source)
        if plan["network"][k] < 1:
            _fail(f"network.{k}", "must be >= 1", source)
    _typed(plan["network"]["head_dropout"], (int, float), "network.head_dropout", source)
    if plan["network"]["head_stages"] != "all":
        _typed(plan["network"]["head_stages"], int, "network.head_stages", source)
        if plan["network"]["head_stages"] < 1:
            _fail("network.head_stages", 'must be >= 1 or "all"', source)
    if plan["network"]["cbam_mode"] not in CBAM_MODES:
        _fail("network.cbam_mode", "must be one of " + ", ".join(f'"{m}"' for m in CBAM_MODES), source)
    if plan["network"]["head_pool"] not in ("avg", "avgmax"):
        _fail("network.head_pool", 'must be "avg" or "avgmax"', source)
    _typed(plan["network"]["head_standardize"], bool, "network.head_standardize", source)
    _typed(plan["network"]["head_lr_scale"], (int, float), "network.head_lr_scale", source)
    if plan["network"]["head_lr_scale"] <= 0:
        _fail("network.head_lr_scale", "must be > 0", source)

    cls = plan["classification"]
    _check_keys(cls, DEFAULTS["classification"], "classification", source)
    cls = plan["classification"] = _merge(DEFAULTS["classification"], cls)
    _typed(cls["loss"], str, "classification.loss", source)
    _typed(cls["params"], dict, "classification.params", source)
    for k in ("weight", "seg_weight"):
        _typed(cls[k], (int, float), f"classification.{k}", source)
        if cls[k] < 0:
            _fail(f"classification.{k}", "must be >= 0", source)
    _typed(cls["balanced_sampling"], bool, "classification.balanced_sampling", source)
    if cls["select_best_by"] not in SELECT_BEST:
        _fail("classification.select_best_by", f"must be one of {', '.join(SELECT_BEST)}", source)

    md = plan["modality_dropout"]
    if md is not None:
        _check_keys(md, MODALITY_DROPOUT_DEFAULTS, "modality_dropout", source)
        md = plan["modality_dropout"] = _merge(MODALITY_DROPOUT_DEFAULTS, md)
        _typed(md["p"], (int, float), "modality_dropout.p", source)
        if not 0 <= md["p"] <= 1:
            _fail("modality_dropout.p", "must be within [0, 1]", source)
        _channels(md["keep"], "modality_dropout.keep", source)
        _channels(md["droppable"], "modality_dropout.droppable", source)

    _typed(plan["augmentation"], list, "augmentation", source)
    for i, a in enumerate(plan["augmentation"]):
        _check_keys(a, {"name", "params"}, f"augmentation[{i}]", source)
        _typed(a.get("name"), str, f"augmentation[{i}].name", source)
        a.setdefault("params", {})

    _typed(plan["teachers"], list, "teachers", source)
    names = set()
    for i, t in enumerate(plan["teachers"]):
        f = f"teachers[{i}]"
        _check_keys(t, TEACHER_DEFAULTS, f, source)
        t = plan["teachers"][i] = _merge(TEACHER_DEFAULTS, t)
        if t["name"] is None:
            t["name"] = f"teacher{i}"
        _typed(t["name"], str, f"{f}.name", source)
        if t["name"] in names:
            _fail(f"{f}.name", f"duplicate teacher name {t['name']!r}", source)
        names.add(t["name"])
        _typed(t["loader"], str, f"{f}.loader", source)
        _typed(t["model_folder"], str, f"{f}.model_folder", source)
        _typed(t["fold"], (int, str), f"{f}.fold", source)
        if isinstance(t["fold"], str) and t["fold"] != "all":
            _fail(f"{f}.fold", "must be an integer or 'all'", source)
        _typed(t["checkpoint"], str, f"{f}.checkpoint", source)
        _channels(t["channels"], f"{f}.channels", source)
        _typed(t["paired"], bool, f"{f}.paired", source)
        _typed(t["dataset"], (int, str), f"{f}.dataset", source, allow_none=True)
        if not t["paired"] and t["dataset"] is None:
            _fail(f"{f}.dataset", "an unpaired teacher needs the dataset its data comes from", source)
        _typed(t["weight"], (int, float), f"{f}.weight", source)
        if not t["weight"] > 0:
            _fail(f"{f}.weight", "must be > 0 (the teacher's weight in multi-teacher fusion)", source)

    _typed(plan["losses"], list, "losses", source)
    for i, loss in enumerate(plan["losses"]):
        f = f"losses[{i}]"
        _check_keys(loss, LOSS_DEFAULTS, f, source)
        loss = plan["losses"][i] = _merge(LOSS_DEFAULTS, loss)
        _typed(loss["name"], str, f"{f}.name", source)
        _typed(loss["weight"], (int, float), f"{f}.weight", source)
        _typed(loss["params"], dict, f"{f}.params", source)

    _check_keys(plan["schedule"], SCHEDULE_KEYS, "schedule", source)
    for k, v in plan["schedule"].items():
        _typed(v, float if k == "initial_lr" else int, f"schedule.{k}", source)
        if v <= 0:
            _fail(f"schedule.{k}", "must be > 0", source)
    return plan


def check_registered_names(plan: Dict[str, Any], source: str = "plan") -> None:
    """Fail early (before training) on loss, transform or teacher-loader names nobody registered."""
    from nnkd.hooks import SINGULAR, registry

    def check(kind: str, name: str, field: str) -> None:
        known = registry(kind)
        if name not in known:
            _fail(field, f"unknown {SINGULAR[kind]} {name!r}; known: "
                         f"{', '.join(sorted(known)) or '(none)'}", source)

    check("losses", plan["classification"]["loss"], "classification.loss")
    for i, loss in enumerate(plan["losses"]):
        check("losses", loss["name"], f"losses[{i}].name")
    for i, a in enumerate(plan["augmentation"]):
        check("transforms", a["name"], f"augmentation[{i}].name")
    for i, t in enumerate(plan["teachers"]):
        check("teacher_loaders", t["loader"], f"teachers[{i}].loader")


def load_plan(path: str, defaults: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Read and validate a plan file over ``defaults`` (objects merged key by key, lists replaced)."""
    if not os.path.isfile(path):
        raise NNKDError(f"distillation plan not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise NNKDError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise NNKDError(f"{path}: a plan must be a JSON object")
    merged = copy.deepcopy(defaults or {})
    for key, value in raw.items():
        base = merged.get(key)
        merged[key] = dict(base, **value) if isinstance(base, dict) and isinstance(value, dict) else value
    return validate_plan(merged, source=path)


def resolve_plan(fold_folder: Optional[str], preprocessed_folder: Optional[str],
                 defaults: Optional[Dict[str, Any]], continuing: bool) -> tuple[Dict[str, Any], str]:
    """Find the plan for a trainer (order in the module docstring); returns (plan, source)."""
    env = os.environ.get(PLAN_ENV) or None
    previous = os.path.join(fold_folder, PLAN_FILENAME) if fold_folder else None
    if previous and os.path.isfile(previous) and (continuing or env is None):
        plan = load_plan(previous)
        if continuing and env is not None:
            requested = load_plan(env, defaults)
            if requested != plan:
                raise NNKDError(
                    f"--c continues the run in {fold_folder} with its plan {previous}, but {PLAN_ENV} names a "
                    f"different plan ({env}). Unset {PLAN_ENV} to continue, or start a new run without --c.")
        return plan, previous
    if env is not None:
        return load_plan(env, defaults), env
    if preprocessed_folder:
        candidate = os.path.join(preprocessed_folder, PLAN_FILENAME)
        if os.path.isfile(candidate):
            return load_plan(candidate, defaults), candidate
    return validate_plan(copy.deepcopy(defaults or {}), "built-in defaults"), "built-in defaults"


def resolve_channels(spec: Optional[List[Any]], channel_names: Dict[str, str], field: str) -> List[int]:
    """Channel names or indices -> sorted-as-given indices into the dataset's channels."""
    n = len(channel_names)
    if spec is None:
        return list(range(n))
    by_name = {v: int(k) for k, v in channel_names.items()}
    out = []
    for c in spec:
        if isinstance(c, int):
            if not 0 <= c < n:
                raise NNKDError(f"{field}: channel {c} does not exist; the dataset has channels "
                                f"{_describe(channel_names)}")
            out.append(c)
        elif c in by_name:
            out.append(by_name[c])
        else:
            raise NNKDError(f"{field}: channel {c!r} does not exist; the dataset has channels "
                            f"{_describe(channel_names)}")
    if len(set(out)) != len(out):
        raise NNKDError(f"{field}: channels listed twice: {spec}")
    if not out:
        raise NNKDError(f"{field}: empty channel list")
    return out


def _describe(channel_names: Dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(channel_names.items(), key=lambda kv: int(kv[0])))
