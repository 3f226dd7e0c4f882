"""Reading JSON strictly: duplicate keys and non-finite numbers are problems, not silent values.

Python's :mod:`json` keeps the last of several equal keys in an object and accepts ``NaN``,
``Infinity`` and ``-Infinity`` (and turns ``1e999`` into ``inf``), none of which is valid JSON. Here
each becomes a problem line naming its field path (``teachers[0].weight``), so a caller can refuse
every problem of a file at once.
"""
from __future__ import annotations

import json
import math
from typing import Any, List, Tuple

from nnkd.errors import NNKDError


class _Object(dict):
    """A JSON object that remembers which of its keys occurred more than once."""

    def __init__(self, pairs):
        super().__init__(pairs)
        seen: set = set()
        self.duplicates = sorted({k for k, _ in pairs if k in seen or seen.add(k)})


def field_path(parent: str, key: Any) -> str:
    """``parent.key`` (``key`` at the top), or ``parent[i]`` for a list index."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def json_number(value: float) -> str:
    """How JSON-ish text spells a float: NaN, Infinity, -Infinity or the number."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def nonfinite_problems(obj: Any, path: str = "") -> List[Tuple[str, str]]:
    """(field path, message) for every non-finite float inside ``obj`` (dicts and lists walked)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return [(path, f"must be a finite number, got {json_number(obj)}")]
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    return [p for key, value in items for p in nonfinite_problems(value, field_path(path, key))]


def _plain(obj: Any, path: str, problems: List[Tuple[str, str]]) -> Any:
    """``obj`` with every _Object turned into a plain dict; duplicate keys appended to ``problems``."""
    if isinstance(obj, dict):
        for key in getattr(obj, "duplicates", ()):
            problems.append((field_path(path, key), "key given more than once (JSON would keep only the last)"))
        return {k: _plain(v, field_path(path, k), problems) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v, field_path(path, i), problems) for i, v in enumerate(obj)]
    return obj


def parse(text: str, source: str) -> Tuple[Any, List[Tuple[str, str]]]:
    """(document, [(field path, problem)]) of JSON ``text``: duplicate keys and non-finite numbers
    are problems. NNKDError naming ``source`` when the text is no JSON at all."""
    try:
        doc = json.loads(text, object_pairs_hook=_Object)
    except json.JSONDecodeError as e:
        raise NNKDError(f"{source}: not valid JSON: {e}") from None
    problems: List[Tuple[str, str]] = []
    doc = _plain(doc, "", problems)
    return doc, problems + nonfinite_problems(doc)


def read(path: str, what: str = "JSON file") -> Tuple[Any, List[Tuple[str, str]]]:
    """:func:`parse` of a file; NNKDError naming ``path`` when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise NNKDError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise NNKDError(f"cannot read {what} {path}: {e}") from None
    return parse(text, path)


def format_problems(source: str, problems: List[Tuple[str, str]]) -> str:
    """One refusal message for ``problems``: a single line for one, a list for several."""
    lines = [f"field '{f}': {m}" if f else m for f, m in problems]
    if len(lines) == 1:
        return f"{source}: {lines[0]}"
    return f"{source}: {len(lines)} problems:\n" + "\n".join(f"  - {line}" for line in lines)


def load(path: str, what: str = "JSON file") -> Any:
    """A JSON file's document; NNKDError naming the file and listing every problem otherwise."""
    doc, problems = read(path, what)
    if problems:
        raise NNKDError(format_problems(path, problems))
    return doc
