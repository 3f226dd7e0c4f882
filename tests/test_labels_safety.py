"""Bad label files and concurrent imports (`nnkd labels import`), and staging folders left by a
killed `nnkd dataset from-images`: each refusal names the offenders and changes no file."""
from __future__ import annotations

import csv
import fcntl
import json
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from nnkd import image_folder as F
from nnkd import labels as L
from nnkd.errors import NNKDError

NAME = "Dataset043_Safe"
CASES = [f"case_{i:03d}" for i in range(8)]
GOOD = [(c, "AB"[i % 2]) for i, c in enumerate(CASES)]


@pytest.fixture
def env(nnunet_roots):
    """A raw dataset with 8 training cases and its preprocessed dataset.json."""
    roots = nnunet_roots
    raw = roots["nnUNet_raw"] / NAME
    (raw / "imagesTr").mkdir(parents=True)
    for c in CASES:
        (raw / "imagesTr" / f"{c}_0000.nii.gz").touch()
    doc = {"name": "Safe", "channel_names": {"0": "CT"}, "labels": {"background": 0, "tumour": 1},
           "numTraining": len(CASES), "file_ending": ".nii.gz"}
    (raw / "dataset.json").write_text(json.dumps(doc, indent=4))
    pre = roots["nnUNet_preprocessed"] / NAME
    pre.mkdir()
    (pre / "dataset.json").write_text(json.dumps(doc, indent=2))
    return {"raw": raw / "dataset.json", "pre": pre / "dataset.json", "roots": roots}


def _state(env):
    """Bytes of both dataset.json files and the listing of both folders."""
    return ({k: env[k].read_bytes() for k in ("raw", "pre")},
            {k: sorted(os.listdir(env[k].parent)) for k in ("raw", "pre")})


def _refusal(env, path, classes=None) -> str:
    before = _state(env)
    with pytest.raises(NNKDError) as e:
        L.import_labels(NAME, str(path), classes)
    assert _state(env) == before  # nothing written, not even the lock file
    return str(e.value)


def _write(tmp_path, text, name="labels.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _rows(pairs, header="case_id,label"):
    return header + "\n" + "".join(f"{c},{lab}\n" for c, lab in pairs)


def test_every_problem_is_listed_at_once(env, tmp_path):
    """Issue: a duplicate id, an unknown id and missing cases reported only the duplicate."""
    rows = GOOD[:2] + [("case_000", "B"), ("ghost", "A")]
    msg = _refusal(env, _write(tmp_path, _rows(rows)))
    assert "case_000 (lines 2, 4)" in msg
    assert "ghost (line 5)" in msg
    assert "training cases without a label (6): case_002, case_003, case_004, case_005, case_006, case_007" in msg


@pytest.mark.parametrize("bad, shown", [("G\x003", "U+0000"), ("G\u200b3", "U+200B"), ("B\x07", "U+0007")])
def test_control_and_invisible_characters_are_refused(env, tmp_path, bad, shown):
    rows = GOOD[:3] + [(CASES[3], bad)] + GOOD[4:]
    msg = _refusal(env, _write(tmp_path, _rows(rows)))
    assert f"line 5: label {bad!r} holds control or invisible character(s) {shown}" in msg


@pytest.mark.parametrize("bad", ["=HYPERLINK(\"http://x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)"])
def test_spreadsheet_formulas_are_refused(env, tmp_path, bad):
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "label"])
        w.writerows(GOOD[:-1] + [(CASES[-1], bad)])
    msg = _refusal(env, path)
    assert f"line 9: label {bad!r} starts with {bad[0]!r}, which spreadsheets run as a formula" in msg


def test_plain_negative_numbers_are_labels(env, tmp_path):
    entry = L.import_labels(NAME, str(_write(tmp_path, _rows([(c, "-1" if i % 2 else "1")
                                                               for i, c in enumerate(CASES)]))))
    assert sorted(entry["class_names"]) == ["-1", "1"]


def test_a_label_column_given_twice_is_refused(env, tmp_path):
    text = "case_id,label,label\n" + "".join(f"{c},{lab},A\n" for c, lab in GOOD)
    msg = _refusal(env, _write(tmp_path, text))
    assert "the header names the column 'label' (columns 2, 3) more than once" in msg


def test_a_single_class_is_refused(env, tmp_path):
    msg = _refusal(env, _write(tmp_path, _rows([(c, "A") for c in CASES])))
    assert "every row has the label 'A': classification needs cases of at least two classes" in msg
    msg = _refusal(env, _write(tmp_path, _rows([(c, "A") for c in CASES])), ["A", "B"])  # also with --classes
    assert "every row has the label 'A'" in msg


def _hold_lock(env):
    fd = os.open(os.path.join(env["raw"].parent, L.LOCK_FILE), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_locked_dataset_is_refused_after_the_wait(env, tmp_path):
    fd = _hold_lock(env)  # another import holds the lock (flock: per open file, so this process counts)
    try:
        before = _state(env)
        waited = []
        with pytest.raises(NNKDError) as e:
            L.import_labels(NAME, str(_write(tmp_path, _rows(GOOD))), lock_timeout=0.3, on_wait=waited.append)
        assert _state(env) == before
    finally:
        os.close(fd)
    assert "another `nnkd labels import` holds the lock" in str(e.value) and "nothing was written" in str(e.value)
    assert len(waited) == 1 and "waiting for another" in waited[0]


def test_a_second_import_waits_for_the_first_and_both_files_agree(env, tmp_path):
    fd = _hold_lock(env)
    result = {}

    def second():
        try:
            result["entry"] = L.import_labels(NAME, str(_write(tmp_path, _rows(GOOD), "b.csv")), lock_timeout=30,
                                              on_wait=lambda line: result.setdefault("waited", line))
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    thread = threading.Thread(target=second)
    thread.start()
    deadline = time.monotonic() + 30
    while "waited" not in result and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "nnkd" not in json.loads(env["raw"].read_text())  # still waiting: nothing written yet
    os.close(fd)
    thread.join(30)
    assert "error" not in result and result["entry"]["case_labels"] == dict(GOOD)
    raw, pre = (json.loads(env[k].read_text())["nnkd"] for k in ("raw", "pre"))
    assert raw == pre == result["entry"]


def test_concurrent_imports_leave_raw_and_preprocessed_identical(env, tmp_path):
    """Interleaved imports of different labelings: whichever wins, both files hold the same one."""
    files = [_write(tmp_path, _rows([(c, f"{p}{i % 2}") for i, c in enumerate(CASES)]), f"{p}.csv")
             for p in ("G", "H", "K")]
    errors = []

    def run(path):
        try:
            for _ in range(5):
                L.import_labels(NAME, str(path), lock_timeout=30)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(f,)) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    raw, pre = (json.loads(env[k].read_text())["nnkd"] for k in ("raw", "pre"))
    assert raw == pre


# ---------------------------------------------------------------------------------------------
# stale staging folders of `nnkd dataset from-images`


def test_stale_staging_folders_are_removed_and_reported(tmp_path, monkeypatch):
    raw = tmp_path / "nnUNet_raw"
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / key).mkdir()
        monkeypatch.setenv(key, str(tmp_path / key))
    stale = raw / ".Dataset020_Old.k2j3h.staging"
    (stale / "imagesTr").mkdir(parents=True)
    (stale / "imagesTr" / "a_0000.png").write_bytes(b"half")
    stale_old = raw / ".Dataset021_Prev.x1.staging.old"  # garbage: Dataset021_Prev is in place
    stale_old.mkdir()
    (raw / "Dataset021_Prev").mkdir()
    busy = raw / ".Dataset022_Busy.q9.staging"  # a build that is still running holds its flock
    busy.mkdir()
    other = raw / ".not_ours"
    other.mkdir()
    busy_fd = os.open(busy, os.O_RDONLY)
    fcntl.flock(busy_fd, fcntl.LOCK_EX)

    images = tmp_path / "img"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(images / f"c{i}.png")
    (tmp_path / "l.csv").write_text("case_id,label\nc0,x\nc1,y\n")
    lines = []
    try:
        out = F.from_images(str(images), str(tmp_path / "l.csv"), 24, "New", progress=lines.append)
    finally:
        os.close(busy_fd)
    assert sorted(os.listdir(raw)) == sorted([busy.name, other.name, "Dataset021_Prev", "Dataset024_New"])
    assert out.folder == str(raw / "Dataset024_New")
    removed = [line for line in lines if line.startswith("removed ")]
    assert removed == [f"removed {p}: a staging folder left behind by an interrupted dataset build"
                       for p in (stale, stale_old)]


def test_an_old_dataset_moved_aside_by_a_killed_overwrite_is_put_back(tmp_path, monkeypatch):
    from nnkd.synthetic.rawdataset import remove_stale_staging

    raw = tmp_path / "nnUNet_raw"
    raw.mkdir()
    aside = raw / ".Dataset030_Kept.ab12.staging.old"  # the old dataset, its replacement never moved in
    (aside / "imagesTr").mkdir(parents=True)
    (aside / "dataset.json").write_text("{}")
    garbage = raw / ".Dataset031_Done.cd34.staging.old"  # the new dataset is in place: the old copy is garbage
    garbage.mkdir()
    (raw / "Dataset031_Done").mkdir()
    lines = []
    assert remove_stale_staging(str(raw), lines.append) == [str(garbage)]
    assert sorted(os.listdir(raw)) == ["Dataset030_Kept", "Dataset031_Done"]
    assert (raw / "Dataset030_Kept" / "dataset.json").read_text() == "{}"
    assert lines[0] == (f"restored {raw / 'Dataset030_Kept'} from {aside}: an interrupted --overwrite had moved it "
                        f"aside")
