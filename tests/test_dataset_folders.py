"""nnU-Net dataset lookup by id or name: one module, one set of messages."""
import json

import pytest

from nnkd.dataset_folders import (PREPROCESSED, RAW, dataset_folder, dataset_name, load_dataset_json, root,
                                  training_case_ids)
from nnkd.errors import NNKDError


@pytest.fixture
def roots(nnunet_roots):
    (nnunet_roots["nnUNet_raw"] / "Dataset007_Seven").mkdir()
    return nnunet_roots


def test_id_or_name(roots):
    assert dataset_name(7) == dataset_name("7") == dataset_name(" 007 ") == "Dataset007_Seven"
    assert dataset_name("Dataset007_Seven") == "Dataset007_Seven"
    assert dataset_folder(7) == str(roots["nnUNet_raw"] / "Dataset007_Seven")


def test_messages_name_the_caller_and_the_value(roots):
    with pytest.raises(NNKDError) as e:
        dataset_name("abc", "teachers[0].dataset")
    assert str(e.value) == ("teachers[0].dataset: dataset 'abc' is neither a dataset id (e.g. 5) nor a name "
                            "starting with 'Dataset' (e.g. Dataset005_Liver)")
    with pytest.raises(NNKDError) as e:
        dataset_name(8)
    assert str(e.value).startswith("dataset 8: ") and "8" in str(e.value)[len("dataset 8: "):]
    with pytest.raises(NNKDError) as e:
        dataset_folder(7, PREPROCESSED, "teachers[0]")
    assert str(e.value) == (f"teachers[0]: {roots['nnUNet_preprocessed'] / 'Dataset007_Seven'} does not exist; "
                            f"run nnUNetv2_plan_and_preprocess -d 7 first")


def test_unset_root(roots, monkeypatch):
    monkeypatch.delenv("nnUNet_preprocessed")
    assert root(PREPROCESSED, required=False) is None
    with pytest.raises(NNKDError, match="nnUNet_preprocessed is not set: export nnUNet_preprocessed="):
        dataset_folder("Dataset007_Seven", PREPROCESSED)
    assert root(RAW) == str(roots["nnUNet_raw"])


def test_dataset_json_and_training_cases(roots):
    folder = roots["nnUNet_raw"] / "Dataset007_Seven"
    with pytest.raises(NNKDError, match="dataset.json: not found .is Dataset007_Seven an nnU-Net dataset"):
        load_dataset_json(str(folder))
    (folder / "dataset.json").write_text("[1]")
    with pytest.raises(NNKDError, match="dataset.json: must hold a JSON object"):
        load_dataset_json(str(folder))
    doc = {"file_ending": ".nii.gz", "dataset": {"b_10": {"images": ["x.nii.gz"], "label": "y.nii.gz"},
                                                 "b_2": {"images": ["z.nii.gz"], "label": "w.nii.gz"}}}
    (folder / "dataset.json").write_text(json.dumps(doc))
    assert training_case_ids(str(folder)) == ["b_10", "b_2"]
