"""A plan's channel lists (names or indices) -> indices into a dataset's ``channel_names``."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from nnkd.errors import NNKDError


def resolve_channels(spec: Optional[List[Any]], channel_names: Dict[str, str], field: str) -> List[int]:
    """Channel names or indices -> sorted-as-given indices into the dataset's channels."""
    n = len(channel_names)
    if spec is None:
        return list(range(n))
    by_name = {v: int(k) for k, v in channel_names.items()}
    out = []
    for c in spec:
        if isinstance(c, int):
            if not 0 <= c < n:
                raise NNKDError(f"{field}: channel {c} does not exist; the dataset has channels "
                                f"{_describe(channel_names)}")
            out.append(c)
        elif c in by_name:
            out.append(by_name[c])
        else:
            raise NNKDError(f"{field}: channel {c!r} does not exist; the dataset has channels "
                            f"{_describe(channel_names)}")
    if len(set(out)) != len(out):
        raise NNKDError(f"{field}: channels listed twice: {spec}")
    if not out:
        raise NNKDError(f"{field}: empty channel list")
    return out


def _describe(channel_names: Dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(channel_names.items(), key=lambda kv: int(kv[0])))
