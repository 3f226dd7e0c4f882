"""Reading checkpoints without running code: the one loader for every ``.pth`` file nnkd reads.

Model folders and teacher checkpoints travel between sites, and unpickling can run arbitrary code.
:func:`load_checkpoint` therefore reads with ``torch.load(weights_only=True)`` and allowlists only
the few non-tensor globals nnU-Net checkpoints hold (a device, numpy dtypes and scalars). Every
refusal names the file and the reason: empty, truncated or corrupt (checked on the zip archive's
CRCs before unpickling), a global outside the allowlist (named), or content that is not a
checkpoint (not a dict, missing keys, non-finite weights).
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Any, Dict, Iterable, List

import numpy as np
import torch

from nnkd.errors import NNKDError

#: keys every checkpoint nnkd reads must hold
WEIGHTS_KEYS = ("network_weights",)
#: keys nnU-Net's trainer state needs to continue a run (--c) or validate it (--val)
TRAINER_KEYS = ("network_weights", "optimizer_state", "current_epoch", "logging", "_best_ema", "init_args")
#: keys a model folder's checkpoint needs for prediction
PREDICT_KEYS = ("network_weights", "init_args", "trainer_name")


def _allowlist() -> list:
    from numpy.dtypes import Float32DType, Float64DType

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return [torch.device, np.dtype, Float32DType, Float64DType, scalar]


def _check_archive(path: str) -> None:
    """Refuse empty, truncated or corrupt files before anything is unpickled."""
    size = os.path.getsize(path)
    if size == 0:
        raise NNKDError(f"{path}: refused to load: empty file (0 bytes), not a checkpoint")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":  # torch.save writes a zip archive
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()  # reads every member and checks its CRC
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise NNKDError(f"{path}: refused to load: the file is truncated or corrupt (incomplete zip archive "
                            f"of {size} bytes: {e})") from None
        if bad is not None:
            raise NNKDError(f"{path}: refused to load: the file is corrupt (member {bad} fails its CRC check)")
        return
    if head[:1] != b"\x80":  # neither a zip archive nor a (legacy) pickle
        raise NNKDError(f"{path}: refused to load: not a PyTorch checkpoint (the file starts with bytes "
                        f"{head!r}, neither a zip archive nor a pickle)")


_GLOBAL = re.compile(r"(?:unsupported\s+GLOBAL|global)\s+([\w.]+)", re.IGNORECASE)


def _describe_unpickling_error(e: BaseException) -> str:
    text = str(e)
    m = _GLOBAL.search(text)
    if m:
        return (f"it asks for the global {m.group(1)}, which is outside the allowlist of nnU-Net checkpoints "
                f"(unpickling it could run code; loaded with weights_only=True)")
    m = re.search(r"Unsupported operand \d+", text)
    if m:  # bytes that are no pickle opcode: garbage or a damaged file
        return f"the file is corrupt or not a PyTorch checkpoint ({m.group(0)})"
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return f"not a readable PyTorch checkpoint ({type(e).__name__}: {first})"


def load_checkpoint(path: str, required: Iterable[str] = WEIGHTS_KEYS, finite: bool = True) -> Dict[str, Any]:
    """The checkpoint at ``path`` as a dict (tensors on the CPU), read without running code.

    ``required``: top-level keys it must hold. ``finite``: refuse non-finite network weights.
    Raises :class:`NNKDError` naming ``path`` and the reason; nothing in the file is executed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise NNKDError(f"checkpoint not found: {path}")
    _check_archive(path)
    try:
        with torch.serialization.safe_globals(_allowlist()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise NNKDError(f"{path}: refused to load: {_describe_unpickling_error(e)}") from None
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, AttributeError, TypeError, OSError) as e:
        raise NNKDError(f"{path}: refused to load: the file is truncated or corrupt "
                        f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
    check_checkpoint(checkpoint, path, required, finite)
    return checkpoint


def check_checkpoint(checkpoint: Any, path: str, required: Iterable[str] = WEIGHTS_KEYS,
                     finite: bool = True) -> None:
    """Refuse a loaded object that is not an nnU-Net checkpoint, listing every problem."""
    if not isinstance(checkpoint, dict):
        raise NNKDError(f"{path}: refused to load: a checkpoint is a dict of named entries, this file holds "
                        f"a {type(checkpoint).__name__}")
    problems = [f"missing entry '{k}'" for k in required if k not in checkpoint]
    weights = checkpoint.get("network_weights")
    if weights is not None:
        if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
            problems.append("'network_weights' is not a dict of tensors")
        elif finite:
            bad = nonfinite_tensors(weights)
            if bad:
                problems.append(f"non-finite network weights in {len(bad)} tensor(s): {', '.join(bad[:5])}"
                                f"{' ...' if len(bad) > 5 else ''}")
    if problems:
        raise NNKDError(f"{path}: refused to load: {'; '.join(problems)}")


def nonfinite_tensors(tree: Any, prefix: str = "") -> List[str]:
    """Names of the floating-point tensors in a nested dict/list that hold NaN or inf."""
    out: List[str] = []
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() and not bool(torch.isfinite(tree).all()):
            out.append(prefix or "tensor")
    elif isinstance(tree, dict):
        for k, v in tree.items():
            out += nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out += nonfinite_tensors(v, f"{prefix}[{i}]")
    elif isinstance(tree, float) and not np.isfinite(tree):
        out.append(prefix)
    return out
