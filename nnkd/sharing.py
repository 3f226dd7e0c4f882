"""What a trained model folder may hold: class names, never case ids with their classes.

Model folders travel between sites (``nnUNetv2_export_model_to_zip`` ships ``dataset.json``, every
fold's checkpoint with its ``init_args`` and ``debug.json``). nnkd keeps a dataset's case labels in
its ``dataset.json`` (:mod:`nnkd.labels`); a trainer reads them from ``nnUNet_preprocessed`` and
writes only :func:`shareable_dataset_json` into its results folder and checkpoints, and
:func:`scrub_debug_json` removes the entries of nnU-Net's ``debug.json`` (the ``str()`` of every
trainer attribute) that mention a case id.
"""
from __future__ import annotations

import copy
import json
import os
import re
from typing import Iterable, List, Mapping

from nnkd.io import write_json

NNKD_KEY = "nnkd"
PRIVATE_KEYS = ("case_labels",)  # what of the dataset.json "nnkd" entry stays at the site that trained
_TOKEN = re.compile(r"[\w.\-]+")


def shareable_dataset_json(dataset_json: Mapping) -> dict:
    """A copy of ``dataset_json`` whose ``nnkd`` entry keeps class names (and every other field) but no
    ``case_labels``."""
    out = copy.deepcopy(dict(dataset_json))
    entry = out.get(NNKD_KEY)
    if isinstance(entry, dict):
        out[NNKD_KEY] = {k: v for k, v in entry.items() if k not in PRIVATE_KEYS}
    return out


def scrub_debug_json(path: str, case_ids: Iterable[str]) -> List[str]:
    """Drop the entries of nnU-Net's ``debug.json`` whose value names any of ``case_ids``; returns
    their keys (also recorded in the file under ``nnkd_removed``). Nothing to do if the file is absent."""
    ids = set(case_ids)
    if not ids or not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    removed = sorted(k for k, v in doc.items() if ids.intersection(_TOKEN.findall(json.dumps(v))))
    if removed:
        doc = {k: v for k, v in doc.items() if k not in removed}
        doc["nnkd_removed"] = f"{len(removed)} entries naming training cases: {', '.join(removed)}"
        write_json(path, doc)
    return removed
