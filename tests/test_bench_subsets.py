"""nnkd.bench.subsets: the robustness-per-subset and segmentation-KD parts of nnkd bench quality (no training)."""
import os

import numpy as np
import pytest

from nnkd.bench import subsets as S
from nnkd.bench.catalogue import BENCHMARKS
from nnkd.errors import NNKDError
from nnkd.evaluation.predictions import Predictions


def test_dice_difference_over_seeds_by_hand():
    # seed 0: KD - no KD per case = [0.2, 0.0, -0.1] (case 3 lacks the structure: NaN, left out for every seed)
    kd0, no0 = np.array([0.8, 0.5, 0.4, np.nan]), np.array([0.6, 0.5, 0.5, np.nan])
    kd1, no1 = np.array([0.9, 0.7, 0.6, np.nan]), np.array([0.6, 0.6, 0.6, np.nan])  # [0.3, 0.1, 0.0]
    r = S.dice_difference_over_seeds([(kd0, no0), (kd1, no1)], n_bootstrap=200)
    assert r["per_seed"] == pytest.approx([0.1 / 3, 0.4 / 3])
    assert r["difference"] == pytest.approx(0.25 / 3)
    assert r["n_cases"] == 3 and r["n_seeds"] == 2
    lo, hi = r["ci95"]
    assert -0.1 <= lo <= r["difference"] <= hi <= 0.3  # means of resampled per-case differences stay in their range


def test_dice_difference_one_seed_is_the_case_bootstrap():
    """One seed: the resamples are the case bootstrap of the mean difference, recomputed here independently."""
    rng_data = np.random.default_rng(3)
    a, b = rng_data.uniform(size=20), rng_data.uniform(size=20)
    r = S.dice_difference_over_seeds([(a, b)], n_bootstrap=500, seed=0)
    idx = np.random.default_rng(0).integers(0, 20, size=(500, 20))  # one stratum: every case
    expected = (a - b)[idx].mean(1)
    assert r["difference"] == pytest.approx(float((a - b).mean()))
    assert r["ci95"] == pytest.approx(list(np.percentile(expected, [2.5, 97.5])))
    assert r["p_not_better"] == pytest.approx(float(np.mean(expected <= 0)))


def test_dice_difference_constant_and_empty():
    a = np.array([0.9, 0.8, 0.7])
    r = S.dice_difference_over_seeds([(a, a - 0.1), (a, a - 0.3)], n_bootstrap=100)
    assert r["difference"] == pytest.approx(0.2)
    assert 0.1 - 1e-9 <= r["ci95"][0] <= r["ci95"][1] <= 0.3 + 1e-9  # only the seed draw varies
    empty = S.dice_difference_over_seeds([(np.full(2, np.nan), np.zeros(2))])
    assert empty["difference"] is None and empty["n_cases"] == 0


def _preds(scores, ids, source="<memory>"):
    p = np.asarray(scores, float)
    return Predictions(list(ids), np.stack([1 - p, p], 1), ["low", "high"], [None] * len(ids), source=source)


def test_pooled_auc_is_the_mean_of_the_seeds_aucs():
    from sklearn.metrics import roc_auc_score

    ids = [f"c{i}" for i in range(8)]
    labels = dict(zip(ids, ["low"] * 4 + ["high"] * 4))
    y = [0] * 4 + [1] * 4
    s0 = [0.1, 0.2, 0.6, 0.3, 0.7, 0.4, 0.9, 0.8]
    s1 = [0.5, 0.1, 0.2, 0.3, 0.6, 0.7, 0.9, 0.4]
    # the second seed's file lists the cases in another order: matched by id
    order = [3, 1, 7, 0, 2, 6, 4, 5]
    r = S.pooled_auc([_preds(s0, ids), _preds([s1[i] for i in order], [ids[i] for i in order])], labels,
                     ["low", "high"], n_bootstrap=300)
    expected = [roc_auc_score(y, s0), roc_auc_score(y, s1)]
    assert r["per_seed"] == pytest.approx(expected)
    assert r["auc"] == pytest.approx(np.mean(expected))
    assert r["ci95"][0] <= r["auc"] <= r["ci95"][1] and r["n_cases"] == 8 and r["n_seeds"] == 2
    with pytest.raises(NNKDError, match="have no prediction: c7"):
        S.pooled_auc([_preds(s0, ids), _preds(s1[:7], ids[:7])], labels, ["low", "high"])


def _part():
    cell = {"auc": 0.8, "ci95": [0.7, 0.9], "n_seeds": 3, "n_cases": 60, "per_seed": [0.8] * 3}
    models = {"teacher": {"label": "teacher (modality dropout)",
                          "cells": {"CT+FDG+ACE": dict(cell, dice=0.71), "CT": dict(cell, auc=0.75)}},
              "teacher_nodrop": {"label": "teacher, no dropout",
                                 "cells": {"CT+FDG+ACE": dict(cell, auc=0.85),
                                           "CT": {"refused": ["the model M was never trained without channel 'FDG'"],
                                                  "reason": "it was trained without modality_dropout"}}},
              "nokd": {"label": "student CT, no KD", "cells": {"CT": dict(cell, auc=0.72)}}}
    table = S.subsets_table(models, ["CT+FDG+ACE", "CT"])
    losses = [{"subset": "CT", "dedicated": "nokd", "label": "student CT, no KD", "difference": -0.05,
               "ci95": [-0.1, -0.01], "per_seed": [-0.04, -0.05, -0.06]}]
    return {"table": table, "losses": losses}


def test_subsets_table_markdown_and_report(tmp_path):
    from nnkd.evaluation.subsets import write_subsets_report

    part = _part()
    rows = {r["model"]: r for r in part["table"]["rows"]}
    assert rows["nokd"]["cells"] == {"CT+FDG+ACE": None, "CT": {"auc": 0.72, "ci95": [0.7, 0.9], "n_seeds": 3,
                                                                "n_cases": 60, "per_seed": [0.8] * 3}}
    md = S.subsets_markdown(part)
    assert "| teacher (modality dropout) | 0.800 [0.700, 0.900] (3); Dice 0.710 | 0.750 [0.700, 0.900] (3) |" in md
    assert "| teacher, no dropout | 0.850 [0.700, 0.900] (3) | refused by nnkd predict (it was trained without " \
           "modality_dropout) |" in md
    assert "| student CT, no KD | — (not built for it) | 0.720 [0.700, 0.900] (3) |" in md
    assert "| CT | student CT, no KD | -0.050 [-0.100, -0.010]* | -0.040, -0.050, -0.060 |" in md
    view = S.levels_view(part["table"])
    assert [r["level"] for r in view["levels"]] == ["teacher: CT+FDG+ACE", "teacher: CT", "teacher_nodrop: CT+FDG+ACE",
                                                   "teacher_nodrop: CT", "nokd: CT"]
    refused = view["levels"][3]
    assert refused["auc"] is None and refused["refused"] == "it was trained without modality_dropout"
    from nnkd.evaluation.plots import plot_levels
    # the figure names the CI it shows: this one resamples seeds too, a single model's a stratified bootstrap
    assert "cases and seeds" in plot_levels(view, "channels").axes[0].get_title()
    assert "stratified" in plot_levels({k: v for k, v in view.items() if k != "ci"}).axes[0].get_title()
    paths = write_subsets_report(str(tmp_path), view)
    assert all((tmp_path / n).is_file() for n in ("subsets.json", "subsets.csv", "subsets.png"))
    assert len(paths) == 3
    csv = (tmp_path / "subsets.csv").read_text().splitlines()
    assert csv[0].startswith("channels,") and len(csv) == 6


def test_seg_table_mean_sd_and_markdown():
    dice = {"teacher": {"0": {"tumour": 0.7, "foreground": 0.9}, "1": {"tumour": 0.8, "foreground": 0.9}},
            "seg_nokd": {"0": {"tumour": 0.5, "foreground": 0.8}, "1": {"tumour": None, "foreground": 0.7}},
            "seg_kd": {"0": {"tumour": 0.6, "foreground": 0.85}, "1": {"tumour": 0.62, "foreground": 0.75}}}
    diff = {"tumour": {"difference": 0.05, "ci95": [0.01, 0.09]}}
    t = S.seg_table(dice, {"teacher": "teacher", "seg_nokd": "no KD", "seg_kd": "KD"}, diff)
    rows = {r["model"]: r for r in t["rows"]}
    assert rows["teacher"]["tumour"]["mean"] == pytest.approx(0.75)
    assert rows["teacher"]["tumour"]["sd"] == pytest.approx(np.std([0.7, 0.8], ddof=1))
    assert rows["seg_nokd"]["tumour"] == {"mean": 0.5, "sd": None, "n": 1}
    md = S.seg_markdown(t)
    assert "| no KD | 0.500 ± n/a (1) | 0.750 ± 0.071 (2) |" in md
    assert "| KD minus no KD, seeds pooled: Δ [95% CI] | +0.050 [0.010, 0.090]* | n/a |" in md


def test_case_dice_tumour_and_foreground(tmp_path):
    import SimpleITK as sitk

    seg_dir, mask_dir = tmp_path / "seg", tmp_path / "masks"
    seg_dir.mkdir(), mask_dir.mkdir()
    truth = np.zeros((2, 4, 4), np.uint8)
    truth[0, :2, :2] = 1  # 4 liver voxels
    truth[1, :2, :2] = 2  # 4 tumour voxels
    pred = np.zeros_like(truth)
    pred[1, :2, :1] = 2   # 2 tumour voxels, both right
    pred[0, 2:, 2:] = 1   # 4 wrong liver voxels
    no_tumour = np.where(truth == 2, 1, truth).astype(np.uint8)
    for folder, arrays in ((mask_dir, {"a": truth, "b": no_tumour}), (seg_dir, {"a": pred, "b": pred})):
        for case, arr in arrays.items():
            sitk.WriteImage(sitk.GetImageFromArray(arr), str(folder / f"{case}.nii.gz"))
    out = S.case_dice(str(seg_dir), str(mask_dir), ["a", "b"])
    assert out["tumour"][0] == pytest.approx(2 * 2 / (2 + 4))
    assert np.isnan(out["tumour"][1])  # no tumour in the ground truth: left out
    assert out["foreground"][0] == pytest.approx(2 * 2 / (6 + 8))  # pred 6 voxels > 0, truth 8, overlap 2
    with pytest.raises(NNKDError, match="case c: no segmentation"):
        S.case_dice(str(seg_dir), str(mask_dir), ["a", "c"])


def test_nodrop_plan_is_refused_every_subset():
    from nnkd.pipeline import load_plan_file
    from nnkd.plan import PLANS_DIR
    from nnkd.subsets import channel_contract

    plan = load_plan_file("cls_teacher_nodrop")
    assert "modality_dropout" not in plan and plan["trainers"] == [S.TEACHER_NODROP.trainer]
    names = {"0": "CT", "1": "FDG", "2": "ACE"}
    c = channel_contract("M", names, [plan])
    assert c.allowed_subsets() == [(0, 1, 2)]
    assert any("trained without modality_dropout" in p for p in c.problems([0]))
    cell = S.refusal_cell(c, "CT+FDG")
    assert cell["reason"] == "it was trained without modality_dropout"
    assert len(cell["refused"]) == 1 and "'ACE'" in cell["refused"][0] and "model M" in cell["refused"][0]
    with_dropout = channel_contract("M", names, [load_plan_file("cls_teacher")])
    assert S.refusal_cell(with_dropout, "CT+FDG") == {"refused": [], "reason": "accepted"}
    assert S.refusal_cell(with_dropout, "FDG")["reason"] == "it is in modality_dropout.keep"
    assert [with_dropout.name(s) for s in with_dropout.allowed_subsets()] == ["CT+FDG+ACE", "CT+FDG", "CT+ACE", "CT"]
    for m in (S.TEACHER_NODROP, S.SEG_NOKD, S.SEG_KD):
        assert os.path.isfile(os.path.join(PLANS_DIR, m.plan + ".json"))


def test_extra_models_only_run_when_asked(tmp_path, capsys):
    """The default benchmark does not train them; --subsets / --seg-kd without paired3d are refused up front."""
    import argparse

    from nnkd.bench import quality as Q
    from nnkd.cli import main

    keys = {m.key for m in BENCHMARKS["paired3d"].methods}
    assert not keys & {S.TEACHER_NODROP.key, S.SEG_NOKD.key, S.SEG_KD.key}
    parser = argparse.ArgumentParser()
    Q.add_arguments(parser)
    args = parser.parse_args(["--benchmarks", "paired3d", "--methods", "react", "logit", "graph"])
    assert not args.subsets and not args.seg_kd and Q.QualityRun.parts == ()
    assert main(["bench", "quality", "-o", str(tmp_path), "--benchmarks", "lesion2d", "--seg-kd"]) == 2
    assert "include it in --benchmarks" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    with pytest.raises(NNKDError, match="paired3d benchmark only"):
        S.run_parts(None, BENCHMARKS["lesion2d"], {}, ["subsets"])


def test_quality_md_gets_the_sections():
    from nnkd.bench import quality as Q

    md = S.markdown_sections({"subsets": _part()})
    assert md.startswith("### Robustness per channel subset") and "Segmentation students" not in md
    seg = S.seg_table({"seg_kd": {"0": {"tumour": 0.6, "foreground": 0.8}}}, {"seg_kd": "KD"}, {})
    report = {"seeds": [0], "quick": True, "minutes": 0.1,
              "benchmarks": {"paired3d": {"schedule": {"cases": 9, "test_cases": 6, "size": [16, 32, 32],
                                                       "epochs": 1, "iterations": 2, "val_iterations": 1},
                                          "stats": Q.summarise(BENCHMARKS["paired3d"], {}), "comparisons": {},
                                          "seg_kd": {"table": seg}}}}
    text = Q.markdown_report(report)
    assert "### Segmentation students distilled voxel by voxel" in text and "| KD | 0.600 ± n/a (1) |" in text
