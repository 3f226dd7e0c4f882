"""The environment nnU-Net needs to run nnkd: its folder variables and ``nnUNet_extTrainer``."""
from __future__ import annotations

import os

SHIM_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_ext")
NNUNET_PATH_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def ext_trainer_value(current: str | None = None) -> str:
    """``nnUNet_extTrainer`` with nnkd's shim folder first (existing entries kept)."""
    current = os.environ.get("nnUNet_extTrainer", "") if current is None else current
    parts = [p for p in current.split(os.pathsep) if p and os.path.abspath(p) != SHIM_FOLDER]
    return os.pathsep.join([SHIM_FOLDER] + parts)


def workspace_env(workspace: str) -> dict:
    """nnU-Net's three folder variables under one workspace folder."""
    ws = os.path.abspath(workspace)
    return {"nnUNet_raw": os.path.join(ws, "nnUNet_raw"),
            "nnUNet_preprocessed": os.path.join(ws, "nnUNet_preprocessed"),
            "nnUNet_results": os.path.join(ws, "nnUNet_results")}
