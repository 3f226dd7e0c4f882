"""`nnkd bench quality`: statistics, plans, comparisons and tables on hand-made inputs.

Training the benchmark's models end to end takes minutes even at the smallest settings (eight
nnUNetv2_train runs for paired3d alone), so the path through the CLIs is exercised by
``nnkd demo --quick`` / ``nnkd bench quality --quick``; this module checks everything around it.
"""
import os
from dataclasses import replace

import numpy as np
import pytest

from nnkd.bench import catalogue as C
from nnkd.bench import quality as Q
from nnkd.cli import main
from nnkd.errors import NNKDError
from nnkd.evaluation.comparison import compare_arrays


def test_mean_sd_and_gap_share():
    assert Q.mean_sd([0.6, 0.7, 0.8]) == pytest.approx((0.7, 0.1))
    assert Q.mean_sd([0.6, None, float("nan")]) == (0.6, None)  # one usable value: no sd
    assert Q.mean_sd([]) == (None, None)
    assert Q.gap_share(0.7, 0.6, 0.9) == pytest.approx(1 / 3)
    assert Q.gap_share(0.5, 0.6, 0.9) == pytest.approx(-1 / 3)  # worse than no KD
    assert Q.gap_share(0.95, 0.6, 0.9) == pytest.approx(7 / 6)  # better than the teacher
    assert Q.gap_share(0.7, 0.6, 0.6) is None and Q.gap_share(0.7, 0.8, 0.6) is None  # no gap to close
    assert Q.gap_share(None, 0.6, 0.9) is None


def _values():
    # teacher .9/.95/1.0, ceiling .8/.8/.8, no KD .6/.6/.6, REACT .7/.75/.8, logit missing for seed 2
    v = {"teacher": {0: 0.9, 1: 0.95, 2: 1.0}, "dose_teacher": {0: 0.65, 1: 0.7, 2: 0.6},
         "nokd": {0: 0.6, 1: 0.6, 2: 0.6}, "ceiling": {0: 0.8, 1: 0.8, 2: 0.8}, "react": {0: 0.7, 1: 0.75, 2: 0.8},
         "logit": {0: 0.5, 1: 0.6}}
    return v


def test_summarise_per_method():
    stats = Q.summarise(C.PAIRED3D, _values())
    assert set(stats) == {m.key for m in C.PAIRED3D.methods}
    assert stats["teacher"]["mean"] == pytest.approx(0.95) and stats["teacher"]["sd"] == pytest.approx(0.05)
    assert stats["react"]["gap_share"] == pytest.approx((0.75 - 0.6) / (0.95 - 0.6))
    assert stats["react"]["ceiling_gap_share"] == pytest.approx((0.75 - 0.6) / (0.8 - 0.6))  # the achievable gap
    assert stats["logit"]["n"] == 2 and stats["logit"]["gap_share"] == pytest.approx((0.55 - 0.6) / 0.35)
    assert stats["logit"]["ceiling_gap_share"] == pytest.approx((0.55 - 0.6) / 0.2)
    for key in ("teacher", "nokd", "ceiling"):  # only KD methods
        assert stats[key]["gap_share"] is None and stats[key]["ceiling_gap_share"] is None
    no_ceiling = Q.summarise(C.PAIRED3D, {k: v for k, v in _values().items() if k != "ceiling"})
    assert no_ceiling["react"]["ceiling_gap_share"] is None and no_ceiling["react"]["gap_share"] is not None
    assert "ceiling" not in [m.key for m in Q.ran(C.PAIRED3D, no_ceiling)]  # not run (no data limit): no row
    assert "ceiling" in [m.key for m in Q.ran(C.PAIRED3D, stats)]
    assert stats["fitnet"]["mean"] is None and stats["fitnet"]["n"] == 0 and stats["fitnet"]["gap_share"] is None
    assert stats["react"]["per_seed"] == {"0": 0.7, "1": 0.75, "2": 0.8}
    assert stats["react"]["plan"] == "react_kd" and stats["react"]["trainer"] == "nnKDTrainerREACT"


def _compare_result(signal_a, signal_b, n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3

    def probs(signal):
        logits = rng.normal(0, 1, (n, 3))
        logits[np.arange(n), y] += signal
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    return compare_arrays(probs(signal_a), probs(signal_b), y, ["G1", "G2", "G3"], n_bootstrap=200)


def test_comparison_summary_and_tables(tmp_path):
    better = Q.comparison_summary("classification", _compare_result(3.0, 0.0))
    assert better["difference"] > 0 and better["ci95"][0] > 0  # a clear difference: CI above 0
    assert set(better["delong_p"]) == {"G1", "G2", "G3"} and all(0 <= p <= 1 for p in better["delong_p"].values())
    same = Q.comparison_summary("classification", _compare_result(1.0, 1.0, seed=3))
    det = Q.comparison_summary("detection", {"difference": -0.1, "ci95": [-0.3, 0.05], "p_not_better": 0.9})
    assert det["p"] == 0.9

    seeds = [0, 1, 2]
    values = dict(_values(), fitnet={0: None})  # FitNet ran once without a value; graph, AT and DKD did not run
    stats = Q.summarise(C.PAIRED3D, values)
    comparisons = {"react": {"0": better, "1": same}, "logit": {"0": det}}
    pooled = {"react": {"difference": 0.04, "ci95": [0.01, 0.07]}}
    table = Q.markdown_table(C.PAIRED3D, stats, comparisons, seeds, pooled)
    lines = table.splitlines()
    assert len(lines) == 2 + len(C.PAIRED3D.methods) - 3
    assert "gap closed: ceiling | gap closed: teacher" in lines[0]
    assert not any(line.startswith(("| attention transfer", "| DKD")) for line in lines)
    assert all(line.count("|") == lines[0].count("|") for line in lines)  # every row has every column
    react = next(line for line in lines if line.startswith("| REACT-KD"))
    assert "0.750 ± 0.050 (3)" in react and "| 75 % | 43 % |" in react  # /(0.8 - 0.6), /(0.95 - 0.6)
    assert f"s0: {better['difference']:+.3f}" in react and "]*" in react  # CI excludes 0: marked
    assert "s2: n/a" in react and "| +0.040 [0.010, 0.070]* |" in react  # pooled seeds: CI above 0, marked
    fitnet = next(line for line in lines if line.startswith("| FitNet"))
    assert "| n/a |" in fitnet
    for role_row in ("| teacher", "| student CT, no KD, 10x data (ceiling)"):
        row = next(line for line in lines if line.startswith(role_row))
        assert "s0:" not in row and "%" not in row

    report = {"seeds": seeds, "quick": True, "minutes": 1.5,
              "benchmarks": {"paired3d": {"schedule": {"cases": 9, "test_cases": 6, "size": [16, 32, 32],
                                                       "epochs": 1, "iterations": 2, "val_iterations": 1,
                                                       "student_fraction": 0.1, "ceiling_fraction": 1.0},
                                          "stats": stats, "comparisons": comparisons, "pooled": pooled,
                                          "notes": ["a note"]},
                             "lesion2d": {"skipped": "trainer(s) nnKDTrainerImPA not registered"}}}
    md = Q.markdown_report(report)
    assert "quick" in md and table in md and "- a note" in md and "Not run: trainer(s) nnKDTrainerImPA" in md
    assert "(students: 10 % of fold 0's training cases, ceiling: 100 %)" in md
    png = tmp_path / "quality.png"
    Q.plot(report, str(png))
    assert png.stat().st_size > 1000


def test_method_plan_fills_in_seed_schedule_and_teachers():
    s = C.Schedule(cases=9, test_cases=6, size=(16, 32, 32), epochs=10, iterations=5, val_iterations=1)
    folders = {"teacher": "/r/teacher_folder", "dose_teacher": "/r/dose_folder"}
    react = next(m for m in C.PAIRED3D.methods if m.key == "react")
    plan = Q.method_plan(C.PAIRED3D, react, 2, s, folders, 930)
    assert plan["name"] == "paired3d_react_seed2" and plan["seed"] == 2
    assert plan["schedule"] == {"num_epochs": 10, "num_iterations_per_epoch": 5, "num_val_iterations_per_epoch": 1}
    assert [(t["name"], t["model_folder"]) for t in plan["teachers"]] == [
        ("structure_function", "/r/teacher_folder"), ("dose_aware", "/r/dose_folder")]
    assert [loss["name"] for loss in plan["losses"]] == ["logit_kd", "region_graph"]  # the plan file's losses
    from nnkd.plan import validate_plan
    validate_plan(plan, "test")  # still a valid plan

    teacher = C.PAIRED3D.role(C.TEACHER)[0]
    assert not Q.method_plan(C.PAIRED3D, teacher, 0, s, {}, 930).get("teachers")

    # the data-limited students train on student_fraction, the ceiling on ceiling_fraction, teachers on everything
    limited = replace(s, student_fraction=0.1, ceiling_fraction=1.0)
    by_key = {m.key: m for m in C.PAIRED3D.methods}
    fraction = {k: Q.method_plan(C.PAIRED3D, by_key[k], 0, limited, folders, 930).get("student", {}).get("train_fraction")
                for k in ("teacher", "dose_teacher", "nokd", "react", "ceiling")}
    assert fraction == {"teacher": None, "dose_teacher": None, "nokd": 0.1, "react": 0.1, "ceiling": 1.0}
    short_teachers = replace(s, teacher_epochs=4)  # the demo's teachers train shorter than its students
    epochs = {k: Q.method_plan(C.PAIRED3D, by_key[k], 0, short_teachers, folders, 930)["schedule"]["num_epochs"]
              for k in ("teacher", "dose_teacher", "nokd", "react")}
    assert epochs == {"teacher": 4, "dose_teacher": 4, "nokd": 10, "react": 10}
    student = Q.method_plan(C.PAIRED3D, by_key["nokd"], 0, limited, folders, 930)["student"]
    assert student["channels"] == ["CT"]  # the plan file's other student settings stay
    validate_plan(Q.method_plan(C.PAIRED3D, by_key["ceiling"], 0, limited, folders, 930), "test")

    bad = replace(C.PAIRED3D, teachers={"structure_function": "teacher"})
    with pytest.raises(NNKDError, match="teacher 'dose_aware' is not one this benchmark trains"):
        Q.method_plan(bad, react, 0, s, folders, 930)

    # a second teacher left out (it did not beat chance): every student's plan drops it; the main one never
    for key in ("react", "logit", "graph"):
        plan = Q.method_plan(C.PAIRED3D, by_key[key], 0, s, {"teacher": "/r/teacher_folder"}, 930)
        assert [t["name"] for t in plan["teachers"]] == ["structure_function"]
        validate_plan(plan, "test")
    with pytest.raises(KeyError):
        Q.method_plan(C.PAIRED3D, react, 0, s, {"dose_teacher": "/r/dose_folder"}, 930)
    assert plan["validation"] == {"segmentation": False, "mirroring": False}


@pytest.mark.parametrize("ci, expected", [([0.51, 0.7], True), ([0.5, 0.7], False), ([0.3, 0.6], False)])
def test_second_teacher_is_used_only_above_chance(tmp_path, ci, expected):
    from nnkd.io import write_json

    write_json(str(tmp_path / "fold_0" / "validation" / "classification_summary.json"),
               {"auc": {"value": sum(ci) / 2, "ci95": ci}})
    used, why = Q.beats_chance(str(tmp_path))
    assert used is expected and f"[{ci[0]:.3f}, {ci[1]:.3f}]" in why
    used, why = Q.beats_chance(str(tmp_path / "elsewhere"))
    assert used is False and "no validation summary" in why


def test_unpaired_plans_get_teacher_dataset_and_short_warmup():
    from nnkd.plan import PLANS_DIR

    s = C.Schedule(cases=12, test_cases=6, size=(32, 32), epochs=10, iterations=2, val_iterations=1)
    for bench in (C.UNPAIRED2D, C.LESION2D):
        for m in bench.role(C.KD):
            if not os.path.isfile(os.path.join(PLANS_DIR, f"{m.plan}.json")):
                pytest.skip(f"plans/{m.plan}.json not there yet")
            plan = Q.method_plan(bench, m, 1, s, {"teacher": "/r/t"}, bench.dataset_id + 1)
            assert all(t["model_folder"] == "/r/t" and t["dataset"] == bench.dataset_id + 1 for t in plan["teachers"])
            for loss in plan["losses"]:
                assert loss["params"].get("warmup_epochs", 0) <= 2  # a fifth of 10 epochs


def test_benchmark_tables_are_consistent():
    for bench in C.BENCHMARKS.values():
        roles = [m.role for m in bench.methods]
        assert roles.count(C.TEACHER) == 1 and roles.count(C.NOKD) == 1 and roles.count(C.CEILING) == 1 and C.KD in roles
        nokd, ceiling = bench.role(C.NOKD)[0], bench.role(C.CEILING)[0]
        assert (ceiling.trainer, ceiling.plan, ceiling.channels) == (nokd.trainer, nokd.plan, nokd.channels)
        full = bench.full  # data-limited students against a ceiling on ten times their share of the data
        assert full.ceiling_fraction == pytest.approx(10 * full.student_fraction)
        assert full.cases * 0.8 * full.student_fraction >= 15  # still a few cases per class
        assert bench.max_features and bench.max_features <= 32 and bench.max_batch_size
        assert len({m.key for m in bench.methods}) == len(bench.methods)
        assert set(bench.teachers.values()) <= {m.key for m in bench.methods if m.role in (C.TEACHER, C.AUX_TEACHER)}
        assert bench.quick.epochs <= 2 and bench.quick.cases <= bench.full.cases


def test_settings_of_a_workspace_cannot_change(tmp_path):
    run = Q.QualityRun(str(tmp_path), [0], quick=True, verbose=False)
    run._check_settings(C.PAIRED3D, run.schedule(C.PAIRED3D))
    run._check_settings(C.PAIRED3D, run.schedule(C.PAIRED3D))  # same settings: resumes
    longer = Q.QualityRun(str(tmp_path), [0], quick=True, overrides={"epochs": 5}, verbose=False)
    assert longer.schedule(C.PAIRED3D).epochs == 5
    with pytest.raises(NNKDError, match="holds the paired3d benchmark with other settings"):
        longer._check_settings(C.PAIRED3D, longer.schedule(C.PAIRED3D))
    narrower = Q.QualityRun(str(tmp_path), [0], quick=True, verbose=False, max_features=16)  # the demo's network
    with pytest.raises(NNKDError, match="'max_features': 16"):
        narrower._check_settings(C.PAIRED3D, narrower.schedule(C.PAIRED3D))


def test_shared_results_folder_needs_one_model_per_trainer(tmp_path):
    """The demo keeps every model in the workspace's nnUNet_results (where `nnkd env --workspace` points); nnU-Net
    names a model folder by trainer, so a benchmark with two models of one trainer is refused before any work."""
    with pytest.raises(NNKDError, match="needs one seed"):
        Q.QualityRun(str(tmp_path / "a"), [0, 1], verbose=False, shared_results=True)
    run = Q.QualityRun(str(tmp_path / "b"), [0], quick=True, verbose=False, shared_results=True)
    with pytest.raises(NNKDError, match="cannot hold two models of trainer.s. nnKDTrainerClsBaseline"):
        run.run_benchmark(C.UNPAIRED2D)
    assert not os.listdir(run.ws.env["nnUNet_raw"]) and not os.path.exists(run.ws.path("settings"))
    # the demo's benchmark fits: its schedule has no data limit, so no ceiling model (the no-KD student's trainer)
    demo_models = [m for m in C.PAIRED3D.methods if m.role != C.CEILING]
    assert len({m.trainer for m in demo_models}) == len(demo_models)


def test_cap_network(tmp_path):
    import json

    path = tmp_path / "nnUNetPlans.json"
    arch = {"network_class_name": "x", "arch_kwargs": {"n_stages": 4, "features_per_stage": [32, 64, 128, 256]}}
    plans = {"configurations": {"2d": {"architecture": arch, "patch_size": [64, 64], "batch_size": 14},
                                "3d_fullres": {"architecture": {"arch_kwargs": {"features_per_stage": [32, 64]}},
                                               "batch_size": 2}}}
    path.write_text(json.dumps(plans))
    assert Q.cap_network(str(path), "2d", 48, 12) is True
    after = json.loads(path.read_text())
    assert after["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"] == [32, 48, 48, 48]
    assert after["configurations"]["2d"]["batch_size"] == 12
    assert after["configurations"]["3d_fullres"] == plans["configurations"]["3d_fullres"]  # other configs untouched
    assert after["configurations"]["2d"]["patch_size"] == [64, 64]
    assert Q.cap_network(str(path), "2d", 48, 12) is False  # idempotent
    assert Q.cap_network(str(path), "3d_fullres", None, 4) is False  # batch 2 is below the cap: unchanged
    assert Q.cap_network(str(path), "2d", None, 6) is True
    assert json.loads(path.read_text())["configurations"]["2d"]["batch_size"] == 6
    assert [p.name for p in tmp_path.iterdir()] == ["nnUNetPlans.json"]  # no temporary file left


def _boxes_csv(path, rows):
    path.write_text("case_id,score,center_0,center_1,box_lo_0,box_lo_1,box_hi_0,box_hi_1\n"
                    + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return str(path)


def _two_detectors(tmp_path):
    """Ground truth of 6 lesion cases and 2 normal ones; detector A finds every lesion, B 2 of 6 (same FPs)."""
    gt = tmp_path / "gt.csv"
    gt.write_text("case_id,center_0,center_1,box_lo_0,box_lo_1,box_hi_0,box_hi_1\n"
                  + "".join(f"c{i},10,10,8,8,12,12\n" for i in range(6)) + "n0\nn1\n")
    hits = [(f"c{i}", 0.9, 10, 10, 9, 9, 11, 11) for i in range(6)]
    fps = [(c, 0.95, 40, 40, 39, 39, 41, 41) for c in ("n0", "n1")]
    a = _boxes_csv(tmp_path / "a.csv", hits + fps)
    b = _boxes_csv(tmp_path / "b.csv", hits[:2] + [(f"c{i}",) for i in range(2, 6)] + fps)
    return gt, a, b


def test_paired_froc_difference(tmp_path):
    gt, a, b = _two_detectors(tmp_path)
    d = Q.paired_froc_difference(a, b, str(gt), n_bootstrap=200)
    assert d["difference"] == pytest.approx(1 - 2 / 6) and d["ci95"][0] > 0 and d["p_not_better"] < 0.05
    same = Q.paired_froc_difference(a, a, str(gt), n_bootstrap=50)
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0]


def test_cli_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "quality", "--help"])
    assert e.value.code == 0
    assert "--seeds" in capsys.readouterr().out
    assert main(["bench", "quality", "-o", str(tmp_path), "--methods", "nosuch"]) == 2
    assert "unknown method key(s) nosuch" in capsys.readouterr().err
    assert main(["bench", "quality", "-o", str(tmp_path), "--seeds", "0", "0"]) == 2
    assert main(["bench", "quality", "-o", str(tmp_path), "--epochs", "0"]) == 2
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_pooled_froc_difference_over_seeds(tmp_path):
    """Detection: the mean over seeds of the per-seed FROC differences; identical models give 0 [0, 0]."""
    gt, a, b = _two_detectors(tmp_path)
    pooled = Q.pooled_difference("detection", [(a, b), (a, a)], str(gt), n_bootstrap=300)
    assert pooled["per_seed"] == pytest.approx([1 - 2 / 6, 0.0])
    assert pooled["difference"] == pytest.approx((1 - 2 / 6) / 2)
    assert pooled["ci95"][0] <= pooled["difference"] <= pooled["ci95"][1] and pooled["ci95"][0] >= 0
    same = Q.pooled_difference("detection", [(a, a), (b, b)], str(gt), n_bootstrap=50)
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0]
