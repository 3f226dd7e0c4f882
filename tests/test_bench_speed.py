"""`nnkd bench speed`: end to end on a tiny workspace (timings are checked for sanity, never against targets)."""
import json
import math

import pytest

from conftest import nnkd_cli
from nnkd.bench import catalogue
from nnkd.bench.speed import report as speed
from nnkd.errors import NNKDError


def _fake_results():
    step = {"label": "plain paired3d", "trainer": "nnKDTrainerClsBaseline", "kd": False, "patch_size": [8, 16, 16],
            "batch_size": 2, "threads": 1, "memory_measure": "peak RSS", "times": {"step": [0.10, 0.12, 0.11]},
            "peak_mem_mib": 1000.0, "step_mem_mib": 50.0, "load_before": [1.0, 1.0, 1.0], "load_after": None}
    kd = dict(step, label="REACT-KD", trainer="nnKDTrainerREACT", kd=True, peak_mem_mib=1100.0, losses=["logit_kd"],
              n_teachers=2, times={"step": [0.20, 0.22, 0.21], "step_no_losses": [0.19, 0.21, 0.20],
                                   "student": [0.11, 0.12, 0.10], "teachers": [0.08, 0.09, 0.09],
                                   "losses_fwd": [0.004, 0.005, 0.004], "losses_bwd": [0.006, 0.006, 0.007]})
    return {"plain paired3d": step, "REACT-KD": kd}


def test_report_table_and_markdown_from_per_batch_times():
    cases = [catalogue.plain_case("paired3d"), next(c for c in catalogue.SPEED_CASES if c.label == "REACT-KD")]
    settings = {"device": "cpu", "quick": True, "iters": 3, "warmup": 0, "threads": 1, "workspace": "w"}
    report = speed.build_report(_fake_results(), cases, settings, {"torch": "x", "cpu_count": 2})
    plain, react = report["rows"]
    assert plain["step_ms"] == pytest.approx(110.0) and "ratio" not in plain
    # per-batch step / (student + teachers): 0.20/0.19, 0.22/0.21, 0.21/0.19 -> median 0.20/0.19
    assert react["ratio"] == pytest.approx(0.20 / 0.19)
    # losses: the LossBank's own forward + backward per batch (0.010, 0.011, 0.011); A/B difference kept aside
    assert react["losses_ms"] == pytest.approx(11.0) and react["losses_ab_ms"] == pytest.approx(10.0)
    assert react["loss_share"] == pytest.approx(0.05)  # median of 0.010/0.20, 0.011/0.22, 0.011/0.21
    assert react["ratio_vs_plain_row"] == pytest.approx(210.0 / (110.0 + 90.0))
    assert react["mem_vs_plain_mib"] == pytest.approx(100.0)
    table = speed.format_table(report)
    assert "REACT-KD" in table and "1.053" in table and "target <= 1.10" in table
    md = speed.format_markdown(report)
    assert md.count("\n| ") == 3 and "| REACT-KD | nnKDTrainerREACT |" in md


def test_unknown_method_is_named():
    with pytest.raises(NNKDError, match="known: REACT-KD"):
        catalogue.speed_cases(["nope"])
    assert [c.label for c in catalogue.speed_cases(["react-kd"])] == ["plain paired3d", "REACT-KD"]


def test_one_catalogue_for_speed_and_quality():
    """The speed datasets are the quality benchmarks' settings: same kinds, configurations and teacher trainers."""
    paired = catalogue.DATASETS["paired3d"]
    assert (paired.dataset_id, paired.configuration, paired.n_datasets) == (980, "3d_fullres", 1)
    assert (paired.size, paired.cases, paired.quick_size, paired.quick_cases) == ((24, 40, 40), 10, (16, 32, 32), 8)
    assert [(t.name, t.trainer, t.dataset_offset, t.paired, t.plan_entry) for t in paired.teachers] == [
        ("structure_function", "nnKDTrainerCls", 0, True, {"channels": ["CT", "FDG", "ACE"]}),
        ("dose_aware", "nnKDTrainerDoseTeacher", 0, True, {"channels": ["CT"]})]
    assert [(t.name, t.trainer, t.dataset_offset, t.paired) for t in catalogue.DATASETS["lesion2d"].teachers] == [
        ("mammography", "nnKDTrainerImPA", 1, False)]
    for key, ds in catalogue.DATASETS.items():
        bench = catalogue.BENCHMARKS[key]
        assert (ds.kind, ds.configuration) == (bench.kind, bench.config)
        assert {t.trainer for t in ds.teachers} <= {m.trainer for m in bench.methods if m.role != catalogue.KD}
        assert ds.batch_case in {c.label for c in catalogue.speed_cases()}
    for case in catalogue.SPEED_CASES:  # every speed row is a trainer the quality benchmark distils with
        assert case.trainer in {m.trainer for m in catalogue.BENCHMARKS[case.dataset].role(catalogue.KD)}, case


@pytest.mark.integration
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "out"
    p = nnkd_cli("bench", "speed", "--quick", "-o", out, "--methods", "REACT-KD", "--iters", 2, "--warmup", 0)
    assert "[bench speed] case" in p.stdout and "ratio" in p.stdout
    for name in ("speed.json", "speed.md", "speed.png"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "speed.json").read_text())
    rows = {r["label"]: r for r in report["rows"]}
    assert set(rows) == {"plain paired3d", "REACT-KD"}
    for row in rows.values():
        assert math.isfinite(row["step_ms"]) and row["step_ms"] > 0
        assert row["peak_mem_mib"] > 0 and row["patch_size"] == [16, 32, 32]
    react = rows["REACT-KD"]
    for key in ("student_ms", "teachers_ms", "losses_fwd_ms", "step_no_losses_ms", "plain_ms", "ratio"):
        assert math.isfinite(react[key]) and react[key] > 0, key
    assert math.isfinite(react["losses_ms"]) and math.isfinite(react["loss_share"])  # differences: may be < 0
    assert react["losses"] == ["logit_kd", "region_graph"] and react["n_teachers"] == 2
    assert len(report["raw"]["REACT-KD"]["times"]["step"]) == 2
