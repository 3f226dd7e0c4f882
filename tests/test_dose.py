"""Low-dose CT simulation: Radon/FBP operators, physics, on-line noise, `nnkd simulate-dose`."""
import argparse
import json
import math
import os

import numpy as np
import pytest
import torch

from nnkd.dose import DOSE_LEVELS, ParallelBeam, SkimageParallelBeam, simulate_low_dose, simulate_low_doses
from nnkd.transforms.dose import LowDoseNoise, calibrate_noise_model, fbp_like_noise, water_phantom


def blobs(h, w, centres, sigma=3.0):
    """Smooth test slice: Gaussian blobs at pixel ``centres`` (band-limited, so FBP is accurate)."""
    y, x = np.mgrid[:h, :w]
    return sum(np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma ** 2)) for cy, cx in centres)


def disc_volume(n=48, nz=3, spacing=2.0, radius_mm=40.0):
    """A water disc (0 HU) in air (-1000 HU), edge blurred like a scanner's (a sharp disc
    rings), ``(Z, Y, X)``, and its central ROI mask."""
    from scipy.ndimage import gaussian_filter

    disc = gaussian_filter(water_phantom((n, n), spacing, (radius_mm, radius_mm)), 1.0)
    vol = np.repeat(disc[None], nz, 0)
    y, x = (np.mgrid[:n, :n] - (n - 1) / 2) * spacing
    return vol, (y ** 2 + x ** 2) <= (radius_mm / 2) ** 2


# -- operators -------------------------------------------------------------------------------
def test_projection_at_0_and_90_degrees_is_column_and_row_sums():
    rng = np.random.default_rng(0)
    img = rng.random((20, 26))
    g = ParallelBeam(img.shape, n_angles=26)  # even: angle 13 is exactly 90 degrees
    sino = g.project(img)[0].double().numpy()
    t = np.arange(g.n_det) - (g.n_det - 1) / 2
    for angle, sums, n in ((0, img.sum(0), 26), (13, img.sum(1), 20)):
        pos = np.arange(n) - (n - 1) / 2
        inside = np.abs(t) <= pos[-1]
        np.testing.assert_allclose(sino[angle, inside], np.interp(t[inside], pos, sums), rtol=1e-5, atol=1e-5)


def test_fbp_reconstructs_noiseless_slice_including_corners():
    """Non-square slice, one blob in a corner (outside the inscribed circle)."""
    h, w = 40, 56
    img = blobs(h, w, [(20, 28), (6, 6), (33, 49)])
    g = ParallelBeam((h, w))
    rec = g.fbp(g.project(img))[0].double().numpy()
    corner = (slice(0, 12), slice(0, 12))
    assert np.sqrt(((rec - img) ** 2).mean()) < 0.01
    assert np.abs(rec[corner] - img[corner]).mean() < 0.01 and rec[6, 6] > 0.95  # not cut by the circle
    ref = SkimageParallelBeam((h, w))
    rec_sk = ref.fbp(ref.project(img))[0]
    assert np.sqrt(((rec_sk - img) ** 2).mean()) < 0.01  # the reference agrees with the truth...
    assert np.sqrt(((rec - rec_sk) ** 2).mean()) < 0.01  # ...and with torch


def test_projection_agrees_with_skimage_on_total_attenuation():
    img = blobs(32, 32, [(10, 12), (22, 20)])
    sino = ParallelBeam(img.shape).project(img)[0].double().numpy()
    sino_sk = SkimageParallelBeam(img.shape).project(img)[0]
    # each projection integrates the whole slice, whatever the detector conventions
    np.testing.assert_allclose(sino.sum(1), img.sum(), rtol=5e-4)  # Joseph: trapezoid rule
    np.testing.assert_allclose(sino_sk.sum(1), img.sum(), rtol=1e-3)


# -- physics simulation ----------------------------------------------------------------------
def test_shape_dtype_and_noiseless_accuracy():
    vol, roi = disc_volume()
    out = simulate_low_dose(vol.astype(np.int16), (2.0, 2.0), 1e15, np.random.default_rng(0))
    assert out.shape == vol.shape and out.dtype == np.float32
    assert abs(out[:, roi].mean() - 0.0) < 2.0 and out[:, roi].std() < 3.0  # water stays 0 HU
    sk = simulate_low_dose(vol, (2.0, 2.0), 1e15, np.random.default_rng(0), backend="skimage")
    assert np.sqrt(((out[:, roi] - sk[:, roi]) ** 2).mean()) < 4.0 and abs(sk[:, roi].mean()) < 2.0


def test_noise_grows_as_dose_falls_like_inverse_sqrt():
    vol, roi = disc_volume()
    doses = list(DOSE_LEVELS) + [1e15]
    outs = simulate_low_doses(vol, (2.0, 2.0), doses, [np.random.default_rng(i) for i in range(len(doses))])
    std = np.array([(o - vol)[:, roi].std() for o in outs[:-1]])
    assert np.all(np.diff(std) > 0), std
    # the noise alone (minus the noiseless reconstruction) ~ 1/sqrt(I0): 5e4 -> 5e2 is 100x
    # fewer photons, 10x the noise (counts stay >= 100 behind this disc)
    noise = np.array([(o - outs[-1])[:, roi].std() for o in outs[:-1]])
    assert 8.5 < noise[-1] / noise[1] < 11.5, noise
    assert abs(outs[0][:, roi].mean()) < 2.0 and std[0] < 10.0  # near full dose: small bias and noise


def test_seeded_and_sinogram_reuse_does_not_change_results():
    vol, _ = disc_volume(nz=2)
    one = simulate_low_dose(vol, (2.0, 2.0), 1e4, np.random.default_rng(7))
    both = simulate_low_doses(vol, (2.0, 2.0), [1e3, 1e4], [np.random.default_rng(1), np.random.default_rng(7)])
    np.testing.assert_array_equal(one, both[1])
    assert not np.array_equal(one, simulate_low_dose(vol, (2.0, 2.0), 1e4, np.random.default_rng(8)))


def test_line_integral_variant_differs_and_stays_in_slice_range():
    vol, roi = disc_volume(nz=2)
    vol[1] = 40.0  # a constant slice is returned as is
    phys = simulate_low_dose(vol, (2.0, 2.0), 1e4, np.random.default_rng(0))
    li = simulate_low_dose(vol, (2.0, 2.0), 1e4, np.random.default_rng(0), variant="line_integral")
    assert li.shape == vol.shape and li.dtype == np.float32
    assert np.abs(li - phys).mean() > 1.0
    assert li[0].min() >= -1000 and li[0].max() <= 0  # the script clips to the slice's range
    np.testing.assert_array_equal(li[1], vol[1])
    assert (li[0] - vol[0])[roi].std() > 1.0
    with pytest.raises(ValueError, match="unknown variant"):
        simulate_low_dose(vol, (2.0, 2.0), 1e4, np.random.default_rng(0), variant="gaussian")


# -- on-line approximation -------------------------------------------------------------------
def test_fbp_like_noise_has_unit_variance_ramp_spectrum_and_independent_slices():
    g = torch.Generator().manual_seed(0)
    x = fbp_like_noise((64, 48, 48), generator=g).double()
    assert abs(x.std().item() - 1.0) < 0.02
    power = (torch.fft.fft2(x).abs() ** 2).mean(0)
    f = torch.sqrt(torch.fft.fftfreq(48)[:, None] ** 2 + torch.fft.fftfreq(48)[None] ** 2)
    assert power[(f > 0) & (f < 0.08)].mean() < 0.4 * power[(f > 0.25) & (f < 0.4)].mean()  # ramp-like
    assert abs((x[1:] * x[:-1]).mean().item()) < 0.02  # slices independent


def test_lowdose_noise_transform_scales_with_dose_and_touches_only_ct():
    torch.manual_seed(0)
    stds = []
    for dose in (1e5, 1e4, 1e3):
        t = LowDoseNoise(p=1.0, doses=[dose], channels=[0], hu_std=50.0, k=20000.0)
        image = torch.zeros(2, 8, 40, 40)
        image[1] = 3.0
        seg = torch.randint(0, 3, (1, 8, 40, 40))
        out = t(image=image.clone(), segmentation=seg.clone())
        assert torch.equal(out["image"][1], image[1]) and torch.equal(out["segmentation"], seg)
        stds.append(out["image"][0].std().item())
        assert abs(stds[-1] - 20000.0 / math.sqrt(dose) / 50.0) < 0.05 * stds[-1]
    assert stds[0] < stds[1] < stds[2]
    untouched = torch.zeros(1, 16, 16)
    out = LowDoseNoise(p=0.0, hu_std=50.0)(image=untouched.clone())
    assert torch.equal(out["image"], untouched)


def test_lowdose_noise_dose_range_and_errors():
    from nnkd.transforms.registry import BUILTIN_TRANSFORMS

    assert BUILTIN_TRANSFORMS["lowdose_noise"] is LowDoseNoise
    torch.manual_seed(0)
    t = LowDoseNoise(dose_range=(5e2, 5e4), hu_std=100.0)
    draws = np.array([t.sample_dose() for _ in range(2000)])
    assert draws.min() >= 5e2 and draws.max() <= 5e4
    assert abs(np.median(np.log10(draws)) - np.log10(5e3)) < 0.1  # log-uniform
    image2d = torch.zeros(1, 32, 32)
    out = LowDoseNoise(p=1.0, doses=[1e4], hu_std=1.0, k=100.0)(image=image2d.clone())["image"]
    assert abs(out.std().item() - 1.0) < 0.1  # 2D sample: 100 / sqrt(1e4) HU, image in HU
    with pytest.raises(ValueError, match="hu_std"):
        LowDoseNoise(channels=[0, 1], hu_std=[100.0])


def test_calibrated_noise_model_predicts_physics_noise_at_another_dose():
    cal = calibrate_noise_model((48, 48), 2.0, (40.0, 40.0), dose=1e4, n_slices=6, roi_mm=40.0)
    vol, _ = disc_volume(nz=6)
    centre = (slice(None), slice(14, 34), slice(14, 34))  # the calibration's central 40 mm square
    noise = (simulate_low_dose(vol, (2.0, 2.0), 1e3, np.random.default_rng(5)) - vol)[centre]
    assert abs(noise.std() - cal["k"] / math.sqrt(1e3)) < 0.15 * noise.std()
    assert 0.2 <= cal["cutoff"] <= 1.0


# -- nnkd simulate-dose ----------------------------------------------------------------------
@pytest.fixture
def raw_dataset(tmp_path, monkeypatch):
    import SimpleITK as sitk

    raw = tmp_path / "raw"
    src = raw / "Dataset501_Toy"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (src / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ct = np.repeat(water_phantom((32, 32), 3.0, (30.0, 40.0))[None], 16, 0).astype(np.int16)

    def write(arr, path):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((3.0, 3.0, 5.0))
        img.SetOrigin((1.0, 2.0, 3.0))
        sitk.WriteImage(img, str(path), True)

    cases = [("imagesTr", f"toy_{i:03d}") for i in range(3)] + [("imagesTs", "toy_100")]
    for folder, case in cases:
        write(ct, src / folder / f"{case}_0000.nii.gz")
        write(rng.random(ct.shape).astype(np.float32), src / folder / f"{case}_0001.nii.gz")
        if folder == "imagesTr":
            write((ct > -500).astype(np.uint8), src / "labelsTr" / f"{case}.nii.gz")
    dj = {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "body": 1},
          "numTraining": 3, "file_ending": ".nii.gz",
          "nnkd": {"case_labels": {"toy_000": 0, "toy_001": 1, "toy_002": 2}}}
    (src / "dataset.json").write_text(json.dumps(dj, indent=1))
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)
    return raw, src


def run_cli(*argv):
    from nnkd.commands import simulate_dose

    parser = argparse.ArgumentParser()
    simulate_dose.register(parser.add_subparsers())
    args = parser.parse_args(["simulate-dose", *argv])
    return args.func(args)


def test_simulate_dose_cli_end_to_end(raw_dataset, capsys):
    import SimpleITK as sitk

    raw, src = raw_dataset
    assert run_cli("501", "--dose", "1e4", "5e2", "--id", "510", "--workers", "1") == 0
    made = [raw / "Dataset510_ToyDose1e4", raw / "Dataset511_ToyDose5e2"]
    assert sorted(os.listdir(raw)) == sorted(["Dataset501_Toy"] + [m.name for m in made])  # nothing partial
    stds = []
    for target, dose in zip(made, (1e4, 5e2)):
        for rel in ["dataset.json", "labelsTr/toy_001.nii.gz", "imagesTr/toy_002_0001.nii.gz",
                    "imagesTs/toy_100_0001.nii.gz"]:
            assert (target / rel).read_bytes() == (src / rel).read_bytes(), rel
        assert json.loads((target / "dataset.json").read_text())["nnkd"]["case_labels"]["toy_002"] == 2
        record = json.loads((target / "dose.json").read_text())
        assert record["I0"] == dose and record["source"] == "Dataset501_Toy" and record["variant"] == "physics"
        for rel in ["imagesTr/toy_000_0000.nii.gz", "imagesTs/toy_100_0000.nii.gz"]:
            a, b = sitk.ReadImage(str(src / rel)), sitk.ReadImage(str(target / rel))
            assert b.GetSpacing() == a.GetSpacing() and b.GetOrigin() == a.GetOrigin()
            diff = sitk.GetArrayFromImage(b).astype(float) - sitk.GetArrayFromImage(a)
            assert sitk.GetArrayFromImage(b).dtype == np.int16 and diff.std() > 1.0
        stds.append(diff.std())
    assert stds[0] < stds[1]
    assert str(made[0]) in capsys.readouterr().out


def test_simulate_dose_refuses_existing_target_and_cleans_up_on_failure(raw_dataset):
    from nnkd.errors import NNKDError

    raw, src = raw_dataset
    (raw / "Dataset511_ToyDose5e2").mkdir()
    with pytest.raises(NNKDError, match="Dataset511_ToyDose5e2 exists; pass --overwrite"):
        run_cli("Dataset501_Toy", "--dose", "1e4", "5e2", "--id", "510", "--workers", "1")
    assert sorted(os.listdir(raw)) == ["Dataset501_Toy", "Dataset511_ToyDose5e2"]  # Dataset510 not made
    (raw / "Dataset511_ToyDose5e2").rmdir()
    with pytest.raises(NNKDError, match="dataset id 501 is the source"):
        run_cli("501", "--dose", "1e4", "--id", "501", "--workers", "1")
    with pytest.raises(NNKDError, match="source dataset: dataset '777': "):
        run_cli("777", "--dose", "1e4", "--id", "510", "--workers", "1")
    (src / "imagesTr" / "toy_002_0000.nii.gz").write_bytes(b"not an image")
    with pytest.raises(NNKDError, match="toy_002_0000.nii.gz: cannot read image"):
        run_cli("501", "--dose", "1e4", "5e2", "--id", "510", "--workers", "1")
    assert os.listdir(raw) == ["Dataset501_Toy"]  # no dataset, no hidden partial folder


def test_simulate_dose_same_result_with_a_process_pool(raw_dataset):
    import SimpleITK as sitk

    raw, _ = raw_dataset
    run_cli("501", "--dose", "1e3", "--id", "520", "--workers", "1", "--seed", "3")
    run_cli("501", "--dose", "1e3", "--id", "521", "--workers", "2", "--seed", "3")
    for rel in ("imagesTr/toy_001_0000.nii.gz", "imagesTs/toy_100_0000.nii.gz"):
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(raw / d / rel)))
                for d in ("Dataset520_ToyDose1e3", "Dataset521_ToyDose1e3"))
        np.testing.assert_array_equal(a, b)


def test_dose_tag():
    from nnkd.dose.dataset import dose_tag, target_name

    assert [dose_tag(d) for d in (1e6, 5e4, 1e4, 1e3, 5e2, 2.5e4)] == ["1e6", "5e4", "1e4", "1e3", "5e2", "2p5e4"]
    assert target_name("Dataset010_Liver", 12, 1e4, "line_integral") == "Dataset012_LiverDose1e4LineInt"
