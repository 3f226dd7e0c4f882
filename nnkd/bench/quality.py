"""`nnkd bench quality`: what each distillation method buys on nnkd's synthetic benchmarks, over several seeds.

Per benchmark the teacher(s), the student without distillation (no-KD), the achievable ceiling and the
student with each applicable method are trained through ``nnUNetv2_train`` with the repository's plan
files (schedule, seed, training share and teacher folders filled in), applied to an external synthetic
test set with the student's modality only, and evaluated: macro one-vs-rest AUC (classification,
``nnkd predict`` + ``nnkd evaluate``) or FROC mean sensitivity at 1-4 FP per case (lesion detection,
``nnUNetv2_predict`` + ``nnkd detect`` + ``nnkd evaluate --detection``). The students are data-limited:
they train on a small share of their training set (``Schedule.student_fraction``); the **achievable
ceiling** in their own modality is the no-KD student on ten times that share (``ceiling_fraction``).
Per method it reports mean and sd over seeds, the share of the achievable gap it closes, ``(method -
noKD) / (ceiling - noKD)``, and the share of the teacher-student gap, ``(method - noKD) / (teacher -
noKD)``, both on the seed means, and, per seed, the comparison with the no-KD student of the same seed
on the same test cases: ``nnkd compare`` (paired stratified bootstrap CI of the macro-AUC difference
and DeLong's test per class) or a paired case bootstrap of the mean-sensitivity difference; and, over the
pooled seeds, the mean of those differences with a CI that resamples the test cases (the same cases for
every seed, so no case counts several times) and the seeds.

The seed changes the initialisation and the sampling of every training (teachers included: the
students of seed s learn from the teachers of seed s); the synthetic datasets stay the same.
Writes OUT/quality.json, OUT/quality.md and OUT/quality.png; everything else (data, models,
predictions, logs) goes to OUT/workspace, and a re-run skips what is there already.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from nnkd.bench.catalogue import AUX_TEACHER, BENCHMARKS, CEILING, KD, NOKD, TEACHER, Benchmark, Method, Schedule
from nnkd.errors import NNKDError

DEFAULT_SEEDS = (0, 1, 2)
QUICK_SEEDS = (0,)


# ------------------------------------------------------------------------------------------- statistics
def mean_sd(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and sample sd (n - 1); sd is None for fewer than two values, both None for none."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def gap_share(method: Optional[float], nokd: Optional[float], teacher: Optional[float],
              min_gap: float = 1e-9) -> Optional[float]:
    """``(method - noKD) / (teacher - noKD)``: 0 = no better than the student alone, 1 = as good as the
    teacher, < 0 worse than no KD. None when a value is missing or the teacher is not above no-KD."""
    if method is None or nokd is None or teacher is None or teacher - nokd <= min_gap:
        return None
    return (method - nokd) / (teacher - nokd)


def summarise(bench: Benchmark, values: Dict[str, Dict[int, Optional[float]]]) -> Dict[str, Dict[str, Any]]:
    """Per method: per-seed values, mean, sd, n and, for KD methods, the gap shares on the seed means:
    ``ceiling_gap_share`` against the achievable ceiling in the student's modality (None when the
    benchmark has no ceiling), ``gap_share`` against the teacher on its own modality."""
    stats = {}
    for m in bench.methods:
        per_seed = values.get(m.key, {})
        mean, sd = mean_sd(list(per_seed.values()))
        stats[m.key] = {"label": m.label, "role": m.role, "trainer": m.trainer, "plan": m.plan,
                        "per_seed": {str(s): v for s, v in sorted(per_seed.items())}, "mean": mean, "sd": sd,
                        "n": sum(v is not None for v in per_seed.values())}
    teacher = bench.role(TEACHER)[0].key
    nokd = bench.role(NOKD)[0].key
    ceiling = bench.role(CEILING)[0].key if bench.role(CEILING) else None
    for m in bench.methods:
        kd = m.role == KD
        stats[m.key]["gap_share"] = gap_share(stats[m.key]["mean"], stats[nokd]["mean"], stats[teacher]["mean"]) \
            if kd else None
        stats[m.key]["ceiling_gap_share"] = gap_share(stats[m.key]["mean"], stats[nokd]["mean"],
                                                      stats[ceiling]["mean"]) if kd and ceiling else None
    return stats


def froc_difference_statistic(csv_a: str, csv_b: str, ground_truth: str):
    """``(n_cases, point, statistic)`` of the FROC mean sensitivity (1-4 FP/case) of A minus B on the same
    cases; ``statistic(idx)`` maps (R, N) resampled case indices to (R,) differences."""
    import numpy as np

    from nnkd.detection import read_box_csv
    from nnkd.evaluation.froc import FP_RATES, interp_rows, match_all, weighted_curves

    ma = match_all(read_box_csv(csv_a, scored=True), ground_truth, csv_a)
    mb = match_all(read_box_csv(csv_b, scored=True), ground_truth, csv_b)
    if ma.case_ids != mb.case_ids:
        raise NNKDError(f"{csv_a} and {csv_b} do not cover the same cases")
    rates, n = np.asarray(FP_RATES), ma.n_cases

    def mean_sens(m, weights):
        fps, sens, _ = weighted_curves(m, weights)
        return interp_rows(rates, fps, sens).mean(1)

    def statistic(idx):
        counts = np.bincount((idx + n * np.arange(len(idx))[:, None]).ravel(), minlength=n * len(idx))
        w = counts.reshape(len(idx), n)
        return mean_sens(ma, w) - mean_sens(mb, w)

    point = float(mean_sens(ma, np.ones((1, n)))[0] - mean_sens(mb, np.ones((1, n)))[0])
    return n, point, statistic


def paired_froc_difference(csv_a: str, csv_b: str, ground_truth: str, n_bootstrap: int = 1000,
                           seed: int = 0) -> Dict[str, Any]:
    """FROC mean sensitivity (1-4 FP per case) of A minus B on the same cases, with a paired case-bootstrap 95 % CI
    and the share of resamples where A is not better (a one-sided bootstrap p)."""
    import numpy as np

    from nnkd.evaluation.bootstrap import bootstrap, percentile_ci

    n, point, statistic = froc_difference_statistic(csv_a, csv_b, ground_truth)
    boot = bootstrap(np.zeros(n), statistic, n_resamples=n_bootstrap, seed=seed)
    boot = boot[np.isfinite(boot)]
    ci = percentile_ci(boot) if len(boot) else np.array([float("nan")] * 2)
    return {"difference": point, "ci95": [float(ci[0]), float(ci[1])],
            "p_not_better": float(np.mean(boot <= 0)) if len(boot) else None, "n_cases": n,
            "n_bootstrap": n_bootstrap, "paired": True}


def pooled_difference(task: str, pairs: Sequence[Tuple[str, str]], ground_truth: str,
                      n_bootstrap: int = 1000) -> Dict[str, Any]:
    """The method minus the no-KD student averaged over seeds, ``pairs`` = one (method, no-KD) prediction
    per seed on the same test set, with a 95 % CI that resamples test cases and seeds
    (:func:`nnkd.evaluation.bootstrap.seeds_and_cases`); ``ground_truth``: classification, the test dataset's raw
    folder (the case labels of its dataset.json); detection, its labelsTr folder or a box CSV."""
    import numpy as np

    if task == "classification":
        from nnkd.evaluation.comparison import compare_over_seeds
        from nnkd.evaluation.predictions import read_prediction_csv
        from nnkd.labels import load_json, stored_labels

        path = os.path.join(ground_truth, "dataset.json")
        class_names, labels = stored_labels(load_json(path), path)
        return compare_over_seeds([(read_prediction_csv(a), read_prediction_csv(b)) for a, b in pairs], labels,
                                  class_names, n_bootstrap=n_bootstrap)
    from nnkd.evaluation.bootstrap import percentile_ci, seeds_and_cases

    parts = [froc_difference_statistic(a, b, ground_truth) for a, b in pairs]
    samples = seeds_and_cases(np.zeros(parts[0][0]), [p[2] for p in parts], n_bootstrap)
    samples = samples[np.isfinite(samples)]
    ci = percentile_ci(samples)
    per_seed = [p[1] for p in parts]
    return {"difference": float(np.mean(per_seed)), "ci95": [float(ci[0]), float(ci[1])], "per_seed": per_seed,
            "n_seeds": len(parts), "n_cases": parts[0][0], "p_not_better": float(np.mean(samples <= 0)),
            "bootstrap": {"n_resamples": n_bootstrap, "levels": "cases and seeds", "ci": "percentile 95%"}}


def comparison_summary(task: str, result: Dict[str, Any]) -> Dict[str, Any]:
    """The few numbers of an ``nnkd compare`` result (classification) or :func:`paired_froc_difference`."""
    if task == "detection":
        return {"difference": result["difference"], "ci95": result["ci95"], "p": result.get("p_not_better"),
                "test": "paired case bootstrap of the FROC mean sensitivity (one-sided p: share of resamples <= 0)"}
    per_class = {k: v.get("p") for k, v in result["per_class"].items()}
    out = {"difference": result["difference"]["value"], "ci95": list(result["difference"]["ci95"]),
           "delong_p": per_class, "test": "paired stratified bootstrap CI of the macro-AUC difference; "
                                         "DeLong per class (one-vs-rest)"}
    if "delong" in result:
        out["p"] = result["delong"]["p"]
    return out


# ------------------------------------------------------------------------------------------- tables
def _num(v: Optional[float], digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _comparison_cell(c: Optional[Dict[str, Any]]) -> str:
    if not c:
        return "n/a"
    lo, hi = c["ci95"]
    mark = "*" if lo is not None and hi is not None and (lo > 0 or hi < 0) else ""
    text = f"{c['difference']:+.3f} [{_num(lo)}, {_num(hi)}]{mark}"
    if c.get("delong_p"):
        text += " p " + "/".join(_num(p, 2) for p in c["delong_p"].values())
    elif c.get("p") is not None:
        text += f" p {_num(c['p'], 2)}"
    return text


def ran(bench: Benchmark, stats: Dict[str, Dict[str, Any]]) -> List[Method]:
    """The methods of ``bench`` with at least one run in ``stats`` (teachers and no-KD always)."""
    return [m for m in bench.methods if m.role not in (KD, CEILING) or stats.get(m.key, {}).get("per_seed")]


def markdown_table(bench: Benchmark, stats: Dict[str, Dict[str, Any]],
                   comparisons: Dict[str, Dict[str, Dict[str, Any]]], seeds: Sequence[int],
                   pooled: Optional[Dict[str, Dict[str, Any]]] = None) -> str:
    """One benchmark as a markdown table: value mean +- sd, per seed, gap shares, the comparison with the
    no-KD student over the pooled seeds and per seed. Methods not run (left out with ``--methods``) get no row."""
    pooled = pooled or {}
    head = ["method", "role", "trainer / plan", f"{bench.metric}: mean ± sd (n)",
            *[f"seed {s}" for s in seeds], "gap closed: ceiling", "gap closed: teacher",
            "vs no KD, seeds pooled: Δ [95% CI]", "vs no KD, per seed: Δ [95% CI] p"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in ran(bench, stats):
        st = stats[m.key]
        value = f"{_num(st['mean'])} ± {_num(st['sd'])} ({st['n']})" if st["mean"] is not None else "n/a"
        per_seed = [_num(st["per_seed"].get(str(s))) for s in seeds]
        gaps = [f"{100 * st[k]:.0f} %" if st.get(k) is not None else ("" if m.role != KD else "n/a")
                for k in ("ceiling_gap_share", "gap_share")]
        comp = "; ".join(f"s{s}: {_comparison_cell(comparisons.get(m.key, {}).get(str(s)))}" for s in seeds) \
            if m.role == KD else ""
        p = pooled.get(m.key)
        pool = (f"{p['difference']:+.3f} [{_num(p['ci95'][0])}, {_num(p['ci95'][1])}]"
                f"{'*' if p['ci95'][0] > 0 or p['ci95'][1] < 0 else ''}") if p else ("" if m.role != KD else "n/a")
        rows.append("| " + " | ".join([m.label, m.role, f"`{m.trainer}` / `{m.plan}`", value, *per_seed, *gaps, pool,
                                       comp]) + " |")
    return "\n".join(rows)


def markdown_report(report: Dict[str, Any]) -> str:
    lines = ["# nnkd bench quality", "",
             f"Seeds {', '.join(map(str, report['seeds']))}{' (quick: tiny data, 1-2 epochs, metrics meaningless)' if report['quick'] else ''}; "
             f"{report['minutes']:.1f} min. Test sets are external synthetic sets (other data seed) seen with the "
             "student's modality only; the teacher row is the teacher on its own modality, the ceiling row the no-KD "
             "student trained on ten times the students' share of the training set (the achievable ceiling in the "
             "student's modality).",
             "",
             "*gap closed: ceiling* = (method − no KD) / (ceiling − no KD), *gap closed: teacher* = (method − no KD) / "
             "(teacher − no KD), both on the seed means. *vs no KD, seeds pooled*: the mean over seeds of the method "
             "minus the no-KD student of the same seed, with a 95 % CI that resamples the test cases and the seeds. "
             "*vs no KD, per seed*: the method "
             "minus the no-KD student of the same seed on the same test cases, with a paired bootstrap 95 % CI "
             "(`*`: the CI excludes 0); classification adds DeLong's p per class (one-vs-rest, class order as in the "
             "dataset), detection a one-sided bootstrap p (share of resamples where the method is not better).", ""]
    for key, b in report["benchmarks"].items():
        bench = BENCHMARKS[key]
        lines += [f"## {bench.title}", ""]
        if b.get("skipped"):
            lines += [f"Not run: {b['skipped']}", ""]
            continue
        s = b["schedule"]
        ceiling = (f", ceiling: {100 * s['ceiling_fraction']:.0f} %"
                   if s.get("ceiling_fraction", 0) > s.get("student_fraction", 1) else ", no ceiling")
        share = (f" (students: {100 * s['student_fraction']:.0f} % of fold 0's training cases{ceiling})"
                 if 'student_fraction' in s else "")
        lines += [f"Metric: {bench.metric}. Data: {s['cases']} training cases{' per modality' if bench.unpaired else ''}"
                  f"{share}, {s['test_cases']} test cases, size {'x'.join(map(str, s['size']))}; "
                  f"{s['epochs']} epochs x {s['iterations']} iterations"
                  f"{' (teachers: ' + str(s['teacher_epochs']) + ' epochs)' if s.get('teacher_epochs') else ''}, "
                  f"nnU-Net configuration {bench.config}.", ""]
        lines += [markdown_table(bench, b["stats"], b["comparisons"], report["seeds"], b.get("pooled")), ""]
        if b.get("notes"):
            lines += [f"- {n}" for n in b["notes"]] + [""]
        if b.get("subsets") or b.get("seg_kd"):  # --subsets / --seg-kd (nnkd.bench.subsets)
            from nnkd.bench.subsets import markdown_sections
            lines += [markdown_sections(b)]
    return "\n".join(lines)


def plot(report: Dict[str, Any], path: str) -> None:
    """One panel per benchmark: each method's seed values, mean and sd; teacher and no-KD means as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nnkd.io import save_figure

    runs = [(k, b) for k, b in report["benchmarks"].items() if not b.get("skipped")]
    if not runs:
        return
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4.2), squeeze=False)
    for ax, (key, b) in zip(axes[0], runs):
        bench = BENCHMARKS[key]
        stats = b["stats"]
        methods = ran(bench, stats)
        labels = [m.label for m in methods]
        for i, m in enumerate(methods):
            st = stats[m.key]
            vals = [v for v in st["per_seed"].values() if v is not None]
            color = {TEACHER: "tab:green", AUX_TEACHER: "tab:olive", NOKD: "tab:grey",
                     CEILING: "tab:purple"}.get(m.role, "tab:blue")
            if st["mean"] is not None:
                ax.barh(i, st["mean"], xerr=st["sd"] or 0, color=color, alpha=0.6, capsize=3)
            ax.plot(vals, [i] * len(vals), "k.", ms=5)
        for role, style in ((TEACHER, "--"), (CEILING, "-."), (NOKD, ":")):
            if not bench.role(role):
                continue
            mean = stats[bench.role(role)[0].key]["mean"]
            if mean is not None:
                ax.axvline(mean, color="k", ls=style, lw=1, label=f"{role} mean")
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(bench.metric, fontsize=8)
        ax.set_title(key, fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"nnkd bench quality: mean ± sd over seeds {report['seeds']}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=130)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- running
def method_plan(bench: Benchmark, m: Method, seed: int, schedule: Schedule, teacher_folders: Dict[str, str],
                teacher_dataset: int) -> Dict[str, Any]:
    """The plan file of ``m`` over its trainer's defaults, with this run's name, seed, schedule and teacher folders.

    A second teacher (AUX_TEACHER) missing from ``teacher_folders`` was left out (it did not beat chance): the
    plan's entry for it is dropped. The validation after training is cut to the classification pass without
    test-time mirroring: the benchmark measures on its own test set."""
    from nnkd.hooks import lookup
    from nnkd.pipeline import load_plan_file
    from nnkd.plan import merge_over

    plan = merge_over(lookup("trainers", m.trainer).plan_defaults, load_plan_file(m.plan))
    plan["name"] = f"{bench.key}_{m.key}_seed{seed}"
    plan["seed"] = seed
    teacher = m.role in (TEACHER, AUX_TEACHER) and schedule.teacher_epochs
    plan["schedule"] = {"num_epochs": schedule.teacher_epochs if teacher else schedule.epochs,
                        "num_iterations_per_epoch": schedule.iterations,
                        "num_val_iterations_per_epoch": schedule.val_iterations}
    plan["validation"] = {"segmentation": False, "mirroring": False}
    fraction = {NOKD: schedule.student_fraction, KD: schedule.student_fraction,
                CEILING: schedule.ceiling_fraction}.get(m.role)
    if fraction is not None:  # the data-limited students and their ceiling; teachers train on everything
        plan["student"] = dict(plan.get("student", {}), train_fraction=fraction)
    aux = {a.key for a in bench.role(AUX_TEACHER)}
    teachers = []
    for t in plan.get("teachers", []):
        key = bench.teachers.get(t.get("name"))
        if key is None:
            raise NNKDError(f"plan {m.plan}: teacher {t.get('name')!r} is not one this benchmark trains "
                            f"({', '.join(bench.teachers)})")
        if key in aux and key not in teacher_folders:
            continue
        t = dict(t, model_folder=teacher_folders[key], fold=0, checkpoint="checkpoint_final.pth")
        if not t.get("paired", True):
            t["dataset"] = teacher_dataset
        teachers.append(t)
    if teachers:
        plan["teachers"] = teachers
    for loss in plan.get("losses", []):  # warm-ups sized for long schedules: keep them to a fifth of this one
        params = loss.get("params", {})
        if "warmup_epochs" in params:
            params["warmup_epochs"] = min(params["warmup_epochs"], schedule.epochs // 5)
    return plan


def beats_chance(model_folder: str) -> Tuple[bool, str]:
    """Whether a trained classifier's validation AUC (nnkd's classification pass on its fold-0 validation
    cases) has a 95 % CI above 0.5, and the line that says so. Decided on validation cases, never the test set."""
    path = os.path.join(model_folder, "fold_0", "validation", "classification_summary.json")
    if not os.path.isfile(path):
        return False, f"no validation summary ({path})"
    with open(path) as f:
        result = json.load(f)
    auc, ci = result.get("auc", {}).get("value"), result.get("auc", {}).get("ci95") or [None, None]
    if auc is None or ci[0] is None:
        return False, f"validation AUC not available ({path})"
    return ci[0] > 0.5, f"validation AUC {auc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def cap_network(plans_path: str, config: str, max_features: Optional[int] = None,
                max_batch_size: Optional[int] = None) -> bool:
    """Cap ``features_per_stage`` and ``batch_size`` of ``config`` in an nnU-Net plans file (in place,
    atomically; None = no cap); True when it changed. Every model of a benchmark then builds the same
    smaller network (a teacher's model folder keeps the plans it was trained with)."""
    from nnkd.io import write_json

    with open(plans_path) as f:
        plans = json.load(f)
    conf = plans["configurations"][config]
    kwargs = conf["architecture"]["arch_kwargs"]
    before = (list(kwargs["features_per_stage"]), conf["batch_size"])
    if max_features:
        kwargs["features_per_stage"] = [min(int(n), max_features) for n in kwargs["features_per_stage"]]
    if max_batch_size:
        conf["batch_size"] = min(int(conf["batch_size"]), max_batch_size)
    if (kwargs["features_per_stage"], conf["batch_size"]) == before:
        return False
    write_json(plans_path, plans)
    return True


class QualityRun:
    """One ``nnkd bench quality`` invocation: data, trainings, predictions and the report."""

    parts: Tuple[str, ...] = ()  # optional parts on paired3d (--subsets, --seg-kd): nnkd.bench.subsets.PARTS

    def __init__(self, out: str, seeds: Sequence[int], quick: bool = False, overrides: Optional[Dict[str, Any]] = None,
                 n_bootstrap: int = 1000, verbose: bool = True, workspace: Optional[str] = None,
                 schedules: Optional[Dict[str, Schedule]] = None, jobs: int = 1, shared_results: bool = False,
                 device: str = "cpu", max_features: Optional[int] = None):
        """``shared_results``: model folders go to the workspace's ``nnUNet_results`` (where ``nnkd env --workspace``
        points) instead of one ``nnUNet_results`` per run; needs one seed and one trainer per model (the demo).
        ``max_features``: a smaller cap on the features per stage than each benchmark's own (the demo)."""
        from nnkd.pipeline import Workspace

        self.out = os.path.abspath(out)
        self.seeds = list(seeds)
        self.quick = quick
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        self.schedules = dict(schedules or {})
        self.n_bootstrap = n_bootstrap
        self.jobs = max(1, int(jobs))
        self.shared_results = shared_results
        self.max_features = max_features
        if shared_results and len(self.seeds) != 1:
            raise NNKDError(f"one nnUNet_results folder for every model needs one seed, got {self.seeds}")
        self.ws = Workspace(workspace or os.path.join(self.out, "workspace"), verbose=verbose, tag_lines=self.jobs > 1,
                            device=device)
        self.log = print if verbose else (lambda *a, **k: None)

    def schedule(self, bench: Benchmark) -> Schedule:
        s = self.schedules.get(bench.key) or (bench.quick if self.quick else bench.full)
        return replace(s, **{k: (tuple(v) if k == "size" else v) for k, v in self.overrides.items()})

    def _check_settings(self, bench: Benchmark, schedule: Schedule) -> None:
        """A workspace holds one data size and schedule per benchmark: refuse to mix."""
        from nnkd.io import write_json

        path = self.ws.path("settings", f"{bench.key}.json")
        # unset optional fields (teacher_epochs None) are left out, so workspaces from before they existed resume
        current = {k: v for k, v in json.loads(json.dumps(asdict(schedule))).items() if v is not None}
        if self.max_features:  # the network cap is written into the preprocessed plans: one per workspace too
            current["max_features"] = self.max_features
        if os.path.isfile(path):
            with open(path) as f:
                before = json.load(f)
            if before != current:
                raise NNKDError(f"{self.out} holds the {bench.key} benchmark with other settings ({before}); these "
                                f"are {current}. Use another output folder, or the same settings to resume.")
        else:
            write_json(path, current)

    def available(self, bench: Benchmark) -> Optional[str]:
        """None when every trainer and plan file of ``bench`` exists, else why not."""
        from nnkd.hooks import list_names
        from nnkd.plan import PLANS_DIR

        trainers = set(list_names("trainers"))
        missing = sorted({m.trainer for m in bench.methods} - trainers)
        plans = sorted({m.plan for m in bench.methods if not os.path.isfile(os.path.join(PLANS_DIR, m.plan + ".json"))})
        why = []
        if missing:
            why.append(f"trainer(s) {', '.join(missing)} not registered")
        if plans:
            why.append(f"plan file(s) {', '.join(f'nnkd/plans/{p}.json' for p in plans)} missing")
        return "; ".join(why) or None

    # ------------------------------------------------------------------ data
    def data(self, bench: Benchmark, s: Schedule) -> Dict[str, Any]:
        """Training sets (planned and preprocessed) and test sets; returns ids and raw folders."""
        from nnkd.pipeline import plan_and_preprocess, synth

        ws, did = self.ws, bench.dataset_id
        test_id = did + 2
        synth(ws, bench.kind, did, s.cases, 0, s.size)
        synth(ws, bench.kind, test_id, s.test_cases, 1000, s.size)
        train_ids = [did, did + 1] if bench.unpaired else [did]
        plan_and_preprocess(ws, train_ids, bench.config)
        for d in train_ids:
            cap_network(os.path.join(ws.dataset_folder("nnUNet_preprocessed", d), "nnUNetPlans.json"),
                        bench.config, min(filter(None, (bench.max_features, self.max_features)), default=None),
                        bench.max_batch_size)
        return {"student": did, "teacher": did + 1 if bench.unpaired else did,
                "test_student": test_id, "test_teacher": test_id + 1 if bench.unpaired else test_id}

    # ------------------------------------------------------------------ one model
    def test_images(self, bench: Benchmark, m: Method, ids: Dict[str, int]) -> str:
        """The test set's images with the channels ``m`` deploys with (built once, before any parallel work)."""
        from nnkd.pipeline import channel_images

        test_id = ids["test_teacher"] if m.teacher_side else ids["test_student"]
        tag = "all" if m.channels is None else "ch" + "_".join(map(str, m.channels))
        return channel_images(self.ws.dataset_folder("nnUNet_raw", test_id),
                              None if m.channels is None else list(m.channels),
                              self.ws.path("test_images", f"{bench.key}_{test_id}_{tag}"))

    def run_model(self, bench: Benchmark, m: Method, seed: int, s: Schedule, ids: Dict[str, int],
                  teacher_folders: Dict[str, str]) -> Dict[str, Any]:
        """Train (unless trained), predict the test set and evaluate one model; returns its run record."""
        from nnkd.io import write_json
        from nnkd.pipeline import (evaluate_classes, evaluate_detections, is_trained, model_folder, predict_classes,
                                   predict_detections, train)

        ws = self.ws
        run_dir = ws.path("runs", bench.key, f"seed{seed}", m.key)
        train_id = ids["teacher"] if m.teacher_side else ids["student"]
        test_id = ids["test_teacher"] if m.teacher_side else ids["test_student"]
        results = None if self.shared_results else os.path.join(run_dir, "nnUNet_results")
        folder = model_folder(ws, train_id, m.trainer, bench.config, results)
        record_path = os.path.join(run_dir, "run.json")
        label = f"{bench.key} seed {seed}: {m.label}"
        record = json.load(open(record_path)) if os.path.isfile(record_path) and is_trained(folder) else {}
        t0 = time.time()
        if not is_trained(folder):
            for stale in ("predictions", "report", "vs_nokd.json", "run.json"):  # from an earlier, unfinished model
                path = os.path.join(run_dir, stale)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
            plan = method_plan(bench, m, seed, s, teacher_folders, ids["teacher"])
            train(ws, train_id, bench.config, m.trainer, plan, label, results, log=os.path.join(run_dir, "train.log"))
            record = {"train_seconds": round(time.time() - t0, 1)}
        test_raw = ws.dataset_folder("nnUNet_raw", test_id)
        images = self.test_images(bench, m, ids)
        pred_dir, report_dir = os.path.join(run_dir, "predictions"), os.path.join(run_dir, "report")
        logs = {"log": os.path.join(run_dir, "predict.log"), "label": label}
        if bench.task == "classification":
            pred = predict_classes(ws, images, pred_dir, folder, **logs)
            metrics = evaluate_classes(ws, pred, str(test_id), report_dir, log=os.path.join(run_dir, "evaluate.log"),
                                       label=label)
            value = metrics["auc"]["value"]
            extra = {"ci95": metrics["auc"]["ci95"], "accuracy": metrics.get("accuracy")}
        else:
            pred = predict_detections(ws, images, pred_dir, folder, **logs)
            froc = evaluate_detections(ws, pred, os.path.join(test_raw, "labelsTr"), report_dir,
                                       log=os.path.join(run_dir, "evaluate.log"), label=label)
            value = froc["mean_sensitivity"]
            extra = {"ci95": froc["mean_sensitivity_ci95"], "sensitivity_at_2fp": froc["sensitivity_at_2fp"]}
        record.update(value=value, model_folder=folder, predictions=pred, report=report_dir, test_dataset=test_id,
                      test_images=images, logs={"train": os.path.join(run_dir, "train.log"), "predict": logs["log"],
                                                "evaluate": os.path.join(run_dir, "evaluate.log")},
                      **extra)
        write_json(record_path, record)
        self.log(f"[{bench.key}] seed {seed}: {m.label}: {bench.metric} {_num(value)} "
                 f"({time.time() - t0:.0f} s{'' if 'train_seconds' not in record else ', training ' + str(round(record['train_seconds'])) + ' s'})")
        return record

    def compare(self, bench: Benchmark, m: Method, seed: int, rec: Dict[str, Any], nokd: Dict[str, Any]) -> Dict[str, Any]:
        from nnkd.io import write_json
        from nnkd.pipeline import compare_classes

        run_dir = self.ws.path("runs", bench.key, f"seed{seed}", m.key)
        out = os.path.join(run_dir, "vs_nokd.json")
        # redo when either prediction is newer (the no-KD student of this seed was trained again)
        redo = not os.path.isfile(out) or os.path.getmtime(out) < max(os.path.getmtime(rec["predictions"]),
                                                                       os.path.getmtime(nokd["predictions"]))
        if bench.task == "classification":
            result = compare_classes(self.ws, rec["predictions"], nokd["predictions"], str(rec["test_dataset"]), out,
                                     [m.key, "nokd"], redo=redo, log=os.path.join(run_dir, "compare.log"),
                                     label=f"{bench.key} seed {seed}: {m.label}")
        else:
            if redo:
                gt = os.path.join(self.ws.dataset_folder("nnUNet_raw", rec["test_dataset"]), "labelsTr")
                write_json(out, paired_froc_difference(rec["predictions"], nokd["predictions"], gt, self.n_bootstrap))
            with open(out) as f:
                result = json.load(f)
        return comparison_summary(bench.task, result)

    def _parallel(self, tasks: List[Tuple[int, Method]], fn) -> List[Any]:
        """``fn(seed, method)`` for every task, ``self.jobs`` at a time; the first error is raised."""
        if self.jobs <= 1 or len(tasks) <= 1:
            return [fn(seed, m) for seed, m in tasks]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.jobs) as pool:
            return list(pool.map(lambda t: fn(*t), tasks))

    # ------------------------------------------------------------------ one benchmark
    def run_benchmark(self, bench: Benchmark, methods: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        s = self.schedule(bench)
        needed = set(bench.teachers.values()) | {m.key for m in bench.methods if m.role in (TEACHER, NOKD, CEILING)}
        chosen = [m for m in bench.methods if methods is None or m.key in methods or m.key in needed]
        if s.ceiling_fraction <= s.student_fraction:  # the ceiling would repeat the no-KD student
            chosen = [m for m in chosen if m.role != CEILING]
        if self.shared_results:  # nnU-Net names a model folder by dataset, trainer and configuration only
            slots = [(m.teacher_side, m.trainer) for m in chosen]
            twice = sorted({t for side, t in slots if slots.count((side, t)) > 1})
            if twice:
                raise NNKDError(f"[{bench.key}] one nnUNet_results folder cannot hold two models of trainer(s) "
                                f"{', '.join(twice)}; leave shared_results off")
        why = self.available(bench)
        if why:
            self.log(f"[{bench.key}] skipped: {why}")
            return {"skipped": why}
        self._check_settings(bench, s)
        t0 = time.time()
        self.log(f"[{bench.key}] data: {s.cases} training / {s.test_cases} test cases of {'x'.join(map(str, s.size))}")
        ids = self.data(bench, s)
        for m in chosen:
            self.test_images(bench, m, ids)
        teachers = [(seed, m) for seed in self.seeds for m in chosen if m.role in (TEACHER, AUX_TEACHER)]
        students = [(seed, m) for seed in self.seeds for m in chosen if m.role in (NOKD, CEILING, KD)]
        self.log(f"[{bench.key}] {len(teachers) + len(students)} models ({len(self.seeds)} seed(s)), "
                 f"{s.epochs} epochs x {s.iterations} iterations each, {self.jobs} at a time")
        records: Dict[str, Dict[str, Any]] = {}
        folders: Dict[int, Dict[str, str]] = {seed: {} for seed in self.seeds}
        # teachers first (all seeds), then every student with the teachers of its seed
        done = self._parallel(teachers, lambda seed, m: self.run_model(bench, m, seed, s, ids, {}))
        notes = []
        for (seed, m), rec in zip(teachers, done):
            records.setdefault(m.key, {})[str(seed)] = rec
            used, why = (True, "") if m.role == TEACHER else beats_chance(rec["model_folder"])
            rec["used_as_teacher"] = used
            if used:
                folders[seed][m.key] = rec["model_folder"]
            if m.role == AUX_TEACHER:
                notes.append(f"seed {seed}: {m.label} {'used' if used else 'left out'} by every distilled student: "
                             f"{why} ({'above' if used else 'not above'} chance)")
                self.log(f"[{bench.key}] {notes[-1]}")
        done = self._parallel(students, lambda seed, m: self.run_model(bench, m, seed, s, ids, folders[seed]))
        for (seed, m), rec in zip(students, done):
            records.setdefault(m.key, {})[str(seed)] = rec
        values = {k: {int(seed): r["value"] for seed, r in v.items()} for k, v in records.items()}
        nokd_key = bench.role(NOKD)[0].key
        comparisons: Dict[str, Dict[str, Dict[str, Any]]] = {}
        for seed, m in students:
            if m.role == KD:
                comparisons.setdefault(m.key, {})[str(seed)] = self.compare(
                    bench, m, seed, records[m.key][str(seed)], records[nokd_key][str(seed)])
        pooled = {}
        if len(self.seeds) > 1:
            test_raw = self.ws.dataset_folder("nnUNet_raw", ids["test_student"])
            for m in bench.role(KD):
                if m.key in records and len(records[m.key]) == len(self.seeds):
                    pairs = [(records[m.key][str(s_)]["predictions"], records[nokd_key][str(s_)]["predictions"])
                             for s_ in self.seeds]
                    truth = test_raw if bench.task == "classification" else os.path.join(test_raw, "labelsTr")
                    pooled[m.key] = pooled_difference(bench.task, pairs, truth, self.n_bootstrap)
        stats = summarise(bench, values)
        if bench.unpaired:
            notes.append("The teacher is evaluated on the teacher modality's test set, the students on the student "
                         "modality's (same generator seed, unpaired cases).")
        if bench.key == "unpaired2d":
            notes.append("The no-KD student is nnKDTrainerClsBaseline with the teacher's plan (pagkd_teacher) "
                         "on the student dataset.")
        return {"schedule": asdict(s), "datasets": ids, "stats": stats, "comparisons": comparisons, "pooled": pooled,
                "runs": records, "minutes": round((time.time() - t0) / 60, 1), "notes": notes}

    def run(self, benchmarks: Sequence[str], methods: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        from nnkd.io import write_json, write_text

        t0 = time.time()
        report: Dict[str, Any] = {"seeds": self.seeds, "quick": self.quick, "benchmarks": {}}
        for key in benchmarks:
            report["benchmarks"][key] = self.run_benchmark(BENCHMARKS[key], methods)
            if self.parts and key == "paired3d":  # --subsets / --seg-kd
                from nnkd.bench.subsets import run_parts
                report["benchmarks"][key].update(run_parts(self, BENCHMARKS[key], report["benchmarks"][key], self.parts))
        report["minutes"] = round((time.time() - t0) / 60, 1)
        os.makedirs(self.out, exist_ok=True)
        write_json(os.path.join(self.out, "quality.json"), report)
        md = markdown_report(report)
        write_text(os.path.join(self.out, "quality.md"), md + "\n")
        plot(report, os.path.join(self.out, "quality.png"))
        self.log("\n" + md)
        self.log(f"written: {os.path.join(self.out, 'quality.json')}, quality.md, quality.png "
                 f"({report['minutes']:.1f} min)")
        return report


# ------------------------------------------------------------------------------------------- CLI
def add_arguments(parser) -> None:
    parser.add_argument("-o", "--output", default=None, metavar="OUT",
                        help="output folder: quality.json/.md/.png and the workspace; a re-run resumes "
                             "(default nnkd_quality, or nnkd_quality_quick with --quick)")
    parser.add_argument("--benchmarks", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS),
                        help="benchmarks to run (default: all; one whose trainers are not available is skipped)")
    parser.add_argument("--methods", nargs="+", metavar="KEY",
                        help="only these method keys (the teachers and the no-KD student always run): "
                             + "; ".join(f"{b.key}: {', '.join(m.key for m in b.role(KD))}" for b in BENCHMARKS.values()))
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="training seeds (default 0 1 2; with --quick 0); at least 3 for a meaningful sd")
    parser.add_argument("--quick", action="store_true",
                        help="tiny data, 1 epoch of 2 iterations, one seed: exercises the whole path, metrics meaningless")
    parser.add_argument("--jobs", type=int, default=1,
                        help="trainings run at once (default 1); 2 overlaps nnU-Net's single-threaded start-up, data "
                             "augmentation and validation on a 2-core machine")
    parser.add_argument("--epochs", type=int, help="override the epochs of every benchmark")
    parser.add_argument("--iterations", type=int, help="override the training iterations per epoch")
    parser.add_argument("--cases", type=int, help="override the training cases (per dataset)")
    parser.add_argument("--test-cases", type=int, help="override the test cases")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples of the detection comparison")
    parser.add_argument("-device", "--device", default="cpu", choices=("cpu", "cuda"),
                        help="device of every training and prediction (default cpu)")
    parser.add_argument("--subsets", action="store_true",
                        help="paired3d: also the teacher without modality dropout, and AUC per channel subset of both "
                             "teachers against the CT students (OUT/subsets/, a section of quality.md)")
    parser.add_argument("--seg-kd", action="store_true",
                        help="paired3d: also the CT-only segmentation students with and without voxel-wise KD "
                             "(nnKDTrainerSegKD / nnKDTrainerSegKDBaseline), Dice vs the teacher (OUT/seg_kd.json)")


def run(args) -> int:
    seeds = args.seeds if args.seeds is not None else list(QUICK_SEEDS if args.quick else DEFAULT_SEEDS)
    if not seeds or len(set(seeds)) != len(seeds):
        raise NNKDError(f"--seeds must be distinct, got {seeds}")
    if args.jobs < 1:
        raise NNKDError(f"--jobs must be >= 1, got {args.jobs}")
    known = {m.key for b in BENCHMARKS.values() for m in b.methods}
    unknown = sorted(set(args.methods or []) - known)
    if unknown:
        raise NNKDError(f"unknown method key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for name in ("epochs", "iterations", "cases", "test_cases"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise NNKDError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    out = args.output or ("nnkd_quality_quick" if args.quick else "nnkd_quality")
    overrides = {"epochs": args.epochs, "iterations": args.iterations, "cases": args.cases,
                 "test_cases": args.test_cases}
    parts = tuple(p for p in ("subsets", "seg_kd") if getattr(args, p, False))  # nnkd.bench.subsets
    if parts and "paired3d" not in args.benchmarks:
        raise NNKDError("--subsets / --seg-kd add to the paired3d benchmark: include it in --benchmarks")
    q = QualityRun(out, seeds, args.quick, overrides, args.n_bootstrap, jobs=args.jobs, device=args.device)
    q.parts = parts
    q.run(args.benchmarks, args.methods)
    return 0
