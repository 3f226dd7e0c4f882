import json
import os

import pytest

from nnkd.channels import resolve_channels
from nnkd.errors import NNKDError
from nnkd.plan import (DEFAULTS, PLAN_ENV, check_registered_names, load_plan, plan_path, resolve_plan, shipped_plans,
                       validate_plan)


def test_defaults_fill_in_and_round_trip():
    plan = validate_plan({"name": "x", "schedule": {"num_epochs": 2}})
    assert plan["network"] == DEFAULTS["network"]
    assert plan["schedule"] == {"num_epochs": 2}
    assert validate_plan(json.loads(json.dumps(plan))) == plan


@pytest.mark.parametrize("raw, field", [
    ({"nmae": "x"}, "nmae"),
    ({"schedule": {"num_epoch": 3}}, "schedule.num_epoch"),
    ({"validation": {"segmentation": "no"}}, "validation.segmentation"),
    ({"validation": {"mirror": False}}, "validation.mirror"),
    ({"schedule": {"num_epochs": 0}}, "schedule.num_epochs"),
    ({"schedule": {"num_epochs": 1.5}}, "schedule.num_epochs"),
    ({"classification": {"weight": "1"}}, "classification.weight"),
    ({"classification": {"select_best_by": "loss"}}, "classification.select_best_by"),
    ({"modality_dropout": {"p": 1.5}}, "modality_dropout.p"),
    ({"teachers": [{"fold": 0}]}, "teachers[0].model_folder"),
    ({"teachers": [{"model_folder": "a", "paired": False}]}, "teachers[0].dataset"),
    ({"teachers": [{"model_folder": "a", "fold": "best"}]}, "teachers[0].fold"),
    ({"teachers": [{"model_folder": "a", "name": "t"}, {"model_folder": "b", "name": "t"}]}, "teachers[1].name"),
    ({"losses": [{"name": "logit_kd", "wieght": 1}]}, "losses[0].wieght"),
    ({"student": {"channels": [0, 1.5]}}, "student.channels[1]"),
    ({"network": {"cbam": 1}}, "network.cbam"),
    ({"loss_optimizer": {"name": "adam"}}, "loss_optimizer.name"),
    ({"loss_optimizer": {"name": "adamw", "lr": 0}}, "loss_optimizer.lr"),
    ({"loss_optimizer": {"weight_decay": -1}}, "loss_optimizer.weight_decay"),
    ({"loss_optimizer": {"betas": [0.9, 0.99]}}, "loss_optimizer.betas"),
    ({"trainers": "nnKDTrainerREACT"}, "trainers"),
    ({"trainers": ["nnKDTrainerREACT", 3]}, "trainers[1]"),
    ({"trainers": ["nnKDTrainerCls", "nnKDTrainerCls"]}, "trainers"),
])
def test_bad_fields_are_named(raw, field):
    with pytest.raises(NNKDError) as e:
        validate_plan(raw, source="p.json")
    assert f"p.json: field '{field}'" in str(e.value)


def test_unknown_registered_names_list_known():
    plan = validate_plan({"losses": [{"name": "logit_kdd"}]})
    with pytest.raises(NNKDError) as e:
        check_registered_names(plan, "p.json")
    msg = str(e.value)
    assert "losses[0].name" in msg and "'logit_kdd'" in msg and "logit_kd" in msg.split("known:")[1]
    with pytest.raises(NNKDError, match=r"p.json: field 'trainers\[0\]': unknown trainer 'nnKDTrainerReact'; "
                                        r"known: .*nnKDTrainerREACT"):
        check_registered_names(validate_plan({"trainers": ["nnKDTrainerReact"]}), "p.json")


def test_load_plan_errors(tmp_path):
    with pytest.raises(NNKDError, match="not found"):
        load_plan(str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(NNKDError, match="bad.json: not valid JSON"):
        load_plan(str(bad))


def test_resolution_order(tmp_path, monkeypatch):
    fold, pre = tmp_path / "fold_0", tmp_path / "pre"
    fold.mkdir()
    pre.mkdir()
    monkeypatch.delenv(PLAN_ENV, raising=False)
    plan, src = resolve_plan(str(fold), str(pre), {"name": "builtin"}, continuing=False)
    assert (plan["name"], src) == ("builtin", "built-in defaults")
    (pre / "nnkd_plan.json").write_text(json.dumps({"name": "dataset"}))
    assert resolve_plan(str(fold), str(pre), None, False)[0]["name"] == "dataset"
    env_plan = tmp_path / "env.json"
    env_plan.write_text(json.dumps({"name": "env"}))
    monkeypatch.setenv(PLAN_ENV, str(env_plan))
    assert resolve_plan(str(fold), str(pre), None, False)[0]["name"] == "env"
    # an earlier run of this fold: authoritative for --c and (without NNKD_PLAN) for --val
    (fold / "nnkd_plan.json").write_text(json.dumps(validate_plan({"name": "previous"})))
    assert resolve_plan(str(fold), str(pre), None, False)[0]["name"] == "env"  # fresh run: env wins
    with pytest.raises(NNKDError, match="differs in field\\(s\\) that cannot change when continuing: name\\."):
        resolve_plan(str(fold), str(pre), None, continuing=True)
    monkeypatch.delenv(PLAN_ENV)
    assert resolve_plan(str(fold), str(pre), None, continuing=True)[0]["name"] == "previous"
    assert resolve_plan(str(fold), str(pre), None, continuing=False)[0]["name"] == "previous"


def test_resolve_channels():
    names = {"0": "CT", "1": "FDG", "2": "ACE"}
    assert resolve_channels(None, names, "f") == [0, 1, 2]
    assert resolve_channels(["CT", 2], names, "f") == [0, 2]
    with pytest.raises(NNKDError, match="teachers\\[0\\].channels: channel 'PET' does not exist.*0=CT"):
        resolve_channels(["PET"], names, "teachers[0].channels")
    with pytest.raises(NNKDError, match="channel 3 does not exist"):
        resolve_channels([3], names, "f")


def test_plan_file_merges_objects_over_trainer_defaults_and_replaces_lists(tmp_path):
    defaults = {"student": {"init_from_teacher": "auto"}, "classification": {"loss": "focal", "weight": 0.0},
                "losses": [{"name": "lskd", "weight": 1.0}]}
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"student": {"train_fraction": 0.1}, "classification": {"weight": 2.0},
                                "losses": [{"name": "image_kd"}]}))
    plan = load_plan(str(path), defaults)
    assert plan["student"] == {"channels": None, "train_fraction": 0.1, "init_from_teacher": "auto"}
    assert (plan["classification"]["loss"], plan["classification"]["weight"]) == ("focal", 2.0)
    assert [loss["name"] for loss in plan["losses"]] == ["image_kd"]


@pytest.mark.parametrize("student, field", [({"train_fraction": 0}, "student.train_fraction"),
                                            ({"train_fraction": 1.5}, "student.train_fraction"),
                                            ({"init_from_teacher": "yes"}, "student.init_from_teacher"),
                                            ({"init_from_teacher": 1}, "student.init_from_teacher")])
def test_student_fields_are_validated(student, field):
    with pytest.raises(NNKDError, match=f"field '{field}'"):
        validate_plan({"student": student}, "p.json")


def test_plan_path_takes_a_shipped_plan_name_or_a_file(tmp_path, monkeypatch):
    shipped = shipped_plans()
    assert shipped["react_kd"].endswith(os.path.join("nnkd", "plans", "react_kd.json"))
    assert plan_path("react_kd") == plan_path("react_kd.json") == shipped["react_kd"]
    own = tmp_path / "react_kd"
    own.write_text("{}")
    assert plan_path(str(own)) == str(own)  # an existing file wins over the shipped plan
    monkeypatch.chdir(tmp_path)
    assert plan_path("react_kd") == "react_kd"
    with pytest.raises(NNKDError) as e:
        plan_path("reakt_kd")
    assert "reakt_kd is neither a file nor the name of a shipped plan" in str(e.value) and "react_kd" in str(e.value)
    with pytest.raises(NNKDError, match="neither a file"):
        plan_path("sub/react_kd")  # a path that does not exist is not a name


def test_nnkd_plan_names_a_shipped_plan(tmp_path, monkeypatch):
    from nnkd.hooks import lookup

    monkeypatch.setenv(PLAN_ENV, "react_kd")
    plan, source = resolve_plan(str(tmp_path / "fold_0"), None, lookup("trainers", "nnKDTrainerREACT").plan_defaults,
                                continuing=False)
    assert source == shipped_plans()["react_kd"]
    assert plan["name"] == "react_kd" and plan["trainers"] == ["nnKDTrainerREACT"]
    assert [t["name"] for t in plan["teachers"]] == ["structure_function", "dose_aware"]
    # the method comes from the trainer: focal task loss, logit KD and region-graph KD
    assert plan["classification"]["loss"] == "focal"
    assert [(loss["name"], loss["weight"]) for loss in plan["losses"]] == [("logit_kd", 0.7), ("region_graph", 1.0)]


def test_continuing_with_a_corrected_plan(tmp_path, monkeypatch):
    """--c accepts a plan changing only schedule and loss weights, logs each change, refuses the rest by name."""
    from nnkd.plan import plan_differences, resume_changes

    fold = tmp_path / "fold_0"
    fold.mkdir()
    base = {"name": "run", "schedule": {"initial_lr": 0.01, "num_epochs": 5},
            "losses": [{"name": "logit_kd", "weight": 0.5}, {"name": "at"}],
            "teachers": [{"name": "t", "model_folder": "/m"}]}
    previous = fold / "nnkd_plan.json"
    previous.write_text(json.dumps(validate_plan(base)))
    before = previous.read_bytes()
    corrected = json.loads(json.dumps(base))
    corrected["schedule"] = {"initial_lr": 0.001, "num_epochs": 8, "save_every": 2}
    corrected["losses"][0]["weight"] = 0.1
    corrected["teachers"][0]["weight"] = 2
    corrected["classification"] = {"weight": 0.5, "seg_weight": 0}
    env = tmp_path / "fixed.json"
    env.write_text(json.dumps(corrected))
    monkeypatch.setenv(PLAN_ENV, str(env))
    plan, src = resolve_plan(str(fold), None, None, continuing=True)
    assert src == str(env) and plan["schedule"]["initial_lr"] == 0.001 and plan["losses"][0]["weight"] == 0.1
    changes = resume_changes(validate_plan(base), plan, "a", "b")
    assert "schedule.initial_lr: 0.01 -> 0.001" in changes and "losses[0].weight: 0.5 -> 0.1" in changes
    assert "schedule.save_every: null -> 2" in changes and "classification.seg_weight: 1.0 -> 0" in changes
    assert len(changes) == 7, changes

    bad = json.loads(json.dumps(corrected))
    bad["losses"][1]["params"] = {"p": 3}
    bad["network"] = {"head_hidden": 64}
    bad["student"] = {"channels": ["CT"]}
    env.write_text(json.dumps(bad))
    with pytest.raises(NNKDError) as e:
        resolve_plan(str(fold), None, None, continuing=True)
    msg = str(e.value)
    assert str(previous) in msg and str(env) in msg
    assert "cannot change when continuing: student.channels, network.head_hidden, losses[1].params.p." in msg
    assert previous.read_bytes() == before
    # a loss added or removed changes the list itself
    assert plan_differences({"losses": [1]}, {"losses": [1, 2]}) == ["losses"]
