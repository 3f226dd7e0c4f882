"""Case-level class labels, stored in dataset.json under the ``nnkd`` key::

    "nnkd": {"class_names": ["G1", "G2", "G3"], "case_labels": {"case_000": "G1", "case_001": "G3"}}

nnU-Net ignores unknown keys, so the labels travel with dataset.json from nnUNet_raw into
nnUNet_preprocessed; a trained model's results folder keeps ``class_names`` only (:mod:`nnkd.sharing`). ``class_names`` fixes the class indices (its order);
``case_labels`` maps every training case to one of them.

Label files are CSVs with a header naming the columns ``case_id`` and ``label`` (exactly these
names; further columns are ignored).
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
import unicodedata
from collections import Counter
from typing import Iterable, Mapping, NamedTuple, Sequence

from nnkd.dataset_folders import PREPROCESSED, RAW, dataset_folder, load_json, root, training_case_ids
from nnkd.dataset_folders import dataset_name as find_dataset
from nnkd.errors import NNKDError

NNKD_KEY = "nnkd"
CSV_COLUMNS = ("case_id", "label")
JSON_INDENT = 4  # what nnU-Net's save_json writes: rewritten files stay close to the originals


class LabelRow(NamedTuple):
    line: int  # line number in the CSV file (the header is line 1)
    case_id: str
    label: str


class LabelSummary(NamedTuple):
    counts: dict[str, int]  # class name -> number of training cases, in class order
    unlabelled: list[str]  # training cases without a label
    unknown: list[str]  # labelled cases that are not training cases (dataset changed after import)


def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs by value: "G2" < "G10", "case_9" < "case_10"."""
    # re.split with a group alternates text and digits, starting with text, so tuples compare type-safely
    return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", text)))


# ---------------------------------------------------------------------------------------------
# The dataset.json files that carry the labels (datasets are found by nnkd.dataset_folders)


def dataset_json_paths(dataset_name: str) -> list[str]:
    """The dataset.json files that carry the labels: the raw one (must exist), then the
    preprocessed one when it exists."""
    paths = [os.path.join(dataset_folder(dataset_name, RAW), "dataset.json")]
    if not os.path.isfile(paths[0]):
        raise NNKDError(f"no dataset.json in {os.path.dirname(paths[0])}")
    pre_root = root(PREPROCESSED, False)
    if pre_root is not None and os.path.isfile(os.path.join(pre_root, dataset_name, "dataset.json")):
        paths.append(os.path.join(pre_root, dataset_name, "dataset.json"))
    return paths


# ---------------------------------------------------------------------------------------------
# Reading and validating label files


def read_label_csv(path: str) -> list[LabelRow]:
    """Rows of a ``case_id,label`` CSV (see :func:`parse_label_csv`); NNKDError listing every
    offending line when anything is wrong."""
    rows, problems = parse_label_csv(path)
    if problems:
        raise NNKDError(_problem_message(f"{path} is malformed", problems))
    return rows


def parse_label_csv(path: str) -> tuple[list[LabelRow], list[str]]:
    """(rows, problems) of a ``case_id,label`` CSV: values stripped of surrounding whitespace, blank
    lines skipped, one problem line per offending row so that a caller can refuse them together with
    its own findings.

    NNKDError at once for a missing or empty file, or a header without both columns (or naming
    one twice). Problems: rows with a different number of fields than the header, blank ids or
    labels, values holding control or invisible format characters, values a spreadsheet would run
    as a formula (starting with ``=``, ``+``, ``-``, ``@``; plain numbers such as ``-1`` excepted),
    case ids given more than once, and a file whose rows all have one class.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: spreadsheet exports start with a BOM
            reader = csv.reader(f)
            header = next(reader, None)
            records = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except FileNotFoundError:
        raise NNKDError(f"label file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise NNKDError(f"cannot read label file {path}: {e}") from None
    if header is None or not any(cell.strip() for cell in header):
        raise NNKDError(f"{path} is empty: expected a header line 'case_id,label' and one row per case")
    header = [cell.strip() for cell in header]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise NNKDError(f"{path}: the header must name the columns 'case_id' and 'label' (exactly these names); "
                        f"found {','.join(header)!r}, missing {', '.join(missing)}")
    twice = [f"'{c}' (columns {', '.join(str(i + 1) for i, h in enumerate(header) if h == c)})"
             for c in CSV_COLUMNS if header.count(c) > 1]
    if twice:
        raise NNKDError(f"{path}: the header names the column {' and '.join(twice)} more than once; which one "
                        f"holds the values is ambiguous: rename or remove the others")
    i_case, i_label = header.index("case_id"), header.index("label")
    if not records:
        raise NNKDError(f"{path} has a header but no rows")

    problems, rows = [], []
    for line, row in records:
        if len(row) != len(header):
            problems.append(f"line {line}: {len(row)} field(s), the header has {len(header)}")
            continue
        case, label = row[i_case].strip(), row[i_label].strip()
        blank = [name for name, value in (("case_id", case), ("label", label)) if not value]
        if blank:
            problems.append(f"line {line}: blank {' and '.join(blank)}")
            continue
        unsafe = [p for column, value in (("case_id", case), ("label", label)) for p in _unsafe(column, value)]
        if unsafe:
            problems.extend(f"line {line}: {p}" for p in unsafe)
            continue
        rows.append(LabelRow(line, case, label))
    lines_of: dict[str, list[int]] = {}
    for r in rows:
        lines_of.setdefault(r.case_id, []).append(r.line)
    duplicates = {c: lines for c, lines in lines_of.items() if len(lines) > 1}
    if duplicates:
        problems.append("case ids given more than once: " + ", ".join(
            f"{c} (lines {', '.join(map(str, lines))})" for c, lines in duplicates.items()))
    classes = {r.label for r in rows}
    if len(classes) == 1:
        problems.append(f"every row has the label {next(iter(classes))!r}: classification needs cases of at "
                        f"least two classes")
    return rows, problems


FORMULA_START = ("=", "+", "-", "@")  # what spreadsheets evaluate (CSV / formula injection)
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _unsafe(column: str, value: str) -> list[str]:
    """Why ``value`` cannot be a case id or class name: control or invisible format characters (a
    NUL byte would become part of a class name), or a spreadsheet formula. Empty when it is fine."""
    out = []
    hidden = sorted({ch for ch in value if unicodedata.category(ch) in ("Cc", "Cf")})
    if hidden:
        out.append(f"{column} {value!r} holds control or invisible character(s) "
                   + ", ".join(f"U+{ord(ch):04X}" for ch in hidden))
    if value.startswith(FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        out.append(f"{column} {value!r} starts with {value[0]!r}, which spreadsheets run as a formula when "
                   f"the CSVs nnkd writes are opened: rename it")
    return out


def _problem_message(title: str, problems: Sequence[str]) -> str:
    return title + ":\n" + "\n".join(f"  - {p}" for p in problems)


def _check_class_names(class_names: Sequence[str], where: str) -> list[str]:
    names = [str(c).strip() for c in class_names]
    if not names or any(not n for n in names):
        raise NNKDError(f"{where}: class names must be non-empty, got {list(class_names)!r}")
    dup = sorted({n for n in names if names.count(n) > 1}, key=natural_key)
    if dup:
        raise NNKDError(f"{where}: class names given more than once: {', '.join(dup)}")
    return names


def validate_labels(rows: Sequence[LabelRow], case_ids: Iterable[str], class_names: Sequence[str] | None,
                    source: str, dataset_name: str, problems: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """Check parsed rows against a dataset's training cases; returns (class names, {case: label}).

    Without ``class_names`` the classes are the distinct labels in natural-sort order. Refuses,
    listing every offender together with ``problems`` already found in the file
    (:func:`parse_label_csv`): ids that are not training cases, training cases without a label,
    labels outside ``class_names``.
    """
    case_ids = list(case_ids)
    known = set(case_ids)
    labelled = {r.case_id for r in rows}
    problems = list(problems)
    unknown = [r for r in rows if r.case_id not in known]
    if unknown:
        problems.append(f"case ids that are not training cases of {dataset_name}: "
                        + ", ".join(f"{r.case_id} (line {r.line})" for r in unknown))
    unlabelled = [c for c in case_ids if c not in labelled]
    if unlabelled:
        problems.append(f"training cases without a label ({len(unlabelled)}): " + ", ".join(unlabelled))
    if class_names is None:
        names = sorted({r.label for r in rows}, key=natural_key)
    else:
        names = _check_class_names(class_names, "--classes")
        outside = [r for r in rows if r.label not in names]
        if outside:
            problems.append(f"labels not in the given classes {names}: "
                            + ", ".join(f"{r.label!r} (line {r.line}, {r.case_id})" for r in outside))
    if problems:
        raise NNKDError(_problem_message(f"refusing to import {source} into {dataset_name} "
                                         f"(nothing was written)", problems))
    return names, {r.case_id: r.label for r in sorted(rows, key=lambda r: natural_key(r.case_id))}


# ---------------------------------------------------------------------------------------------
# dataset.json


def with_case_labels(dataset_json: Mapping, class_names: Sequence[str], labels: Mapping[str, str]) -> dict:
    """A copy of ``dataset_json`` whose ``nnkd`` key holds these labels; every other key, the key
    order and any other field inside ``nnkd`` are kept."""
    names = _check_class_names(class_names, "class_names")
    outside = sorted((c for c, lab in labels.items() if lab not in names), key=natural_key)
    if outside:
        raise NNKDError(f"cases with a label outside {names}: {', '.join(outside)}")
    entry = dataset_json.get(NNKD_KEY) or {}
    if not isinstance(entry, Mapping):
        raise NNKDError(f"dataset.json key {NNKD_KEY!r} must be an object, found {type(entry).__name__}")
    out = dict(dataset_json)
    out[NNKD_KEY] = {**entry, "class_names": names, "case_labels": dict(labels)}
    return out


def write_dataset_jsons(documents: Mapping[str, Mapping]) -> None:
    """Write several dataset.json files all-or-nothing: every temporary file is written before the
    first rename, and when a later rename fails the files already replaced get their previous
    bytes back, so a failure leaves each target byte-identical."""
    texts = {path: json.dumps(doc, indent=JSON_INDENT) + "\n" for path, doc in documents.items()}
    before = {path: _read_bytes(path) for path in texts}
    temporary: dict[str, str] = {}
    try:
        for path, text in texts.items():
            temporary[path] = _temporary_copy(path, text.encode("utf-8"))
        replaced = []
        try:
            for path, tmp in temporary.items():
                os.replace(tmp, path)
                replaced.append(path)
        except BaseException:
            for path in replaced:  # roll back: the earlier files get their old content again
                if before[path] is None:
                    os.remove(path)
                else:
                    os.replace(_temporary_copy(path, before[path]), path)
            raise
    finally:
        for tmp in temporary.values():
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _temporary_copy(path: str, data: bytes) -> str:
    """A temporary sibling of ``path`` holding ``data``, with ``path``'s mode when it exists."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp.json",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if os.path.exists(path):
            shutil.copymode(path, tmp)  # the temporary file is private; keep the original's mode
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
    except BaseException:
        os.remove(tmp)
        raise
    return tmp


LOCK_FILE = ".nnkd_labels.lock"  # in the raw dataset folder; nnU-Net ignores it
LOCK_TIMEOUT_S = 60.0


@contextlib.contextmanager
def dataset_lock(raw_folder: str, timeout: float = LOCK_TIMEOUT_S, on_wait=None):
    """Hold an exclusive lock (``fcntl.flock`` on ``raw_folder``/LOCK_FILE) while a dataset's labels
    are read and rewritten, so that concurrent imports cannot interleave their raw and
    preprocessed writes. Waits up to ``timeout`` seconds (calling ``on_wait(message)`` once), then
    refuses. The lock file stays: removing it would let a waiting process lock a deleted file."""
    path = os.path.join(raw_folder, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise NNKDError(f"cannot create the lock file {path}: {e.strerror or e}") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise NNKDError(f"refusing to import: another `nnkd labels import` holds the lock {path} "
                                    f"(waited {timeout:g} s); nothing was written. Run it again when the other "
                                    f"import has finished") from None
                if on_wait is not None:
                    on_wait(f"waiting for another `nnkd labels import` of this dataset to finish (lock {path}) ...")
                    on_wait = None
                time.sleep(0.05)
        yield path
    finally:
        os.close(fd)  # releases the lock


def import_labels(dataset: str, csv_path: str, class_names: list[str] | None = None,
                  lock_timeout: float = LOCK_TIMEOUT_S, on_wait=None) -> dict:
    """Import a ``case_id,label`` CSV into the dataset.json of a dataset (raw, and preprocessed when
    it exists); returns the written ``nnkd`` entry.

    Class indices follow ``class_names`` when given, else the distinct labels in natural-sort
    order ("G2" before "G10"). Every training case needs exactly one label. Everything is
    validated before anything is written, and one refusal lists every problem; a refused import
    leaves every file untouched. The dataset.json files are read and written under
    :func:`dataset_lock`, both or neither.
    """
    name = find_dataset(dataset)
    paths = dataset_json_paths(name)
    rows, problems = parse_label_csv(csv_path)
    names, labels = validate_labels(rows, training_case_ids(os.path.dirname(paths[0])), class_names,
                                    csv_path, name, problems)
    with dataset_lock(os.path.dirname(paths[0]), lock_timeout, on_wait):
        paths = dataset_json_paths(name)  # the preprocessed copy may have appeared meanwhile
        documents = {p: with_case_labels(load_json(p), names, labels) for p in paths}
        write_dataset_jsons(documents)
    return documents[paths[0]][NNKD_KEY]


NO_LESION_MASKS = {"masks": "none"}  # dataset.json "nnkd" entry: the masks carry no lesion information


def masks_hold_lesions(dataset_json: Mapping) -> bool:
    """False when the dataset.json's ``nnkd`` entry marks its masks as carrying no lesion information
    (classification-only datasets whose label 1 only exists because nnU-Net cannot plan empty masks)."""
    entry = dataset_json.get(NNKD_KEY)
    return not (isinstance(entry, Mapping) and entry.get("masks") == NO_LESION_MASKS["masks"])


def case_labels(dataset_json: Mapping, source: str = "dataset.json") -> tuple[list[str], dict[str, int]]:
    """(class names, {case id: class index}) from a loaded dataset.json; NNKDError naming
    ``source`` when the labels are missing or inconsistent."""
    names, labels = stored_labels(dataset_json, source)
    return names, {case: names.index(label) for case, label in labels.items()}


def stored_labels(dataset_json: Mapping, source: str = "dataset.json") -> tuple[list[str], dict[str, str]]:
    """(class names, {case id: class name}) from a loaded dataset.json, validated."""
    entry = dataset_json.get(NNKD_KEY)
    if not isinstance(entry, Mapping) or "class_names" not in entry or "case_labels" not in entry:
        raise NNKDError(f"{source} has no case labels (key '{NNKD_KEY}' with 'class_names' and 'case_labels'): "
                        f"run `nnkd labels import DATASET FILE.csv` first")
    names = _check_class_names(entry["class_names"], f"{source} {NNKD_KEY}.class_names")
    labels = {str(c): str(lab) for c, lab in entry["case_labels"].items()}
    bad = [f"{c} ({lab!r})" for c, lab in labels.items() if lab not in names]
    if bad:
        raise NNKDError(f"{source}: {NNKD_KEY}.case_labels has labels outside class_names {names}: {', '.join(bad)}")
    return names, labels


def read_labels_source(spec: str) -> tuple[list[str], dict[str, str]]:
    """(class names, {case id: class name}) from a ``case_id,label`` CSV (classes in natural-sort
    order) or from a dataset id/name (its raw dataset.json, else its preprocessed one)."""
    if os.path.isfile(spec) or spec.lower().endswith(".csv"):
        rows = read_label_csv(spec)
        return sorted({r.label for r in rows}, key=natural_key), {r.case_id: r.label for r in rows}
    name = find_dataset(spec)
    candidates = [os.path.join(folder, name, "dataset.json") for folder in (root(RAW, False), root(PREPROCESSED, False))
                  if folder]
    for path in candidates:
        if os.path.isfile(path):
            doc = load_json(path)
            if isinstance(doc.get(NNKD_KEY), Mapping) and "case_labels" in doc[NNKD_KEY]:
                return stored_labels(doc, path)
    looked = ", ".join(candidates) or "nothing: nnUNet_raw and nnUNet_preprocessed are unset"
    raise NNKDError(f"no case labels for {name} (looked in {looked}): run `nnkd labels import {name} FILE.csv` first")


def label_counts(class_names: Sequence[str], labels: Mapping[str, str],
                 case_ids: Iterable[str] | None = None) -> LabelSummary:
    """Cases per class (in class order); with ``case_ids``, also the training cases without a label
    and the labelled cases that are not training cases."""
    cases = list(labels) if case_ids is None else list(case_ids)
    known = set(cases)
    counter = Counter(labels[c] for c in cases if c in labels)
    return LabelSummary(counts={n: counter.get(n, 0) for n in class_names},
                        unlabelled=[c for c in cases if c not in labels],
                        unknown=sorted((c for c in labels if c not in known), key=natural_key))
