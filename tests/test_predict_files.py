"""How `nnkd predict` finds each case's files: one file per channel, or one natural image holding several."""
import pytest

from nnkd.commands.predict import _find_cases
from nnkd.errors import NNKDError

RGB = {"0": "R", "1": "G", "2": "B"}
PET_CT = {"0": "CT", "1": "FDG"}


def _touch(folder, *names):
    for n in names:
        (folder / n).write_bytes(b"")
    return str(folder)


def test_rgb_png_is_one_file_holding_three_channels(tmp_path):
    cases = _find_cases(_touch(tmp_path, "a_0000.png", "b_0000.png"), ".png", RGB)
    assert {k: [p.rsplit("/", 1)[1] for p in v] for k, v in cases.items()} == {"a": ["a_0000.png"],
                                                                             "b": ["b_0000.png"]}


def test_one_file_per_channel_still_required_for_volumes(tmp_path):
    folder = _touch(tmp_path, "a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz")
    with pytest.raises(NNKDError, match=r"case b: missing channel file\(s\) b_0001.nii.gz"):
        _find_cases(folder, ".nii.gz", PET_CT)


def test_png_with_a_gap_or_too_many_files_is_refused(tmp_path):
    with pytest.raises(NNKDError, match="case a: missing channel"):
        _find_cases(_touch(tmp_path, "a_0000.png", "a_0002.png"), ".png", RGB)
    (tmp_path / "a_0002.png").unlink()
    _touch(tmp_path, "a_0001.png", "a_0002.png", "a_0003.png")
    with pytest.raises(NNKDError, match=r"case a: wrong channel count"):
        _find_cases(str(tmp_path), ".png", RGB)
