"""Atomic file writing: every file nnkd writes goes to a temporary sibling, then is renamed.

A crash or a refused input therefore never leaves a half-written or truncated file behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    The temporary name keeps ``path``'s suffix so writers that dispatch on it still work.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp" + _suffix(base), dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _target_mode(path))  # mkstemp creates 0600; keep what a plain open() would give
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _target_mode(path: str) -> int:
    """The replaced file's mode, else 0666 minus the process umask."""
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _suffix(name: str) -> str:
    for ext in (".nii.gz", ".tar.gz"):
        if name.endswith(ext):
            return ext
    return os.path.splitext(name)[1]


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2, sort_keys: bool = False) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_figure(fig, path: str | os.PathLike, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)
    plt.close(fig)


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_csv_rows(path: str | os.PathLike, what: str, expected: str = "") -> list:
    """All rows of a CSV file; unreadable or empty files raise NNKDError naming the file."""
    import csv

    from nnkd.errors import NNKDError

    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise NNKDError(f"cannot read {what} {path}: {e.strerror or e}") from e
    if not rows:
        raise NNKDError(f"{path}: empty file" + (f", expected header {expected}" if expected else ""))
    return rows
