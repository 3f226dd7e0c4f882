"""Case labels in dataset.json: import (all refusals leave files byte-identical), lookup, CLI."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from nnkd import labels as L
from nnkd.dataset_folders import dataset_name, training_case_ids
from nnkd.errors import NNKDError

NAME = "Dataset042_Toy"
CASES = [f"case_{i:03d}" for i in range(6)]


@pytest.fixture
def env(nnunet_roots):
    """A raw dataset with 6 training cases (empty image files suffice for listing) and its
    preprocessed dataset.json; the nnU-Net path variables point into tmp_path."""
    roots = nnunet_roots
    raw = roots["nnUNet_raw"] / NAME
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for c in CASES:
        for ch in range(2):
            (raw / "imagesTr" / f"{c}_{ch:04d}.nii.gz").touch()
        (raw / "labelsTr" / f"{c}.nii.gz").touch()
    doc = {"name": "Toy", "channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "tumour": 1},
           "numTraining": len(CASES), "file_ending": ".nii.gz", "zzz_custom": [1, 2]}
    (raw / "dataset.json").write_text(json.dumps(doc, indent=4))
    pre = roots["nnUNet_preprocessed"] / NAME
    pre.mkdir()
    (pre / "dataset.json").write_text(json.dumps(doc, indent=2))  # a different layout: must survive refusals too
    return {"raw": raw / "dataset.json", "pre": pre / "dataset.json", "roots": roots, "doc": doc}


def _csv(tmp_path, text: str, name: str = "labels.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _rows(pairs) -> str:
    return "case_id,label\n" + "".join(f"{c},{lab}\n" for c, lab in pairs)


GOOD = list(zip(CASES, ["G2", "G10", "G1", "G2", "G10", "G1"]))


def test_import_writes_raw_and_preprocessed(env, tmp_path):
    entry = L.import_labels("42", _csv(tmp_path, _rows(GOOD)))
    assert entry["class_names"] == ["G1", "G2", "G10"]  # natural sort, not "G1" < "G10" < "G2"
    for key in ("raw", "pre"):
        doc = json.loads(env[key].read_text())
        assert list(doc) == [*env["doc"], "nnkd"]  # every other key kept, in order
        assert {k: doc[k] for k in env["doc"]} == env["doc"]
        names, idx = L.case_labels(doc)
        assert names == ["G1", "G2", "G10"]
        assert idx == {c: names.index(lab) for c, lab in GOOD}
    assert not [p for p in os.listdir(env["raw"].parent) if p.endswith(".tmp")]


def test_import_with_given_classes_keeps_their_order_and_other_nnkd_fields(env, tmp_path):
    doc = json.loads(env["raw"].read_text())
    doc["nnkd"] = {"note": "kept", "class_names": ["old"], "case_labels": {}}
    env["raw"].write_text(json.dumps(doc))
    entry = L.import_labels(NAME, _csv(tmp_path, _rows(GOOD)), ["G10", "G2", "G1", "G99"])
    assert entry["class_names"] == ["G10", "G2", "G1", "G99"]
    stored = json.loads(env["raw"].read_text())["nnkd"]
    assert stored["note"] == "kept" and list(stored) == ["note", "class_names", "case_labels"]
    assert L.case_labels(json.loads(env["raw"].read_text()))[1]["case_001"] == 0


def test_import_keeps_file_mode(env, tmp_path):
    os.chmod(env["raw"], 0o644)
    L.import_labels(NAME, _csv(tmp_path, _rows(GOOD)))
    assert stat.S_IMODE(os.stat(env["raw"]).st_mode) == 0o644


def test_import_without_preprocessed_folder(env, tmp_path):
    os.remove(env["pre"])
    L.import_labels(NAME, _csv(tmp_path, _rows(GOOD)))
    assert "nnkd" in json.loads(env["raw"].read_text())
    assert not env["pre"].exists()


REFUSALS = {
    "empty file": ("", None, ["is empty"]),
    "header only": ("case_id,label\n", None, ["no rows"]),
    "wrong header": ("case,label\n" + "".join(f"{c},G1\n" for c in CASES), None,
                     ["'case_id'", "missing case_id"]),
    "blank ids and labels": (_rows(GOOD[:3]) + " ,G1\ncase_003, \n" + _rows(GOOD[4:]).split("\n", 1)[1], None,
                             ["line 5: blank case_id", "line 6: blank label"]),
    "wrong field count": (_rows(GOOD[:2]) + "case_002\ncase_003,G1,extra\n" + _rows(GOOD[4:]).split("\n", 1)[1],
                          None, ["line 4: 1 field(s)", "line 5: 3 field(s)"]),
    "duplicates": (_rows(GOOD + [("case_001", "G2"), ("case_004", "G1")]), None,
                   ["case_001 (lines 3, 8)", "case_004 (lines 6, 9)"]),
    "unknown cases": (_rows(GOOD + [("ghost_1", "G1"), ("ghost_2", "G2")]), None,
                      ["ghost_1 (line 8)", "ghost_2 (line 9)"]),
    "unlabelled cases": (_rows(GOOD[:3]), None, ["without a label (3): case_003, case_004, case_005"]),
    "labels outside classes": (_rows(GOOD), ["G1", "G2"], ["'G10' (line 3, case_001)", "'G10' (line 6, case_004)"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_import_names_offenders_and_changes_nothing(env, tmp_path, case):
    text, classes, expected = REFUSALS[case]
    before = {k: env[k].read_bytes() for k in ("raw", "pre")}
    listing = {k: sorted(os.listdir(env[k].parent)) for k in ("raw", "pre")}
    with pytest.raises(NNKDError) as err:
        L.import_labels(NAME, _csv(tmp_path, text), classes)
    for fragment in expected:
        assert fragment in str(err.value), str(err.value)
    assert {k: env[k].read_bytes() for k in ("raw", "pre")} == before
    assert {k: sorted(os.listdir(env[k].parent)) for k in ("raw", "pre")} == listing


def test_all_problem_kinds_reported_together(env, tmp_path):
    text = _rows(GOOD[:4] + [("ghost", "G1"), ("case_000", "G1")])
    with pytest.raises(NNKDError) as err:
        L.import_labels(NAME, _csv(tmp_path, text))
    msg = str(err.value)
    assert "case_000 (lines 2, 7)" in msg and "ghost (line 6)" in msg  # every problem at once
    text = _rows(GOOD[:4] + [("ghost", "G1")])
    with pytest.raises(NNKDError) as err:
        L.import_labels(NAME, _csv(tmp_path, text))
    assert "ghost (line 6)" in str(err.value) and "case_004, case_005" in str(err.value)


def test_missing_csv_and_unknown_dataset(env, tmp_path):
    with pytest.raises(NNKDError, match="label file not found: .*nope.csv"):
        L.import_labels(NAME, str(tmp_path / "nope.csv"))
    with pytest.raises(NNKDError, match="'abc' is neither a dataset id"):
        dataset_name("abc")
    with pytest.raises(NNKDError, match="dataset '7'"):
        dataset_name("7")
    assert dataset_name(" 42 ") == NAME


def test_failed_second_write_leaves_both_files(env, tmp_path, monkeypatch):
    """Both temporary files are written before the first rename, and the raw file (renamed first)
    gets its old bytes back when the preprocessed rename fails: both targets stay as they were."""
    before = {k: env[k].read_bytes() for k in ("raw", "pre")}
    real_replace = os.replace

    def failing_replace(src, dst):
        if os.fspath(dst) == str(env["pre"]):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        L.import_labels(NAME, _csv(tmp_path, _rows(GOOD)))
    assert {k: env[k].read_bytes() for k in ("raw", "pre")} == before
    assert not [p for p in os.listdir(env["raw"].parent) if p.startswith(".") and p != L.LOCK_FILE]


def test_case_labels_errors():
    with pytest.raises(NNKDError, match="nnkd labels import"):
        L.case_labels({"name": "x"}, "some/dataset.json")
    with pytest.raises(NNKDError, match=r"case_b \('C'\)"):
        L.case_labels({"nnkd": {"class_names": ["A", "B"], "case_labels": {"case_a": "A", "case_b": "C"}}})


def test_training_case_ids_honour_dataset_key(tmp_path):
    doc = {"file_ending": ".nii.gz", "dataset": {"b_10": {"images": ["x.nii.gz"], "label": "y.nii.gz"},
                                                 "b_2": {"images": ["z.nii.gz"], "label": "w.nii.gz"}}}
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    assert training_case_ids(str(tmp_path)) == ["b_10", "b_2"]


def test_natural_key_and_label_counts():
    names = ["G10", "g", "G2", "G1", "case_9", "case_10", "G"]
    assert sorted(names, key=L.natural_key) == ["G", "G1", "G2", "G10", "case_9", "case_10", "g"]
    summary = L.label_counts(["A", "B", "C"], {"x": "A", "y": "B", "z": "A", "stale": "C"}, ["x", "y", "z", "w"])
    assert summary.counts == {"A": 2, "B": 1, "C": 0}
    assert summary.unlabelled == ["w"] and summary.unknown == ["stale"]


def test_read_labels_source(env, tmp_path):
    path = _csv(tmp_path, _rows([("p", "G10"), ("q", "G9")]))
    assert L.read_labels_source(path) == (["G9", "G10"], {"p": "G10", "q": "G9"})
    with pytest.raises(NNKDError, match="no case labels for Dataset042_Toy"):
        L.read_labels_source("42")
    L.import_labels(NAME, _csv(tmp_path, _rows(GOOD)))
    os.remove(env["raw"])  # falls back to the preprocessed copy
    names, labels = L.read_labels_source(NAME)
    assert names == ["G1", "G2", "G10"] and labels == dict(GOOD)


def _cli(*args, env_vars):
    return subprocess.run([sys.executable, "-m", "nnkd.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env_vars}, timeout=120)


def test_cli_import_and_show(env, tmp_path):
    env_vars = {k: str(v) for k, v in env["roots"].items()}
    bad = _cli("labels", "import", "42", _csv(tmp_path, _rows(GOOD[:5]), "bad.csv"), env_vars=env_vars)
    assert bad.returncode == 2 and "nnkd: error:" in bad.stderr and "case_005" in bad.stderr

    ok = _cli("labels", "import", "42", _csv(tmp_path, _rows(GOOD)), "--classes", "G1", "G2", "G10",
              env_vars=env_vars)
    assert ok.returncode == 0, ok.stderr
    assert "0=G1 (2), 1=G2 (2), 2=G10 (2)" in ok.stdout and str(env["pre"]) in ok.stdout

    raw = env["raw"].parent
    (raw / "imagesTr" / "case_new_0000.nii.gz").touch()  # a case added after the import
    shown = _cli("labels", "show", NAME, env_vars=env_vars)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"{NAME}: 7 training cases, 3 classes")
    assert [line.split() for line in lines[1:4]] == [["0", "G1", "2"], ["1", "G2", "2"], ["2", "G10", "2"]]
    assert "cases without a label: 1: case_new" in shown.stdout
