import os
import stat

import pytest

from nnkd.io import atomic_path, read_csv_rows, write_json, write_text
from nnkd.errors import NNKDError


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"x": 1})
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("crash while writing")
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.json"]


def test_modes_follow_umask_or_replaced_file(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "new.txt", "x")
        assert stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode) == 0o644
        os.chmod(tmp_path / "new.txt", 0o600)
        write_text(tmp_path / "new.txt", "y")
        assert stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode) == 0o600
    finally:
        os.umask(old)


def test_suffix_kept_for_writers_that_dispatch_on_it(tmp_path):
    with atomic_path(tmp_path / "img.nii.gz") as tmp:
        assert tmp.endswith(".nii.gz")
        open(tmp, "w").close()


def test_read_csv_rows_errors(tmp_path):
    with pytest.raises(NNKDError, match="cannot read box file"):
        read_csv_rows(tmp_path / "none.csv", "box file")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(NNKDError, match="e.csv: empty file, expected header a,b"):
        read_csv_rows(tmp_path / "e.csv", "x", "a,b")
