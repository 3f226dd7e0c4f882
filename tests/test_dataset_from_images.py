"""`nnkd dataset from-images`: image folder + case_id,label CSV -> nnU-Net raw 2D RGB dataset.

Pixel conversion, the one-error refusal that leaves nothing behind, masks kept with their values,
dataset ids, and one run of nnU-Net's planner on the result (all-background masks would crash it).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import nnkd_cli, run_cli
from nnkd import image_folder as F
from nnkd import labels as L
from nnkd.errors import NNKDError
from nnkd.labels import masks_hold_lesions
from nnkd.synthetic import unpaired2d
from nnkd.synthetic.plan_and_preprocess import COMMAND as PLAN_AND_PREPROCESS  # planning sized for tiny datasets

RNG = np.random.default_rng(0)


def rgb(shape=(32, 32)):
    return RNG.integers(0, 256, (*shape, 3), dtype=np.uint8)


def save(folder, name, array, mode=None):
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(array, mode).save(os.path.join(folder, name))


def labels_csv(path, rows):
    path.write_text("case_id,label\n" + "".join(f"{c},{lab}\n" for c, lab in rows))
    return str(path)


def mixed_folder(tmp_path):
    """Six 32x32 images in four formats and pixel types, their label CSV and the expected RGB arrays."""
    folder = tmp_path / "images"
    expected = {"p1": rgb(), "j2": None, "grey 3": None, "rgba4": rgb(), "bmp5": rgb(), "tif6": rgb()}
    save(folder, "p1.png", expected["p1"])
    save(folder, "j2.JPG", rgb())
    grey = RNG.integers(0, 256, (32, 32), dtype=np.uint8)
    save(folder, "grey 3.png", grey)
    expected["grey 3"] = np.repeat(grey[..., None], 3, -1)
    save(folder, "rgba4.png", np.dstack([expected["rgba4"], RNG.integers(0, 256, (32, 32), dtype=np.uint8)]))
    save(folder, "bmp5.bmp", expected["bmp5"])
    save(folder, "tif6.tiff", expected["tif6"])
    (folder / "notes.txt").write_text("not an image")
    csv = labels_csv(tmp_path / "labels.csv", [("p1", "G1"), ("j2", "G2"), ("grey 3", "G10"), ("rgba4", "G1"),
                                               ("bmp5", "G2"), ("tif6", "G10")])
    return str(folder), csv, expected


def load(folder, name):
    with open(os.path.join(folder, name)) as f:
        return json.load(f)


def read_png(path):
    return np.asarray(Image.open(path))


@pytest.mark.integration  # nnU-Net's planner in a subprocess: ~30 s on an idle 2-core machine
def test_mixed_folder_converts_and_nnunet_plans_it(nnunet_env, tmp_path, capsys):
    images, csv, expected = mixed_folder(tmp_path)
    out = nnkd_cli("dataset", "from-images", images, csv, "--id", 12, "--name", "Endo", env=nnunet_env)
    raw = os.path.join(nnunet_env["nnUNet_raw"], "Dataset012_Endo")
    assert f"written: {raw} (6 cases)" in out.stdout and "0=G1 (2), 1=G2 (2), 2=G10 (2)" in out.stdout
    assert "'grey 3' -> grey_3" in out.stdout and "notes.txt" in out.stdout
    doc = load(raw, "dataset.json")
    assert doc["labels"] == {"background": 0, "image": 1} and doc["file_ending"] == ".png"
    assert doc["overwrite_image_reader_writer"] == "NaturalImage2DIO" and doc["numTraining"] == 6
    assert doc["nnkd"]["masks"] == "none" and not masks_hold_lesions(doc)
    assert L.stored_labels(doc) == (["G1", "G2", "G10"], {"bmp5": "G2", "grey_3": "G10", "j2": "G2", "p1": "G1",
                                                          "rgba4": "G1", "tif6": "G10"})
    assert load(raw, F.SOURCES_FILE)["cases"]["grey_3"]["image"] == "grey 3.png"
    for case, want in expected.items():
        image = read_png(os.path.join(raw, "imagesTr", F.case_identifier(case) + "_0000.png"))
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        if want is not None:  # lossless sources: exact pixels (grey repeated, alpha dropped)
            assert np.array_equal(image, want), case
        assert (read_png(os.path.join(raw, "labelsTr", F.case_identifier(case) + ".png")) == 1).all()

    run_cli([*PLAN_AND_PREPROCESS, "-d", "12", "-c", "2d", "-np", "1", "-npfp", "1"], env=nnunet_env)
    pre = os.path.join(nnunet_env["nnUNet_preprocessed"], "Dataset012_Endo")
    assert len([f for f in os.listdir(os.path.join(pre, "nnUNetPlans_2d")) if f.endswith(".pkl")]) == 6
    assert not masks_hold_lesions(load(pre, "dataset.json"))  # what the trainer reads
    from nnkd.cli import main

    assert main(["labels", "show", "12"]) == 0  # in-process: nnunet_env exported the paths here too
    shown = capsys.readouterr().out
    assert "Dataset012_Endo" in shown and all(c in shown for c in ("G1", "G2", "G10"))


def test_pixel_types_become_8bit_rgb(tmp_path):
    grey16 = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 64
    save(tmp_path, "g16.png", grey16)
    assert np.array_equal(F.read_image(str(tmp_path / "g16.png"))[..., 1], np.round(grey16 / 257).astype(np.uint8))
    bw = np.zeros((32, 32), bool)
    bw[:, :5] = True
    save(tmp_path, "bw.png", bw)
    assert F.read_image(str(tmp_path / "bw.png"))[:, :5].min() == 255
    pal = Image.fromarray(rgb()).convert("P")
    pal.save(tmp_path / "pal.png")
    assert np.array_equal(F.read_image(str(tmp_path / "pal.png")), np.asarray(pal.convert("RGB")))
    save(tmp_path, "f.tif", np.zeros((32, 32), np.float32))
    with pytest.raises(ValueError, match="floating-point"):
        F.read_image(str(tmp_path / "f.tif"))


def test_every_problem_in_one_error_and_nothing_written(nnunet_env, tmp_path):
    images, csv, _ = mixed_folder(tmp_path)
    (tmp_path / "images" / "broken.png").write_bytes(b"no png here")
    save(images, "stray.png", rgb())
    with open(csv, "a") as f:
        f.write("broken,G1\nghost,G2\nj2.jpg,G1\n")
    with pytest.raises(NNKDError) as err:
        F.from_images(images, csv, 13, "Bad")
    msg = str(err.value)
    assert "(nothing was written), 4 problem(s)" in msg
    for part in ("broken.png: unreadable image", "stray.png: no label in", "no image for case_id 'ghost'",
                 "no image for case_id 'j2.jpg' in", "(case_id is the file name without its extension)"):
        assert part in msg, part
    assert os.listdir(nnunet_env["nnUNet_raw"]) == []  # no dataset, no staging folder
    p = nnkd_cli("dataset", "from-images", images, csv, "--id", 13, "--name", "Bad", env=nnunet_env, check=False)
    assert p.returncode == 2 and p.stderr.count("\n  - ") == 4 and os.listdir(nnunet_env["nnUNet_raw"]) == []


def test_masks_kept_with_their_values(nnunet_env, tmp_path):
    images, masks = tmp_path / "img", tmp_path / "masks"
    binary = np.zeros((32, 32), np.uint8)
    binary[8:16, 8:20] = 255
    multi = np.zeros((32, 32), np.uint8)
    multi[2:6, 2:6], multi[20:30, 3:9] = 1, 2
    for case, mask in (("a", binary), ("b", multi), ("c", np.zeros((32, 32), np.uint8))):
        save(images, f"{case}.jpg", rgb())
        save(masks, f"{case}.png", mask)
    csv = labels_csv(tmp_path / "l.csv", [("a", "x"), ("b", "y"), ("c", "x")])
    out = F.from_images(str(images), csv, 14, "Masked", masks_dir=str(masks))
    assert out.labels == {"background": 0, "label_1": 1, "label_2": 2}
    assert np.array_equal(read_png(os.path.join(out.folder, "labelsTr", "a.png")), binary // 255)
    assert np.array_equal(read_png(os.path.join(out.folder, "labelsTr", "b.png")), multi)
    doc = load(out.folder, "dataset.json")
    assert doc["labels"] == out.labels and "masks" not in doc["nnkd"] and masks_hold_lesions(doc)
    assert load(out.folder, F.SOURCES_FILE)["cases"]["b"] == {"image": "b.jpg", "label": "y", "mask": "b.png"}

    save(masks, "b.png", binary)  # only 0/255: background/lesion
    assert F.from_images(str(images), csv, 14, "Masked", masks_dir=str(masks), overwrite=True).labels == \
        {"background": 0, "lesion": 1}
    for case in "ab":
        save(masks, f"{case}.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(NNKDError, match="every mask is background only.*leave out --masks"):
        F.from_images(str(images), csv, 15, "Empty", masks_dir=str(masks))
    save(masks, "a.png", multi * 2)  # 0, 2, 4: gaps
    with pytest.raises(NNKDError, match="found 0, 2, 4, missing 1, 3"):
        F.from_images(str(images), csv, 15, "Gaps", masks_dir=str(masks))
    save(masks, "a.png", np.zeros((16, 32), np.uint8))
    save(masks, "b.png", np.dstack([multi, multi + 1, multi]))
    save(masks, "c.jpg", binary)
    (masks / "c.png").unlink()
    with pytest.raises(NNKDError) as err:
        F.from_images(str(images), csv, 15, "Bad", masks_dir=str(masks))
    msg = str(err.value)
    for part in ("a.png: 32x16 pixels, but its image", "b.png: unusable mask (colour mask",
                 "masks/c.jpg: JPEG masks are lossy"):
        assert part in msg, part
    assert sorted(os.listdir(nnunet_env["nnUNet_raw"])) == ["Dataset014_Masked"]


def test_existing_ids_and_case_id_clashes(nnunet_env, tmp_path):
    images = tmp_path / "img"
    save(images, "a.png", rgb())
    csv = labels_csv(tmp_path / "l.csv", [("a", "x")])
    with pytest.raises(NNKDError, match="every row has the label 'x': classification needs cases of at least two"):
        F.from_images(str(images), csv, 16, "One")
    assert os.listdir(nnunet_env["nnUNet_raw"]) == []
    save(images, "c.png", rgb())
    csv = labels_csv(tmp_path / "l.csv", [("a", "x"), ("c", "y")])
    first = F.from_images(str(images), csv, 16, "One").folder
    with pytest.raises(NNKDError, match="Dataset016_One already exists.*--overwrite"):
        F.from_images(str(images), csv, 16, "One")
    with pytest.raises(NNKDError, match="id 16 is already used by Dataset016_One"):
        F.from_images(str(images), csv, 16, "Two", overwrite=True)
    save(images, "b.png", rgb((24, 40)))
    csv = labels_csv(tmp_path / "l.csv", [("a", "x"), ("b", "y"), ("c", "y")])
    F.from_images(str(images), csv, 16, "One", overwrite=True)
    assert load(first, "dataset.json")["numTraining"] == 3
    os.makedirs(os.path.join(nnunet_env["nnUNet_results"], "Dataset017_Trained"))
    with pytest.raises(NNKDError, match="id 17 is already used by Dataset017_Trained"):
        F.from_images(str(images), csv, 17, "New")

    for name in ("a b.png", "a_b.png", "_.png"):
        save(images, name, rgb())
    csv = labels_csv(tmp_path / "l.csv", [("a", "x"), ("b", "y"), ("c", "y"), ("a b", "x"), ("a_b", "x"), ("_", "y")])
    with pytest.raises(NNKDError) as err:
        F.from_images(str(images), csv, 18, "Clash")
    assert "case_ids 'a b', 'a_b' all become the nnU-Net identifier 'a_b'; rename one" in str(err.value)
    assert "case_id '_': no letter or digit left" in str(err.value)
    assert F.case_identifier("img 1.v2(b)") == "img_1_v2_b_" and F.case_identifier("-x") == "x"


def test_progress_every_tenth(nnunet_env, tmp_path):
    images = tmp_path / "img"
    for i in range(F.PROGRESS_MIN_CASES):
        save(images, f"c{i}.png", rgb((8, 8)))
    csv = labels_csv(tmp_path / "l.csv", [(f"c{i}", "xy"[i % 2]) for i in range(F.PROGRESS_MIN_CASES)])
    lines = []
    F.from_images(str(images), csv, 19, "Many", progress=lines.append)
    assert lines[0] == f"Dataset019_Many: 2/{F.PROGRESS_MIN_CASES} images" and len(lines) == 10


def test_unpaired2d_marks_field_of_view_masks_like_from_images(nnunet_env):
    plain = load(unpaired2d.generate(21, cases=1)[0], "dataset.json")
    masked = load(unpaired2d.generate(23, cases=1, name="M", lesion_masks=True)[0], "dataset.json")
    assert plain["nnkd"]["masks"] == "none" and not masks_hold_lesions(plain)
    assert masks_hold_lesions(masked) and "masks" not in masked["nnkd"]
    assert L.stored_labels(plain)[0] == list(unpaired2d.CLASSES)  # the labels merge with the marker
