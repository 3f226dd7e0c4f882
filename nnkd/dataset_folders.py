"""nnU-Net datasets by id or name: the one lookup every nnkd command uses, with one set of error texts.

``dataset_name`` wraps nnU-Net's own id/name conversion (which searches ``nnUNet_raw``,
``nnUNet_preprocessed`` and ``nnUNet_results``); ``dataset_folder`` adds the folder of one of the
three roots and says how to create it when it is missing. ``where`` prefixes every message with the
caller's context (a plan field, a command argument).
"""
from __future__ import annotations

import json
import os
from typing import Optional

from nnkd.errors import NNKDError

RAW, PREPROCESSED, RESULTS = "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"
_HOW_TO_CREATE = {RAW: "create it (nnkd synth, nnkd dataset from-images, or nnU-Net's dataset conversion)",
                  PREPROCESSED: "run nnUNetv2_plan_and_preprocess -d {dataset} first",
                  RESULTS: "train a model with nnUNetv2_train first"}


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def dataset_name(dataset: str | int, where: str = "") -> str:
    """Dataset id (``5``, ``"5"``, ``" 5 "``) or name (``"Dataset005_Liver"``) -> ``"Dataset005_Liver"``.

    An id is looked up among the datasets of the three nnU-Net roots; none or several with that id
    is refused, as is a value that is neither an id nor a name."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    key = dataset.strip() if isinstance(dataset, str) else dataset
    try:
        return str(maybe_convert_to_dataset_name(key))
    except ValueError:
        raise NNKDError(f"{_prefix(where)}dataset {dataset!r} is neither a dataset id (e.g. 5) nor a name "
                        f"starting with 'Dataset' (e.g. Dataset005_Liver)") from None
    except (RuntimeError, AssertionError) as e:  # none or several datasets with this id
        raise NNKDError(f"{_prefix(where)}dataset {dataset!r}: {str(e).strip().splitlines()[0]}") from None


def root(env_var: str, required: bool = True) -> Optional[str]:
    """The folder an nnU-Net root variable names; NNKDError when it is unset and ``required``."""
    value = os.environ.get(env_var) or None
    if value is None and required:
        raise NNKDError(f"{env_var} is not set: export {env_var}=/path/to/{env_var} (see nnU-Net's "
                        f"documentation/setting_up_paths.md)")
    return value


def dataset_folder(dataset: str | int, kind: str = RAW, where: str = "") -> str:
    """``$<kind>/DatasetXXX_Name`` of an id or name (``kind``: RAW, PREPROCESSED or RESULTS); refuses an
    unset root or a missing folder, saying how to create it."""
    name = dataset_name(dataset, where)
    folder = os.path.join(root(kind), name)
    if not os.path.isdir(folder):
        how = _HOW_TO_CREATE[kind].format(dataset=dataset)
        raise NNKDError(f"{_prefix(where)}{folder} does not exist; {how}")
    return folder


def load_json(path: str) -> dict:
    """A JSON file's content; NNKDError naming the file when it is missing or invalid."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise NNKDError(f"cannot read {path}: {e}") from None


def load_dataset_json(folder: str) -> dict:
    """A dataset folder's dataset.json; NNKDError naming the file when it is missing or invalid."""
    path = os.path.join(folder, "dataset.json")
    if not os.path.isfile(path):
        raise NNKDError(f"{path}: not found (is {os.path.basename(folder)} an nnU-Net dataset?)")
    doc = load_json(path)
    if not isinstance(doc, dict):
        raise NNKDError(f"{path}: must hold a JSON object")
    return doc


def training_case_ids(raw_dataset_folder: str) -> list[str]:
    """Training case ids of a raw dataset (imagesTr, or the dataset.json ``dataset`` key), sorted."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    doc = load_dataset_json(raw_dataset_folder)
    try:
        cases = get_filenames_of_train_images_and_targets(raw_dataset_folder, doc)
    except (OSError, KeyError) as e:
        raise NNKDError(f"cannot list the training cases of {raw_dataset_folder}: {e!r}") from None
    return sorted(str(c) for c in cases)
