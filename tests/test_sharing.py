"""What a shared model folder may hold: class names, never case ids with their classes."""
import json

from nnkd.sharing import scrub_debug_json, shareable_dataset_json

DOC = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1}, "file_ending": ".nii.gz",
       "nnkd": {"class_names": ["G1", "G2"], "case_labels": {"liver_007": "G2", "liver_012": "G1"},
                "masks": "none"}}


def test_shareable_dataset_json_keeps_class_names_only():
    out = shareable_dataset_json(DOC)
    assert out["nnkd"] == {"class_names": ["G1", "G2"], "masks": "none"}
    assert {k: v for k, v in out.items() if k != "nnkd"} == {k: v for k, v in DOC.items() if k != "nnkd"}
    assert "case_labels" in DOC["nnkd"]  # the input is not changed
    assert shareable_dataset_json({"labels": {}}) == {"labels": {}}  # no nnkd entry: nothing to do


def test_debug_json_loses_every_entry_naming_a_case(tmp_path):
    path = tmp_path / "debug.json"
    doc = {"case_to_class": "{'liver_007': 1, 'liver_012': 0}", "full_dataset_json": json.dumps(DOC),
           "batch_size": "2", "note": "liver_0070 is not a case id of this dataset", "device": "cpu"}
    path.write_text(json.dumps(doc))
    assert scrub_debug_json(str(path), ["liver_007", "liver_012"]) == ["case_to_class", "full_dataset_json"]
    out = json.loads(path.read_text())
    assert {k: out[k] for k in ("batch_size", "note", "device")} == {k: doc[k] for k in ("batch_size", "note", "device")}
    assert "liver_007" not in path.read_text().replace("liver_0070", "")
    assert out["nnkd_removed"] == "2 entries naming training cases: case_to_class, full_dataset_json"
    before = path.read_text()
    assert scrub_debug_json(str(path), []) == [] and path.read_text() == before
    assert scrub_debug_json(str(tmp_path / "absent.json"), ["x"]) == []
