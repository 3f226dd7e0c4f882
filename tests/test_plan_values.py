"""Plan values: non-finite numbers, negative weights, duplicate keys and integer learning rates;
every problem of a plan refused at once, naming the file and field."""
import json
import math

import pytest

from nnkd.errors import NNKDError
from nnkd.plan import check_registered_names, load_plan, resolve_plan, validate_plan


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _refused(path, folder):
    """The refusal's message of load_plan(path); the folder's files must be byte-identical."""
    before = _snapshot(folder)
    with pytest.raises(NNKDError) as e:
        load_plan(str(path))
    assert _snapshot(folder) == before
    return str(e.value)


def test_every_non_finite_and_negative_value_is_named_in_one_refusal(tmp_path):
    plan = tmp_path / "p.json"
    plan.write_text("""{
      "schedule": {"initial_lr": NaN, "num_epochs": 2},
      "classification": {"weight": Infinity, "seg_weight": -0.5},
      "losses": [{"name": "logit_kd", "weight": NaN, "params": {"temperature": -Infinity}},
                 {"name": "logit_kd", "weight": -1}],
      "teachers": [{"model_folder": "a", "weight": -5}, {"model_folder": "b", "weight": 1e999}]
    }""")
    msg = _refused(plan, tmp_path)
    assert msg.startswith(f"{plan}: ")
    expected = {
        "schedule.initial_lr": "got NaN",
        "classification.weight": "got Infinity",
        "classification.seg_weight": "must be >= 0, got -0.5",
        "losses[0].weight": "got NaN",
        "losses[0].params.temperature": "got -Infinity",
        "losses[1].weight": "must be >= 0, got -1",
        "teachers[0].weight": "must be >= 0, got -5",
        "teachers[1].weight": "got Infinity",  # 1e999 overflows to inf in Python's reader
    }
    lines = msg.splitlines()[1:]
    assert len(lines) == len(expected), msg  # each problem once
    for field, text in expected.items():
        assert any(f"field '{field}'" in line and text in line for line in lines), (field, msg)


def test_non_finite_values_from_python_defaults_are_refused_too():
    with pytest.raises(NNKDError, match=r"field 'schedule.initial_lr': must be a finite number, got NaN"):
        validate_plan({"schedule": {"initial_lr": math.nan}}, source="trainer defaults")


def test_an_integer_learning_rate_is_a_number():
    plan = validate_plan({"schedule": {"initial_lr": 1, "num_epochs": 3}})
    assert plan["schedule"]["initial_lr"] == 1
    with pytest.raises(NNKDError, match=r"schedule.num_epochs': must be an integer, got 1.5"):
        validate_plan({"schedule": {"num_epochs": 1.5}})


def test_zero_weights_are_allowed_except_a_teachers():
    plan = validate_plan({"classification": {"weight": 0, "seg_weight": 0.0},
                          "losses": [{"name": "logit_kd", "weight": 0}],
                          "teachers": [{"model_folder": "a", "weight": 1}]})
    assert plan["losses"][0]["weight"] == 0 and plan["classification"]["seg_weight"] == 0
    # a teacher's weight divides in multi-teacher fusion (weighted mean): 0 is refused, by name
    with pytest.raises(NNKDError, match=r"teachers\[0\]\.weight.*must be > 0"):
        validate_plan({"teachers": [{"model_folder": "a", "weight": 0}]})


def test_duplicate_keys_are_named_with_the_file_and_refused_with_the_other_problems(tmp_path):
    plan = tmp_path / "dup.json"
    plan.write_text('{"name": "a", "schedule": {"initial_lr": 0.01, "initial_lr": 0.1}, "name": "b",'
                    ' "losses": [{"name": "logit_kd", "weight": 1, "weight": 2}], "seed": "x"}')
    msg = _refused(plan, tmp_path)
    assert msg.startswith(f"{plan}: 4 problems:")
    assert "field 'name': key given more than once" in msg
    assert "field 'schedule.initial_lr': key given more than once" in msg
    assert "field 'losses[0].weight': key given more than once" in msg
    assert "field 'seed': must be an integer" in msg


def test_several_unknown_keys_and_bad_fields_are_all_listed():
    with pytest.raises(NNKDError) as e:
        validate_plan({"nmae": 1, "schedule": {"num_epoch": 1, "num_epochs": 0},
                       "network": {"head_dropout": 1.0, "cbam": 1}, "student": {"train_fraction": 2}},
                      source="p.json")
    msg = str(e.value)
    for field in ("nmae", "schedule.num_epoch", "schedule.num_epochs", "network.head_dropout", "network.cbam",
                  "student.train_fraction"):
        assert f"field '{field}'" in msg, (field, msg)
    assert msg.startswith("p.json: 6 problems:")


def test_a_single_problem_keeps_the_one_line_form():
    with pytest.raises(NNKDError) as e:
        validate_plan({"losses": [{"name": "x", "weight": -2}]}, source="p.json")
    assert str(e.value) == "p.json: field 'losses[0].weight': must be >= 0, got -2"


def test_unregistered_names_are_all_listed():
    plan = validate_plan({"classification": {"loss": "cee"}, "losses": [{"name": "logit_kdd"}],
                          "augmentation": [{"name": "nope"}]})
    with pytest.raises(NNKDError) as e:
        check_registered_names(plan, "p.json")
    msg = str(e.value)
    assert "classification.loss" in msg and "losses[0].name" in msg and "augmentation[0].name" in msg


def test_teacher_pin_and_channel_map_fields_are_validated():
    good = validate_plan({"teachers": [{"model_folder": "a", "sha256": "AB" * 32,
                                        "channel_map": {"MRI": "FDG", "CT": 0}}]})
    assert good["teachers"][0]["sha256"] == "ab" * 32  # normalised to lower case, as sha256sum prints it
    with pytest.raises(NNKDError) as e:
        validate_plan({"teachers": [{"model_folder": "a", "sha256": "123", "channels": ["CT"],
                                     "channel_map": {"CT": 1.5}}]}, source="p.json")
    msg = str(e.value)
    assert "teachers[0].sha256': must be 64 hexadecimal digits" in msg
    assert "teachers[0].channel_map.CT': must be an integer or a string" in msg


def test_resume_with_a_non_finite_plan_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    fold = tmp_path / "fold_0"
    fold.mkdir()
    (fold / "nnkd_plan.json").write_text(json.dumps(validate_plan({"schedule": {"initial_lr": 0.01}})))
    bad = tmp_path / "bad.json"
    bad.write_text('{"schedule": {"initial_lr": Infinity}}')
    monkeypatch.setenv("NNKD_PLAN", str(bad))
    before = _snapshot(fold)
    with pytest.raises(NNKDError, match=r"bad.json: field 'schedule.initial_lr': must be a finite number, got Infinity"):
        resolve_plan(str(fold), None, {}, continuing=False)
    assert _snapshot(fold) == before
