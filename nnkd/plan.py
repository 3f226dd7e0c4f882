"""Distillation plans: one JSON file per experiment, validated with errors naming the field.

The format is documented in ``nnkd/plans/README.md``, next to the plans shipped with the package
(``nnkd plans`` lists them). A trainer finds its plan (first match):

1. ``<fold folder>/nnkd_plan.json`` when continuing (``--c``), validating (``--val``) or
   when ``NNKD_PLAN`` is unset: the effective plan of the earlier run of this fold (with ``--c``,
   ``NNKD_PLAN`` may name a corrected plan that changes only the schedule, loss weights or
   description, see :func:`resume_changes`);
2. the file named by the environment variable ``NNKD_PLAN``, or the shipped plan of that name
   (``NNKD_PLAN=react_kd``);
3. ``nnkd_plan.json`` in the dataset's ``nnUNet_preprocessed`` folder;
4. no file: the trainer's class-level ``plan_defaults`` over the defaults below.

A plan file's fields override the trainer's ``plan_defaults`` (which fill in what the file leaves
out): objects (``student``, ``classification``, ...) key by key, everything else (``losses``,
``teachers``, ...) as a whole; ``DEFAULTS`` fill in the rest. The trainer's ``plan_defaults`` are
its method (task and distillation losses); a shipped plan holds the experiment (data, teachers,
seed) and only what deliberately differs from its trainer's defaults. ``trainers`` names the
trainer(s) a plan is for; another trainer refuses it before training.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
from typing import Any, Dict, List, Optional

from nnkd import strict_json
from nnkd.errors import NNKDError

PLAN_ENV = "NNKD_PLAN"
PLAN_FILENAME = "nnkd_plan.json"
PLANS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plans")  # shipped plans (package data)

DEFAULTS: Dict[str, Any] = {
    "name": "default",
    "description": "",
    "trainers": [],  # the trainer class names this plan is for; empty: any
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
    # the distillation losses' own parameters (embeddings, prototype queries, attention): "sgd" puts them in
    # the student's SGD (one more parameter group, same poly rate); "adamw" gives them their own AdamW
    # at lr times the same poly factor (nnkd/trainers/loss_optimizer.py)
    "loss_optimizer": {"name": "sgd", "lr": 1e-3, "weight_decay": 0.0},
    # the validation after training: nnU-Net's sliding-window segmentation of the validation cases (off: only
    # nnkd's classification pass runs) and test-time mirroring in both (off: one forward per window)
    "validation": {"segmentation": True, "mirroring": True},
}
MODALITY_DROPOUT_DEFAULTS = {"p": 0.3, "keep": [], "droppable": None, "fill": 0.0}
TEACHER_DEFAULTS = {
    "name": None, "loader": "nnunet", "model_folder": None, "fold": 0,
    "checkpoint": "checkpoint_final.pth", "channels": None, "paired": True, "dataset": None,
    "weight": 1.0, "sha256": None, "channel_map": None,
}
LOSS_DEFAULTS = {"name": None, "weight": 1.0, "params": {}}
SCHEDULE_KEYS = {"num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch",
                 "initial_lr", "save_every"}
SELECT_BEST = ("ema_dice", "auc")
CBAM_MODES = ("centred_residual", "centred", "plain")  # nnkd.nets.cbam.MODES (kept here: no torch import)
INIT_FROM_TEACHER = (False, True, "auto")
LOSS_OPTIMIZERS = ("sgd", "adamw")


class FieldError(NNKDError):
    """One bad plan field; :class:`Problems` collects them so that a refusal lists every one."""

    def __init__(self, field: str, msg: str, source: str):
        super().__init__(f"{source}: field '{field}': {msg}")
        self.field, self.msg = field, msg


class Problems:
    """Every bad field of one plan: ``with problems.check():`` blocks record their first
    :class:`FieldError` and go on; :meth:`refuse` raises one NNKDError listing them all."""

    def __init__(self, source: str, found: Optional[List[tuple]] = None):
        self.source, self.items = source, []
        for field, msg in found or []:
            self.add(field, msg)

    def add(self, field: str, msg: str) -> None:
        if (field, msg) not in self.items:
            self.items.append((field, msg))

    @contextlib.contextmanager
    def check(self):
        try:
            yield
        except FieldError as e:
            self.add(e.field, e.msg)

    def refuse(self) -> None:
        if self.items:
            raise NNKDError(strict_json.format_problems(self.source, self.items))


def _fail(field: str, msg: str, source: str) -> None:
    raise FieldError(field, msg, source)


def _check_keys(obj: Any, allowed, field: str, source: str, problems: Optional[Problems] = None) -> None:
    """Fail unless ``obj`` is an object; unknown keys are recorded in ``problems`` (each one), or
    fail at the first without it."""
    if not isinstance(obj, dict):
        _fail(field, f"must be an object, got {type(obj).__name__}", source)
    for key in sorted(set(obj) - set(allowed)):
        where, msg = f"{field}.{key}" if field else key, f"unknown key (known: {', '.join(sorted(allowed))})"
        if problems is None:
            _fail(where, msg, source)
        problems.add(where, msg)


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
    if isinstance(value, float) and not math.isfinite(value):
        _fail(field, f"must be a finite number, got {strict_json.json_number(value)}", source)


def _weight(value: Any, field: str, source: str) -> None:
    """A finite number >= 0 (a negative weight would turn a loss into a reward)."""
    _typed(value, (int, float), field, source)
    if value < 0:
        _fail(field, f"must be >= 0, got {value}", source)


def _tname(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false",
             list: "a list", dict: "an object"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _channels(value: Any, field: str, source: str) -> None:
    _typed(value, list, field, source, allow_none=True)
    for i, c in enumerate(value or []):
        _typed(c, (int, str), f"{field}[{i}]", source)


def validate_plan(raw: Dict[str, Any], source: str = "plan",
                  found: Optional[List[tuple]] = None) -> Dict[str, Any]:
    """Return the effective plan (defaults filled in); one :class:`NNKDError` lists every bad field.

    ``found``: (field, problem) pairs already known (e.g. duplicate keys in the file), refused together
    with the rest. Non-finite numbers are refused anywhere, also inside ``params``.
    """
    p = Problems(source, found)
    for field, msg in strict_json.nonfinite_problems(raw):
        p.add(field, msg)
    if not isinstance(raw, dict):
        raise NNKDError(f"{source}: a plan must be a JSON object, got {type(raw).__name__}")
    _check_keys(raw, DEFAULTS, "", source, p)
    plan = _merge(DEFAULTS, {k: v for k, v in raw.items() if k in DEFAULTS})
    with p.check():
        _typed(plan["name"], str, "name", source)
    with p.check():
        _typed(plan["description"], str, "description", source)
    with p.check():
        _typed(plan["trainers"], list, "trainers", source)
        for i, t in enumerate(plan["trainers"]):
            _typed(t, str, f"trainers[{i}]", source)
        if len(set(plan["trainers"])) != len(plan["trainers"]):
            _fail("trainers", f"trainers listed twice: {plan['trainers']}", source)
    with p.check():
        _typed(plan["seed"], int, "seed", source, allow_none=True)

    with p.check():
        _check_keys(plan["student"], DEFAULTS["student"], "student", source, p)
        student = plan["student"] = _merge(DEFAULTS["student"], plan["student"])
        with p.check():
            _channels(student["channels"], "student.channels", source)
        with p.check():
            _typed(student["train_fraction"], (int, float), "student.train_fraction", source)
            if not 0 < student["train_fraction"] <= 1:
                _fail("student.train_fraction", "must be within (0, 1]", source)
        if not (isinstance(student["init_from_teacher"], bool) or student["init_from_teacher"] == "auto"):
            _fail("student.init_from_teacher", f"must be one of {', '.join(map(json.dumps, INIT_FROM_TEACHER))}",
                  source)

    with p.check():
        _check_keys(plan["network"], DEFAULTS["network"], "network", source, p)
        net = plan["network"] = _merge(DEFAULTS["network"], plan["network"])
        with p.check():
            _typed(net["cbam"], bool, "network.cbam", source)
        for k in ("cbam_reduction", "head_hidden"):
            with p.check():
                _typed(net[k], int, f"network.{k}", source)
                if net[k] < 1:
                    _fail(f"network.{k}", "must be >= 1", source)
        with p.check():
            _typed(net["head_dropout"], (int, float), "network.head_dropout", source)
            if not 0 <= net["head_dropout"] < 1:
                _fail("network.head_dropout", "must be within [0, 1)", source)
        with p.check():
            if net["head_stages"] != "all":
                _typed(net["head_stages"], int, "network.head_stages", source)
                if net["head_stages"] < 1:
                    _fail("network.head_stages", 'must be >= 1 or "all"', source)
        with p.check():
            if net["cbam_mode"] not in CBAM_MODES:
                _fail("network.cbam_mode", "must be one of " + ", ".join(f'"{m}"' for m in CBAM_MODES), source)
        with p.check():
            if net["head_pool"] not in ("avg", "avgmax"):
                _fail("network.head_pool", 'must be "avg" or "avgmax"', source)
        with p.check():
            _typed(net["head_standardize"], bool, "network.head_standardize", source)
        with p.check():
            _typed(net["head_lr_scale"], (int, float), "network.head_lr_scale", source)
            if net["head_lr_scale"] <= 0:
                _fail("network.head_lr_scale", "must be > 0", source)

    with p.check():
        _check_keys(plan["classification"], DEFAULTS["classification"], "classification", source, p)
        cls = plan["classification"] = _merge(DEFAULTS["classification"], plan["classification"])
        with p.check():
            _typed(cls["loss"], str, "classification.loss", source)
        with p.check():
            _typed(cls["params"], dict, "classification.params", source)
        for k in ("weight", "seg_weight"):
            with p.check():
                _weight(cls[k], f"classification.{k}", source)
        with p.check():
            _typed(cls["balanced_sampling"], bool, "classification.balanced_sampling", source)
        if cls["select_best_by"] not in SELECT_BEST:
            _fail("classification.select_best_by", f"must be one of {', '.join(SELECT_BEST)}", source)

    with p.check():
        md = plan["modality_dropout"]
        if md is not None:
            _check_keys(md, MODALITY_DROPOUT_DEFAULTS, "modality_dropout", source, p)
            md = plan["modality_dropout"] = _merge(MODALITY_DROPOUT_DEFAULTS, md)
            with p.check():
                _typed(md["p"], (int, float), "modality_dropout.p", source)
                if not 0 <= md["p"] <= 1:
                    _fail("modality_dropout.p", "must be within [0, 1]", source)
            with p.check():
                _channels(md["keep"], "modality_dropout.keep", source)
            _channels(md["droppable"], "modality_dropout.droppable", source)

    with p.check():
        _typed(plan["augmentation"], list, "augmentation", source)
        for i, a in enumerate(plan["augmentation"]):
            with p.check():
                _check_keys(a, {"name", "params"}, f"augmentation[{i}]", source, p)
                a.setdefault("params", {})
                with p.check():
                    _typed(a.get("name"), str, f"augmentation[{i}].name", source)
                _typed(a["params"], dict, f"augmentation[{i}].params", source)

    with p.check():
        _typed(plan["teachers"], list, "teachers", source)
        names = set()
        for i, t in enumerate(plan["teachers"]):
            with p.check():
                names.add(_validate_teacher(plan, i, names, source, p))

    with p.check():
        _typed(plan["losses"], list, "losses", source)
        for i, loss in enumerate(plan["losses"]):
            f = f"losses[{i}]"
            with p.check():
                _check_keys(loss, LOSS_DEFAULTS, f, source, p)
                loss = plan["losses"][i] = _merge(LOSS_DEFAULTS, loss)
                with p.check():
                    _typed(loss["name"], str, f"{f}.name", source)
                with p.check():
                    _weight(loss["weight"], f"{f}.weight", source)
                _typed(loss["params"], dict, f"{f}.params", source)

    with p.check():
        _check_keys(plan["validation"], DEFAULTS["validation"], "validation", source, p)
        plan["validation"] = _merge(DEFAULTS["validation"], plan["validation"])
        for k in DEFAULTS["validation"]:
            with p.check():
                _typed(plan["validation"].get(k), bool, f"validation.{k}", source)
    with p.check():
        _check_keys(plan["loss_optimizer"], DEFAULTS["loss_optimizer"], "loss_optimizer", source, p)
        opt = plan["loss_optimizer"] = _merge(DEFAULTS["loss_optimizer"], plan["loss_optimizer"])
        with p.check():
            if opt["name"] not in LOSS_OPTIMIZERS:
                _fail("loss_optimizer.name", f"must be one of {', '.join(map(json.dumps, LOSS_OPTIMIZERS))}", source)
        for k in ("lr", "weight_decay"):
            with p.check():
                _typed(opt[k], (int, float), f"loss_optimizer.{k}", source)
                if opt[k] < 0 or (k == "lr" and opt[k] == 0):
                    _fail(f"loss_optimizer.{k}", "must be > 0" if k == "lr" else "must be >= 0", source)
    with p.check():
        _check_keys(plan["schedule"], SCHEDULE_KEYS, "schedule", source, p)
        for k, v in plan["schedule"].items():
            if k not in SCHEDULE_KEYS:
                continue
            with p.check():
                # a learning rate may be written as an integer ("initial_lr": 1); counts must be integers
                _typed(v, (int, float) if k == "initial_lr" else int, f"schedule.{k}", source)
                if v <= 0:
                    _fail(f"schedule.{k}", "must be > 0", source)
    p.refuse()
    return plan


def _validate_teacher(plan: Dict[str, Any], i: int, names: set, source: str, p: Problems) -> str:
    """Check ``plan["teachers"][i]`` (filling in its defaults); returns its name."""
    f = f"teachers[{i}]"
    _check_keys(plan["teachers"][i], TEACHER_DEFAULTS, f, source, p)
    t = plan["teachers"][i] = _merge(TEACHER_DEFAULTS, plan["teachers"][i])
    if t["name"] is None:
        t["name"] = f"teacher{i}"
    with p.check():
        _typed(t["name"], str, f"{f}.name", source)
        if t["name"] in names:
            _fail(f"{f}.name", f"duplicate teacher name {t['name']!r}", source)
    with p.check():
        _typed(t["loader"], str, f"{f}.loader", source)
    with p.check():
        _typed(t["model_folder"], str, f"{f}.model_folder", source)
    with p.check():
        _typed(t["fold"], (int, str), f"{f}.fold", source)
        if isinstance(t["fold"], str) and t["fold"] != "all":
            _fail(f"{f}.fold", "must be an integer or 'all'", source)
    with p.check():
        _typed(t["checkpoint"], str, f"{f}.checkpoint", source)
    with p.check():
        _channels(t["channels"], f"{f}.channels", source)
    with p.check():
        _channel_map(t["channel_map"], f"{f}.channel_map", source)
        if t["channel_map"] is not None and t["channels"] is not None:
            _fail(f"{f}.channel_map", "give either 'channels' or 'channel_map', not both", source)
    with p.check():
        _typed(t["sha256"], str, f"{f}.sha256", source, allow_none=True)
        if t["sha256"] is not None:
            if not re.fullmatch(r"[0-9a-fA-F]{64}", t["sha256"]):
                _fail(f"{f}.sha256", "must be 64 hexadecimal digits (`sha256sum FILE`)", source)
            t["sha256"] = t["sha256"].lower()
    with p.check():
        _typed(t["paired"], bool, f"{f}.paired", source)
    with p.check():
        _typed(t["dataset"], (int, str), f"{f}.dataset", source, allow_none=True)
        if t["paired"] is False and t["dataset"] is None:
            _fail(f"{f}.dataset", "an unpaired teacher needs the dataset its data comes from", source)
    with p.check():
        _weight(t["weight"], f"{f}.weight", source)
        if t["weight"] == 0:  # the fused teacher distribution is a weighted mean: all-zero weights divide by 0
            _fail(f"{f}.weight", "must be > 0 (the teacher's weight in multi-teacher fusion)", source)
    return t["name"] if isinstance(t["name"], str) else ""


def _channel_map(value: Any, field: str, source: str) -> None:
    """``null`` or {teacher channel name: student channel name or index}."""
    if value is None:
        return
    _typed(value, dict, field, source)
    if not value:
        _fail(field, "must map at least one teacher channel", source)
    for k, v in value.items():
        _typed(v, (int, str), f"{field}.{k}", source)


def check_registered_names(plan: Dict[str, Any], source: str = "plan") -> None:
    """Fail early (before training) on loss, transform or teacher-loader names nobody registered;
    one NNKDError lists every unknown name."""
    from nnkd.hooks import SINGULAR, registry

    p = Problems(source)

    def check(kind: str, name: str, field: str) -> None:
        known = registry(kind)
        if name not in known:
            p.add(field, f"unknown {SINGULAR[kind]} {name!r}; known: {', '.join(sorted(known)) or '(none)'}")

    for i, t in enumerate(plan["trainers"]):
        check("trainers", t, f"trainers[{i}]")
    check("losses", plan["classification"]["loss"], "classification.loss")
    for i, loss in enumerate(plan["losses"]):
        check("losses", loss["name"], f"losses[{i}].name")
    for i, a in enumerate(plan["augmentation"]):
        check("transforms", a["name"], f"augmentation[{i}].name")
    for i, t in enumerate(plan["teachers"]):
        check("teacher_loaders", t["loader"], f"teachers[{i}].loader")
    p.refuse()


def shipped_plans() -> Dict[str, str]:
    """``{name: path}`` of the plans shipped with the package, sorted by name."""
    return {f[:-5]: os.path.join(PLANS_DIR, f) for f in sorted(os.listdir(PLANS_DIR)) if f.endswith(".json")}


def plan_path(value: str) -> str:
    """A plan file path, or the name of a shipped plan (``react_kd`` or ``react_kd.json``) -> its path.

    An existing file wins over a shipped plan of the same name."""
    if os.path.isfile(value):
        return value
    shipped = shipped_plans()
    name = value[:-5] if value.endswith(".json") else value
    if "/" not in value and os.sep not in value and name in shipped:
        return shipped[name]
    raise NNKDError(f"distillation plan not found: {value} is neither a file nor the name of a shipped plan "
                    f"({', '.join(shipped)}; `nnkd plans` describes them)")


def merge_over(defaults: Optional[Dict[str, Any]], raw: Dict[str, Any]) -> Dict[str, Any]:
    """``raw`` over ``defaults``: objects merged key by key, everything else (lists, values) replaced."""
    merged = copy.deepcopy(defaults or {})
    for key, value in raw.items():
        base = merged.get(key)
        merged[key] = dict(base, **value) if isinstance(base, dict) and isinstance(value, dict) \
            else copy.deepcopy(value)
    return merged


def _read(path: str) -> tuple:
    """(JSON object, problems found while reading: duplicate keys) of a plan file or shipped plan name."""
    path = plan_path(path)
    raw, found = strict_json.read(path, "distillation plan")  # duplicate keys, NaN/Infinity: refused by the caller
    if not isinstance(raw, dict):
        raise NNKDError(f"{path}: a plan must be a JSON object")
    return raw, found


def read_plan_file(path: str) -> Dict[str, Any]:
    """A plan file's JSON object (not validated, but read strictly: a duplicate key is refused);
    ``path`` may name a shipped plan."""
    raw, found = _read(path)
    if found:
        raise NNKDError(strict_json.format_problems(plan_path(path), found))
    return raw


def load_plan(path: str, defaults: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Read and validate a plan file (or shipped plan name) over ``defaults`` (see :func:`merge_over`);
    one refusal lists every problem, those found while reading included."""
    raw, found = _read(path)
    return validate_plan(merge_over(defaults, raw), source=plan_path(path), found=found)


def resolve_plan(fold_folder: Optional[str], preprocessed_folder: Optional[str],
                 defaults: Optional[Dict[str, Any]], continuing: bool) -> tuple[Dict[str, Any], str]:
    """Find the plan for a trainer (order in the module docstring); returns (plan, source)."""
    env = os.environ.get(PLAN_ENV) or None
    if env is not None:
        env = plan_path(env)
    previous = os.path.join(fold_folder, PLAN_FILENAME) if fold_folder else None
    if previous and os.path.isfile(previous) and (continuing or env is None):
        plan = load_plan(previous)
        if continuing and env is not None:
            requested = load_plan(env, defaults)
            if requested != plan:
                resume_changes(plan, requested, previous, env)  # refuses fields that may not change
                return requested, env
        return plan, previous
    if env is not None:
        return load_plan(env, defaults), env
    if preprocessed_folder:
        candidate = os.path.join(preprocessed_folder, PLAN_FILENAME)
        if os.path.isfile(candidate):
            return load_plan(candidate, defaults), candidate
    return validate_plan(copy.deepcopy(defaults or {}), "built-in defaults"), "built-in defaults"


def _resumable(field: str) -> bool:
    """Fields a continued run (--c) may change: step size, epochs and schedule, loss weights, description."""
    return (field == "description" or field.split(".")[0] in ("schedule", "validation")
            or field in ("classification.weight", "classification.seg_weight")
            or re.fullmatch(r"(losses|teachers)\[\d+\]\.weight", field) is not None)


def plan_differences(old: Any, new: Any, field: str = "") -> List[str]:
    """Dotted names of every field whose value differs between two effective plans."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(old) + [k for k in new if k not in old]:
            sub = f"{field}.{k}" if field else str(k)
            out += plan_differences(old.get(k, _ABSENT), new.get(k, _ABSENT), sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in plan_differences(a, b, f"{field}[{i}]")]
    return [] if old == new else [field]


_ABSENT = object()


def resume_changes(old: Dict[str, Any], new: Dict[str, Any], old_source: str, new_source: str) -> List[str]:
    """``field: old -> new`` for each change a continued run may make; :class:`NNKDError` naming every
    other differing field (the run would otherwise continue as a different experiment)."""
    fields = plan_differences(old, new)
    refused = [f for f in fields if not _resumable(f)]
    if refused:
        raise NNKDError(
            f"--c (or --val) continues the run trained with {old_source}, but {new_source} differs in field(s) "
            f"that cannot change when continuing: {', '.join(refused)}. Only the schedule (schedule.initial_lr, "
            f"schedule.num_epochs, ...), the validation (validation.*), loss weights (classification.weight, "
            f"classification.seg_weight, "
            f"losses[i].weight, teachers[i].weight) and the description may change; unset {PLAN_ENV} to continue "
            f"with the earlier plan, or start a new run without --c.")
    return [f"{f}: {json.dumps(_get(old, f))} -> {json.dumps(_get(new, f))}" for f in fields]


def _get(plan: Dict[str, Any], field: str) -> Any:
    value: Any = plan
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", field):
        if part.startswith("["):
            value = value[int(part[1:-1])]
        elif isinstance(value, dict):
            value = value.get(part, _ABSENT)
        if value is _ABSENT:
            return None
    return value
