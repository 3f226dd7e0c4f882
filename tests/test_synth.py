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
# ground truth without nnU-Net: a simple model on a handful of image features shows that the
# teacher modality is near-perfect, the student modality weaker but real (its documented oracle),
# and, for paired3d, that the teacher's signal ranks cases within a grade (privileged information)


def _cv_macro_auc(features: np.ndarray, y: np.ndarray) -> float:
    """5-fold cross-validated logistic regression on standardised features: macro one-vs-rest AUC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    p = cross_val_predict(model, np.atleast_2d(features.T).T, y, method="predict_proba",
                          cv=StratifiedKFold(5, shuffle=True, random_state=0))
    return roc_auc_score(y, p, multi_class="ovr") if p.shape[1] > 2 else roc_auc_score(y, p[:, 1])


def _core_fraction_from_ct(ct: np.ndarray, seg: np.ndarray) -> float:
    """Share of tumour voxels darker than the 1st percentile of the liver away from the tumour: the
    necrotic core's share, read from ranks only (unchanged by any increasing intensity transform)."""
    tumour = seg == 2
    liver = (seg == 1) & ~ndimage.binary_dilation(tumour, iterations=2)
    return float((ct[tumour] < np.percentile(ct[liver], 1)).mean())


def _augment_intensity(ct: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """nnU-Net-like intensity augmentation of a z-scored image: brightness, contrast, gamma (increasing maps)."""
    x = (ct.astype(float) - 40.0) / 60.0 * rng.uniform(0.75, 1.25)
    x = (x - x.mean()) * rng.uniform(0.75, 1.25) + x.mean()
    lo, hi = x.min(), x.max()
    return ((x - lo) / (hi - lo)) ** rng.uniform(0.7, 1.5) * (hi - lo) + lo


@pytest.fixture(scope="module")
def paired3d_cases():
    rows = []
    for i in range(90):
        grade = i % 3
        (ct, fdg, ace), seg, truth = paired3d.make_case(np.random.default_rng(100 + i), grade, (16, 32, 32))
        t, liv = seg == 2, seg == 1
        aug = _augment_intensity(ct, np.random.default_rng(i))
        rows.append({"grade": grade, "severity": truth["severity"], "core_fraction": truth["core_fraction"],
                     "ct_cue": truth["ct_cue"],
                     "fdg": np.log(fdg[t].mean() / fdg[liv].mean()), "ace": np.log(ace[t].mean() / ace[liv].mean()),
                     "ct_core": _core_fraction_from_ct(ct, seg), "ct_core_aug": _core_fraction_from_ct(aug, seg),
                     # the tumour-to-liver contrast (median HU difference), plain and under augmentation
                     "ct_contrast": np.median(ct[t]) - np.median(ct[liv]),
                     "ct_contrast_aug": np.median(aug[t]) - np.median(aug[liv])})
    return {k: np.asarray([r[k] for r in rows]) for k in rows[0]}


def test_paired3d_grade_is_a_noisy_threshold_of_the_severity(paired3d_cases):
    c = paired3d_cases
    ideal = np.digitize(c["severity"], paired3d.THRESHOLDS)
    assert 0.75 < np.mean(ideal == c["grade"]) < 1  # label noise, only near the thresholds
    assert np.all(np.abs(c["severity"][ideal != c["grade"]] - np.asarray(paired3d.THRESHOLDS)[:, None]).min(0) < 0.2)
    for g in range(3):  # every grade spans a range of severities
        assert np.ptp(c["severity"][c["grade"] == g]) > 0.25


def test_paired3d_pet_is_near_perfect_ct_weaker_but_real(paired3d_cases):
    c = paired3d_cases
    pet = _cv_macro_auc(np.c_[c["fdg"], c["ace"]], c["grade"])
    oracle = _cv_macro_auc(c["ct_cue"], c["grade"])  # the true CT cue: the student's documented oracle
    assert pet > 0.93  # near-perfect; the label noise keeps it below 1
    assert oracle < pet - 0.05  # the student's modality is noisier
    for feature in ("ct_contrast", "ct_core"):  # both CT readouts are real, neither beats the oracle by much
        assert 0.65 < _cv_macro_auc(c[feature], c["grade"]) < oracle + 0.03, feature
    assert stats.spearmanr(c["ct_core"], c["core_fraction"])[0] > 0.6  # the image shows the core
    assert stats.spearmanr(c["ct_contrast"], c["ct_cue"])[0] < -0.8  # darker tumour, higher cue


def test_paired3d_pet_carries_the_severity_within_a_grade(paired3d_cases):
    """Privileged information beyond the label: within each grade the PET uptake ratios still rank the
    cases by severity, so a teacher reading them has soft outputs that say more than the grade."""
    c = paired3d_cases
    for g in range(3):
        within = c["grade"] == g
        assert stats.spearmanr(c["fdg"][within], c["severity"][within])[0] > 0.7
        assert stats.spearmanr(c["ace"][within], c["severity"][within])[0] < -0.7


def test_paired3d_ct_cue_survives_intensity_augmentation(paired3d_cases):
    c = paired3d_cases
    # the core cue is a share of voxels by rank: brightness, contrast and gamma leave it unchanged
    assert np.allclose(c["ct_core_aug"], c["ct_core"])
    assert _cv_macro_auc(c["ct_core_aug"], c["grade"]) == pytest.approx(_cv_macro_auc(c["ct_core"], c["grade"]))
    # the contrast keeps its sign in every case and most of its information even with every case augmented
    # (nnU-Net augments 15-30 % of the training samples)
    assert np.all(c["ct_contrast_aug"] < 0)
    assert _cv_macro_auc(c["ct_contrast_aug"], c["grade"]) > 0.65


def _spectral_features(rgb: np.ndarray, mask: np.ndarray) -> list[float]:
    """Pattern structure inside the polyp: shares of the band energy in the top 2, 4 and 8 Fourier
    bins (stripes: 2 peaks, lattice: 4, irregular: spread) and the band's share of all energy."""
    grey = rgb.astype(float).mean(-1)
    core = ndimage.binary_erosion(mask, iterations=2)
    high = grey - ndimage.gaussian_filter(grey, 4.0)
    power = np.abs(np.fft.fft2(core * (high - high[core].mean()))) ** 2
    f = np.hypot(*np.meshgrid(*(np.fft.fftfreq(n) for n in grey.shape), indexing="ij"))
    band = np.sort(power[(f > 1 / 14) & (f < 1 / 6)])[::-1]  # periods 8-11 px at 64x64
    return [band[:2].sum() / band.sum(), band[:4].sum() / band.sum(), band[:8].sum() / band.sum(),
            np.log(band.sum() / power.sum())]


def test_unpaired2d_patterns_near_perfect_in_nbi_weaker_in_wli():
    auc = {}
    for m in (unpaired2d.NARROW_BAND, unpaired2d.WHITE_LIGHT):
        x, y = [], []
        for i in range(90):
            rgb, mask, _ = unpaired2d.make_case(np.random.default_rng(i), i % 3, (64, 64), m)
            x.append(_spectral_features(rgb, mask.astype(bool)))
            y.append(i % 3)
        auc[m.name] = _cv_macro_auc(np.asarray(x), np.asarray(y))
    assert auc["NBI"] > 0.97
    assert 0.7 < auc["WLI"] < auc["NBI"] - 0.05


def _colour_contrast(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per RGB channel: log mean colour inside the polyp minus log mean of a ring 2-6 px around it
    (a colour cast or brightness gain multiplies both, so it cancels)."""
    rgb = rgb.astype(float) + 1
    inner = ndimage.binary_erosion(mask, iterations=2)
    ring = ndimage.binary_dilation(mask, iterations=6) & ~ndimage.binary_dilation(mask, iterations=2)
    ring &= unpaired2d.field_of_view(mask.shape)
    return np.log(rgb[inner].mean(0)) - np.log(rgb[ring].mean(0))


def test_unpaired2d_class_colour_clear_in_nbi_faint_but_real_in_wli():
    auc = {}
    for m in (unpaired2d.NARROW_BAND, unpaired2d.WHITE_LIGHT):
        x, y = [], []
        for i in range(90):
            rgb, mask, truth = unpaired2d.make_case(np.random.default_rng(i), i % 3, (64, 64), m)
            x.append(_colour_contrast(rgb, mask.astype(bool)))
            y.append(i % 3)
            assert 0.5 * m.class_colour - 1e-3 <= np.linalg.norm(truth["colour_shift"]) <= m.class_colour + 1e-3
        auc[m.name] = _cv_macro_auc(np.asarray(x), np.asarray(y))
    assert auc["NBI"] > 0.97
    assert 0.7 < auc["WLI"] < 0.9  # measured 0.83 on 150 cases: the white-light student's documented oracle


def _disc_contrast(grey: np.ndarray, centre, radius: float) -> float:
    """Mean inside 0.8 radius minus the mean of a ring 2-6 px outside: a matched filter of known size."""
    yy, xx = np.mgrid[: grey.shape[0], : grey.shape[1]]
    d = np.hypot(yy - centre[0], xx - centre[1])
    return grey[d <= 0.8 * radius].mean() - grey[(d > radius + 2) & (d <= radius + 6)].mean()


def test_lesion2d_lesions_clear_for_teacher_faint_but_real_for_student():
    auc = {}
    for m in (lesion2d.HIGH_CONTRAST, lesion2d.LOW_CONTRAST):
        scores, y = [], []
        for i in range(60):
            grey, mask, truth = lesion2d.make_case(np.random.default_rng(i), i % 4, (64, 64), m)
            grey = grey.astype(float) / lesion2d.MAX_VALUE
            rng = np.random.default_rng(1000 + i)
            for les in truth["lesions"]:
                scores.append(_disc_contrast(grey, les["centre"], les["radius"]))
                y.append(1)
                for _ in range(100):  # an equally sized lesion-free disc inside the breast
                    c, r = rng.uniform([14, 12], [50, 38]), les["radius"]
                    yy, xx = np.mgrid[:64, :64]
                    if not (mask.astype(bool) & (np.hypot(yy - c[0], xx - c[1]) <= r + 6)).any():
                        scores.append(_disc_contrast(grey, c, r))
                        y.append(0)
                        break
        auc[m.name] = _cv_macro_auc(np.asarray(scores), np.asarray(y))
    assert auc["HighContrast"] > 0.97
    assert 0.7 < auc["LowContrast"] < auc["HighContrast"] - 0.05


def test_lesion2d_lesions_span_cells_of_a_stride8_stage():
    radii = [les["radius"] for i in range(12)
             for les in lesion2d.make_case(np.random.default_rng(i), 3, (64, 64), lesion2d.LOW_CONTRAST)[2]["lesions"]]
    assert len(radii) == 36 and 2 * min(radii) / 8 >= 2 and 2 * max(radii) <= 24 + 1e-9


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
