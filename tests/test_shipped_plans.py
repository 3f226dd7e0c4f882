"""The plans shipped with the package: valid, for registered trainers, one source of truth per method."""
import json
from types import SimpleNamespace

import pytest

from conftest import nnkd_cli
from nnkd.errors import NNKDError
from nnkd.hooks import lookup
from nnkd.plan import check_registered_names, load_plan, merge_over, read_plan_file, shipped_plans, validate_plan

SHIPPED = shipped_plans()


def test_every_shipped_plan_is_there_and_names_its_trainers():
    assert {"react_kd", "pagkd", "pagkd_pro_only", "comoto", "cls_teacher"} <= set(SHIPPED)
    for name, path in SHIPPED.items():
        raw = read_plan_file(path)
        assert raw["name"] == name, path
        assert raw.get("trainers"), f"{path}: names no trainer"
        assert raw.get("description") and "\n" not in raw["description"], f"{path}: needs a one-line description"
        for trainer in raw["trainers"]:
            plan = load_plan(path, lookup("trainers", trainer).plan_defaults)
            check_registered_names(plan, path)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_plan_repeats_nothing_its_trainer_sets(name):
    """The trainer's plan_defaults are the method; a plan holds only what differs (the one source of truth)."""
    raw = read_plan_file(SHIPPED[name])
    for trainer in raw["trainers"]:
        defaults = validate_plan(merge_over(lookup("trainers", trainer).plan_defaults, {}), trainer)
        for key, value in raw.items():
            if key in ("name", "description", "trainers", "seed"):
                continue
            if isinstance(value, dict) and isinstance(defaults[key], dict):
                same = sorted(k for k, v in value.items() if defaults[key].get(k) == v)
                assert not same, f"{name}.json repeats {trainer}'s {key}.{same}"
            else:
                assert value != defaults[key], f"{name}.json repeats {trainer}'s {key}"


def test_quality_benchmark_trains_each_plan_with_a_trainer_it_names():
    from nnkd.bench.catalogue import BENCHMARKS

    for bench in BENCHMARKS.values():
        for m in bench.methods:
            assert m.trainer in read_plan_file(m.plan)["trainers"], (bench.key, m.key)


def test_quality_method_plan_carries_the_trainers_losses():
    from nnkd.bench.catalogue import UNPAIRED2D
    from nnkd.bench.quality import method_plan

    m = next(m for m in UNPAIRED2D.methods if m.key == "pro_only")
    sched = UNPAIRED2D.quick
    plan = method_plan(UNPAIRED2D, m, 0, sched, {"teacher": "/t"}, 941)
    # the loss comes from nnKDTrainerPaGKDProOnly's defaults, its warm-up capped to this schedule
    assert [loss["name"] for loss in plan["losses"]] == ["gkd_pro"]
    assert plan["losses"][0]["params"]["warmup_epochs"] == min(5, sched.epochs // 5)
    assert plan["losses"][0]["params"]["w_pro"] == 0.1
    assert lookup("trainers", m.trainer).plan_defaults["losses"][0]["params"]["warmup_epochs"] == 5  # not mutated


def _problems(trainer: str, plan: dict):
    """plan_problems of a trainer instance that holds only its plan (no nnU-Net set-up)."""
    cls = lookup("trainers", trainer)
    fake = cls.__new__(cls)
    fake.kd_plan = validate_plan(plan)
    return fake.plan_problems()


def test_plan_for_another_trainer_is_refused_naming_both():
    problems = _problems("nnKDTrainerPaGKD", read_plan_file(SHIPPED["pagkd_pro_only"]))
    assert problems == ["field 'trainers': the plan is for nnKDTrainerPaGKDProOnly, not for nnKDTrainerPaGKD"]
    assert _problems("nnKDTrainerPaGKDProOnly", read_plan_file(SHIPPED["pagkd_pro_only"])) == []


def test_distillation_plan_on_a_trainer_that_does_not_distil_is_refused():
    plan = {"teachers": [{"model_folder": "/t"}], "losses": [{"name": "logit_kd"}],
            "student": {"init_from_teacher": "auto"}}
    problems = _problems("nnKDTrainerClsBaseline", plan)
    assert len(problems) == 2
    assert problems[0].startswith("field(s) 'teachers', 'losses': nnKDTrainerClsBaseline does not distil")
    assert problems[1] == "field 'student.init_from_teacher': nnKDTrainerClsBaseline has no teacher to start from"
    assert _problems("nnKDTrainerClsBaseline", {"classification": {"loss": "focal"}}) == []


def test_init_from_teacher_without_teachers_is_refused_on_distillation_trainers():
    problems = _problems("nnKDTrainerImPA", {"student": {"init_from_teacher": True}})
    assert problems == ["field 'student.init_from_teacher': the plan names no teacher to start from"]


def test_refusal_names_plan_source_plan_and_trainer_and_lists_every_problem():
    cls = lookup("trainers", "nnKDTrainerClsBaseline")
    fake = cls.__new__(cls)
    fake.kd_plan = load_plan(SHIPPED["react_kd"], cls.plan_defaults)
    fake.kd_plan_source = SHIPPED["react_kd"]
    with pytest.raises(NNKDError) as e:
        fake.check_plan_fits()
    lines = str(e.value).splitlines()
    assert lines[0] == (f"{SHIPPED['react_kd']}: plan 'react_kd' does not fit trainer nnKDTrainerClsBaseline "
                        f"(nothing was trained):")
    assert lines[1] == "  - field 'trainers': the plan is for nnKDTrainerREACT, not for nnKDTrainerClsBaseline"
    assert lines[2].startswith("  - field(s) 'teachers': nnKDTrainerClsBaseline does not distil") and len(lines) == 3


def test_nnkd_plans_lists_shipped_plans():
    out = nnkd_cli("plans").stdout
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip() and not line.startswith("Train")}
    assert set(SHIPPED) <= set(lines)
    react = read_plan_file(SHIPPED["react_kd"])
    assert "nnKDTrainerREACT" in lines["react_kd"] and react["description"] in lines["react_kd"]
    shown = nnkd_cli("plans", "react_kd").stdout
    assert shown.splitlines()[0] == f"# {SHIPPED['react_kd']}"
    assert json.loads(shown.split("\n", 1)[1]) == react
    p = nnkd_cli("plans", "no_such_plan", check=False)
    assert p.returncode == 2 and "no_such_plan is neither a file nor the name of a shipped plan" in p.stderr


def test_unknown_trainer_in_plan_is_refused():
    with pytest.raises(NNKDError, match=r"field 'trainers\[0\]': unknown trainer"):
        check_registered_names(validate_plan({"trainers": ["nnKDTrainerNope"]}), "p.json")
