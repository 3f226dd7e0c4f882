"""Synthetic datasets: geometry helpers, ground truth that matches the masks, a signal that is
stronger in the teacher modality, the raw dataset layout, and nnU-Net's integrity check."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage, stats

from nnkd import labels as L
from nnkd.dataset_folders import training_case_ids
from nnkd.errors import NNKDError
from nnkd.synthetic import geometry, lesion2d, paired3d, rawdataset, textures, unpaired2d

# ---------------------------------------------------------------------------------------------
# geometry and textures against naive references


def test_ellipsoid_masks_and_boxes_match_loops():
    rng = np.random.default_rng(0)
    shape = (7, 9, 11)
    centres, radii = rng.uniform(2, 6, (3, 3)), rng.uniform(1.5, 3.5, (3, 3))
    masks = geometry.ellipsoid_masks(shape, centres, radii)
    for l in range(3):
        for idx in np.ndindex(shape):
            inside = sum(((i - c) / r) ** 2 for i, c, r in zip(idx, centres[l], radii[l])) <= 1
            assert masks[(l, *idx)] == inside
    boxes = geometry.mask_boxes(masks)
    for l in range(3):
        where = np.argwhere(masks[l])
        assert boxes[l].tolist() == [where.min(0).tolist(), where.max(0).tolist()]


def test_pick_separated_keeps_gap_greedily():
    rng = np.random.default_rng(1)
    pts, radii = rng.uniform(0, 20, (40, 2)), rng.uniform(1, 3, 40)
    kept = geometry.pick_separated(pts, radii, gap=2.0)
    assert kept[0] == 0
    for a in kept:
        for b in kept:
            if a != b:
                assert np.linalg.norm(pts[a] - pts[b]) >= radii[a] + radii[b] + 2.0
    rejected = sorted(set(range(40)) - set(kept.tolist()))
    for r in rejected:  # each rejected point clashes with an earlier kept one
        assert any(np.linalg.norm(pts[r] - pts[k]) < radii[r] + radii[k] + 2 for k in kept if k < r)


def test_uniform_in_ellipsoid_and_noise_fields():
    rng = np.random.default_rng(2)
    pts = geometry.uniform_in_ellipsoid(rng, 4000, (5.0, -3.0), (4.0, 1.0))
    assert (((pts - (5.0, -3.0)) / (4.0, 1.0)) ** 2).sum(1).max() <= 1 + 1e-9
    assert abs((((pts - (5, -3)) / (4, 1)) ** 2).sum(1).mean() - 0.5) < 0.02  # E[r^2] = D / (D + 2) in 2D
    for field in (textures.smooth_noise(rng, (32, 32), 2.0), textures.power_law_noise(rng, (16, 16, 16), 3.0)):
        assert abs(field.mean()) < 1e-9 and abs(field.std() - 1) < 1e-9
    # 1/f^3 noise: neighbouring pixels correlate far more than with white noise
    f = textures.power_law_noise(rng, (64, 64), 3.0)
    assert np.corrcoef(f[:, :-1].ravel(), f[:, 1:].ravel())[0, 1] > 0.8


# ---------------------------------------------------------------------------------------------
# ground truth consistent with the masks


def _check_lesions_match_mask(mask: np.ndarray, lesions: list[dict]):
    """Connected components (full connectivity) of ``mask`` are exactly the truth lesions."""
    comp, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    assert n == len(lesions)
    from_mask = sorted(([s.start for s in sl], [s.stop - 1 for s in sl]) for sl in ndimage.find_objects(comp))
    assert sorted((les["bbox"][0], les["bbox"][1]) for les in lesions) == [tuple(b) for b in from_mask]
    centroids = ndimage.center_of_mass(mask, comp, range(1, n + 1))
    truth_centres = sorted(tuple(les["centre"]) for les in lesions)
    assert np.allclose(sorted(centroids), truth_centres, atol=1e-3)
    assert sorted(int(c) for c in np.bincount(comp.ravel())[1:]) == sorted(les["voxels"] for les in lesions)


def test_paired3d_case_truth_and_determinism():
    for grade in range(3):
        images, seg, truth = paired3d.make_case(np.random.default_rng(grade), grade, (16, 32, 32))
        again = paired3d.make_case(np.random.default_rng(grade), grade, (16, 32, 32))
        assert all(np.array_equal(a, b) for a, b in zip(images + [seg], again[0] + [again[1]]))
        assert [im.shape for im in images] == [(16, 32, 32)] * 3 and images[0].dtype == np.int16
        assert 1 <= len(truth["lesions"]) <= 2
        _check_lesions_match_mask(seg == 2, truth["lesions"])
        assert set(np.unique(seg)) == {0, 1, 2}
        assert images[0].min() < -900 and -100 < np.median(images[0][seg == 1]) < 200  # HU: air and liver


def test_lesion2d_case_truth():
    for n in range(4):
        grey, mask, truth = lesion2d.make_case(np.random.default_rng(10 + n), n, (64, 64), lesion2d.LOW_CONTRAST)
        assert grey.dtype == np.uint16 and grey.max() <= lesion2d.MAX_VALUE
        assert len(truth["lesions"]) == n  # 64 x 64 leaves room for 3 lesions
        _check_lesions_match_mask(mask == 1, truth["lesions"])


def test_unpaired2d_case_truth():
    for cls in range(3):
        rgb, mask, truth = unpaired2d.make_case(np.random.default_rng(cls), cls, (64, 64), unpaired2d.NARROW_BAND)
        assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
        _check_lesions_match_mask(mask == 1, truth["lesions"])


# ---------------------------------------------------------------------------------------------
# the class / lesion signal: clear for the teacher modality, faint but present for the student


def test_paired3d_grade_is_clear_in_pet_faint_in_ct():
    rows = []
    for i in range(18):
        grade = i % 3
        (ct, fdg, ace), seg, _ = paired3d.make_case(np.random.default_rng(100 + i), grade, (16, 32, 32))
        t, liv = seg == 2, seg == 1
        rows.append((grade, fdg[t].mean() / fdg[liv].mean(), ace[t].mean() / ace[liv].mean(),
                     ct[t].mean() - ct[liv].mean()))
    grade, fdg_r, ace_r, ct_c = map(np.asarray, zip(*rows))
    rho_fdg, rho_ace, rho_ct = (stats.spearmanr(grade, v)[0] for v in (fdg_r, ace_r, ct_c))
    assert rho_fdg > 0.85 and rho_ace < -0.85  # opposite trends, both clear
    assert -0.85 < rho_ct < 0  # CT: darker tumours with grade, but weakly


def _lesion_cnr(grey: np.ndarray, mask: np.ndarray) -> float:
    """Mean contrast-to-noise of the lesions against a 3-pixel ring around them."""
    ring = ndimage.binary_dilation(mask, iterations=4) & ~ndimage.binary_dilation(mask, iterations=1)
    return (grey[mask].mean() - grey[ring].mean()) / grey[ring].std()


def test_lesion2d_teacher_contrast_exceeds_student():
    cnr = {}
    for m in (lesion2d.LOW_CONTRAST, lesion2d.HIGH_CONTRAST):
        values = [_lesion_cnr(g.astype(float), k == 1) for g, k, _ in
                  (lesion2d.make_case(np.random.default_rng(i), 2, (64, 64), m) for i in range(8))]
        cnr[m.name] = np.mean(values)
    assert cnr["HighContrast"] > 2 * cnr["LowContrast"] > 0


def test_unpaired2d_pattern_stronger_in_teacher():
    def pattern_energy(modality):
        ratios = []
        for i in range(6):
            rgb, mask, _ = unpaired2d.make_case(np.random.default_rng(i), i % 3, (64, 64), modality)
            grey = rgb.astype(float).mean(-1)
            high = grey - ndimage.gaussian_filter(grey, 3.0)  # the pattern's band, not the polyp's shape
            core = ndimage.binary_erosion(mask, iterations=3).astype(bool)
            outside = unpaired2d.field_of_view((64, 64)) & ~ndimage.binary_dilation(mask, iterations=3)
            ratios.append(high[core].std() / high[outside].std())
        return np.median(ratios)

    student, teacher = pattern_energy(unpaired2d.WHITE_LIGHT), pattern_energy(unpaired2d.NARROW_BAND)
    assert teacher > 3 * student and student > 1.0


# ---------------------------------------------------------------------------------------------
# writing raw datasets


@pytest.fixture
def roots(tmp_path, monkeypatch):
    out = {k: tmp_path / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for key, path in out.items():
        monkeypatch.setenv(key, str(path))
    out["nnUNet_raw"].mkdir()
    return out


def _load(folder, name):
    with open(os.path.join(folder, name)) as f:
        return json.load(f)


def test_lesion2d_dataset_layout_labels_and_truth(roots):
    from skimage import io

    folders = lesion2d.generate(21, cases=5, seed=3)
    assert [os.path.basename(f) for f in folders] == ["Dataset021_SynthLesion_LowContrast",
                                                      "Dataset022_SynthLesion_HighContrast"]
    ids = []
    for folder in folders:
        doc, truth = _load(folder, "dataset.json"), _load(folder, rawdataset.TRUTH_FILE)
        assert doc["channel_names"] == {"0": "mammo"} and doc["numTraining"] == 5 and doc["file_ending"] == ".png"
        names, labels = L.stored_labels(doc)
        cases = training_case_ids(folder)
        assert names == ["negative", "positive"] and sorted(labels) == cases == sorted(truth["cases"])
        for case in cases:
            mask = io.imread(os.path.join(folder, "labelsTr", case + ".png"))
            lesions = truth["cases"][case]["lesions"]
            _check_lesions_match_mask(mask == 1, lesions)
            assert labels[case] == truth["cases"][case]["class"] == ("positive" if lesions else "negative")
            assert io.imread(os.path.join(folder, "imagesTr", case + "_0000.png")).dtype == np.uint16
        ids.append(set(cases))
    assert not ids[0] & ids[1]  # unpaired: disjoint cases
    # lesion counts 0..3 in equal shares per dataset: with 5 cases, one count appears twice
    counts = [len(c["lesions"]) for c in _load(folders[0], rawdataset.TRUTH_FILE)["cases"].values()]
    assert sorted(counts) in ([0, 0, 1, 2, 3], [0, 1, 1, 2, 3], [0, 1, 2, 2, 3], [0, 1, 2, 3, 3])
    assert sorted(np.bincount(counts, minlength=4)) == [1, 1, 1, 2]
    assert not [p for p in os.listdir(roots["nnUNet_raw"]) if p.startswith(".")]  # no staging left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(os.path.join(folders[0], "dataset.json")).st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(folders[0]).st_mode) == 0o777 & ~umask


def test_generation_is_deterministic_and_seeded(roots):
    a = paired3d.generate(31, cases=2, seed=5, name="A")[0]
    b = paired3d.generate(32, cases=2, seed=5, name="B")[0]
    c = paired3d.generate(33, cases=2, seed=6, name="C")[0]
    ta, tb, tc = (_load(f, rawdataset.TRUTH_FILE)["cases"] for f in (a, b, c))
    assert ta == tb and ta != tc
    assert _load(a, "dataset.json")["nnkd"] == _load(b, "dataset.json")["nnkd"]
    assert ta["liver_001"]["seed"] == [5, 0, 1]
    grade = paired3d.GRADES.index(ta["liver_001"]["class"])
    _, _, truth = paired3d.make_case(rawdataset.case_rng(5, 0, 1), grade, paired3d.DEFAULT_SIZE)
    assert truth["lesions"] == ta["liver_001"]["lesions"]  # a case is reproducible from its recorded seed


def test_unpaired2d_masks_hold_no_lesion_unless_asked(roots):
    from skimage import io

    plain = unpaired2d.generate(41, cases=3)
    masked = unpaired2d.generate(43, cases=3, name="Masked", lesion_masks=True)
    for folder, expect in ((plain[0], False), (masked[1], True)):
        truth = _load(folder, rawdataset.TRUTH_FILE)
        assert truth["lesion_masks_written"] is expect
        for case, t in truth["cases"].items():
            mask = io.imread(os.path.join(folder, "labelsTr", case + ".png"))
            if expect:
                _check_lesions_match_mask(mask == 1, t["lesions"])
            else:  # the field of view: no lesion information, but foreground for nnU-Net's fingerprint
                assert np.array_equal(mask == 1, unpaired2d.field_of_view((64, 64))) and len(t["lesions"]) == 1
        image = io.imread(os.path.join(folder, "imagesTr", next(iter(truth["cases"])) + "_0000.png"))
        assert image.shape == (64, 64, 3) and not image[~unpaired2d.field_of_view((64, 64))].any()
        assert _load(folder, "dataset.json")["labels"] == (unpaired2d.LABELS if expect else unpaired2d.FOV_LABELS)
    assert L.stored_labels(_load(plain[1], "dataset.json"))[0] == ["adenoma", "hyperplastic", "serrated"]


def test_refusals(roots, monkeypatch):
    folder = paired3d.generate(51, cases=1)[0]
    before = open(os.path.join(folder, rawdataset.TRUTH_FILE), "rb").read()
    with pytest.raises(NNKDError, match="Dataset051_SynthLiverPETCT already exists.*--overwrite"):
        paired3d.generate(51, cases=1, seed=9)
    assert open(os.path.join(folder, rawdataset.TRUTH_FILE), "rb").read() == before
    paired3d.generate(51, cases=2, seed=9, overwrite=True)
    assert _load(folder, "dataset.json")["numTraining"] == 2
    with pytest.raises(NNKDError, match="id 51 is already used by Dataset051_SynthLiverPETCT"):
        paired3d.generate(51, cases=1, name="Other", overwrite=True)
    (roots["nnUNet_results"] / "Dataset054_Taken").mkdir(parents=True)
    with pytest.raises(NNKDError, match="id 54 is already used by Dataset054_Taken"):
        unpaired2d.generate(53, cases=1, name="X")  # the teacher (id 54) collides
    assert not os.path.exists(roots["nnUNet_raw"] / "Dataset053_X_WLI")  # nothing of the pair was written
    with pytest.raises(NNKDError, match="outside 1..999"):
        lesion2d.generate(999, cases=1)
    with pytest.raises(NNKDError, match="--size 8 8: give 1 or 2 values, each at least 32"):
        lesion2d.generate(60, size=(8, 8))
    with pytest.raises(NNKDError, match="--cases must be at least 1"):
        paired3d.generate(60, cases=0)
    monkeypatch.delenv("nnUNet_raw")
    with pytest.raises(NNKDError, match="nnUNet_raw is not set"):
        paired3d.generate(61, cases=1)


def test_interrupted_generation_leaves_nothing(roots, monkeypatch):
    calls = {"n": 0}
    real = rawdataset.write_image

    def flaky(path, array, spacing):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(path, array, spacing)

    monkeypatch.setattr(rawdataset, "write_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        unpaired2d.generate(71, cases=3)
    assert os.listdir(roots["nnUNet_raw"]) == []


# ---------------------------------------------------------------------------------------------
# the CLI


def _run(cmd, roots):
    env = {**os.environ, **{k: str(v) for k, v in roots.items()}, "nnUNet_def_n_proc": "1"}
    env.pop("nnUNet_n_proc_DA", None)  # 0 would make the planner call torch.set_num_threads(0) and crash
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


# Every kind passes nnU-Net's own integrity check (nnUNetv2_plan_and_preprocess --verify_dataset_integrity)
# in the integration modules' fixtures: paired3d in test_integration_paired.py, unpaired2d and lesion2d
# in test_integration_unpaired.py.


def test_cli_refuses_an_existing_dataset(roots):
    made = _run([sys.executable, "-m", "nnkd.cli", "synth", "lesion2d", "--id", "81", "--cases", "4", "--size", "32"],
                roots)
    assert made.returncode == 0, made.stderr
    assert "nnUNetv2_plan_and_preprocess -d 81 82 -c 2d" in made.stdout
    again = _run([sys.executable, "-m", "nnkd.cli", "synth", "lesion2d", "--id", "81", "--cases", "4", "--size", "32"],
                 roots)
    assert again.returncode == 2 and "nnkd: error:" in again.stderr and "--overwrite" in again.stderr
