"""The ``nnkd bench speed`` report: per-case medians, ratios and shares, as a table, markdown and a plot."""
from __future__ import annotations

import os
import statistics
from dataclasses import asdict
from typing import Any, Dict, List, Sequence

from nnkd.bench.catalogue import DATASETS, Case, plain_case
from nnkd.bench.speed.measure import median

TARGET_RATIO = 1.10
TARGET_LOSS_SHARE = 0.05


def environment(device: str) -> Dict[str, Any]:
    """Versions and hardware the report was measured on."""
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "processor": _cpu_name()}
    try:
        from importlib.metadata import version

        info["nnunetv2"] = version("nnunetv2")
    except Exception:  # pragma: no cover - informational only
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()


def build_report(results: Dict[str, Dict[str, Any]], cases: List[Case], settings: Dict[str, Any],
                 environment: Dict[str, Any]) -> Dict[str, Any]:
    """Rows of the table. Ratios and loss shares are medians of per-batch values (variants interleaved
    on the same batch); ``ratio_vs_plain_row`` uses the plain trainer's own process instead."""
    rows = []
    for case in cases:
        r = results[case.label]
        t = r["times"]
        plain = results.get(plain_case(case.dataset).label)
        row = {"label": case.label, "trainer": case.trainer, "dataset": case.dataset, "kd": r["kd"],
               "patch_size": r["patch_size"], "batch_size": r["batch_size"], "threads": r["threads"],
               "step_ms": median(t["step"]) * 1e3, "step_iqr_ms": _iqr(t["step"]) * 1e3,
               "peak_mem_mib": r["peak_mem_mib"], "step_mem_mib": r["step_mem_mib"],
               "memory_measure": r["memory_measure"], "losses": r.get("losses", []),
               "n_teachers": r.get("n_teachers", 0), "load": [r.get("load_before"), r.get("load_after")]}
        if not r["kd"]:
            row["student_ms"] = row["step_ms"]
        else:
            row.update(step_no_losses_ms=median(t["step_no_losses"]) * 1e3,
                       student_ms=median(t["student"]) * 1e3, teachers_ms=median(t["teachers"]) * 1e3,
                       losses_ms=median([f + b for f, b in zip(t["losses_fwd"], t["losses_bwd"])]) * 1e3,
                       losses_fwd_ms=median(t["losses_fwd"]) * 1e3, losses_bwd_ms=median(t["losses_bwd"]) * 1e3,
                       losses_ab_ms=median([a - b for a, b in zip(t["step"], t["step_no_losses"])]) * 1e3,
                       loss_share=median([(f + b) / s for f, b, s in
                                           zip(t["losses_fwd"], t["losses_bwd"], t["step"])]),
                       ratio=median([a / (s + q) for a, s, q in zip(t["step"], t["student"], t["teachers"])]))
            if plain is not None:
                row["plain_ms"] = median(plain["times"]["step"]) * 1e3
                row["ratio_vs_plain_row"] = row["step_ms"] / (row["plain_ms"] + row["teachers_ms"])
                row["mem_vs_plain_mib"] = row["peak_mem_mib"] - plain["peak_mem_mib"]
        rows.append(row)
    return {"benchmark": "nnkd bench speed", "settings": settings, "environment": environment,
            "targets": {"ratio": TARGET_RATIO, "loss_share": TARGET_LOSS_SHARE},
            "datasets": {d: asdict(DATASETS[d]) for d in dict.fromkeys(c.dataset for c in cases)},
            "rows": rows, "raw": results}


def _iqr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return float(q[2] - q[0])


COLUMNS = [  # (header, row key, format)
    ("method", "label", "{}"), ("trainer", "trainer", "{}"), ("step ms", "step_ms", "{:.1f}"),
    ("student ms", "student_ms", "{:.1f}"), ("teachers ms", "teachers_ms", "{:.1f}"), ("ratio", "ratio", "{:.3f}"),
    ("ratio/plain", "ratio_vs_plain_row", "{:.3f}"), ("losses ms", "losses_ms", "{:.1f}"),
    ("loss fwd ms", "losses_fwd_ms", "{:.1f}"), ("loss share", "loss_share", "{:.1%}"),
    ("peak MiB", "peak_mem_mib", "{:.0f}"), ("vs plain MiB", "mem_vs_plain_mib", "{:+.0f}"),
]


def _cells(row: Dict[str, Any]) -> List[str]:
    out = []
    for _, key, fmt in COLUMNS:
        v = row.get(key)
        cell = "-" if v is None else fmt.format(v)
        if key == "ratio" and v is not None and v > TARGET_RATIO:
            cell += " !"
        if key == "loss_share" and v is not None and v > TARGET_LOSS_SHARE:
            cell += " !"
        out.append(cell)
    return out


def _caption(report: Dict[str, Any]) -> List[str]:
    s, e = report["settings"], report["environment"]
    threads = sorted({r["threads"] for r in report["rows"]})
    loads = [x[0] for r in report["rows"] for x in r["load"] if x]
    lines = [f"device {s['device']} ({e.get('gpu') or e.get('processor', '?')}, {e.get('cpu_count')} CPUs, "
             f"torch {e.get('torch')}, {'/'.join(map(str, threads))} torch thread(s)); medians over {s['iters']} "
             f"batches after {s['warmup']} warm-up{' (quick)' if s['quick'] else ''}; 1-min load average "
             f"{min(loads, default=float('nan')):.1f}-{max(loads, default=float('nan')):.1f} during the run"]
    for d, ds in report["datasets"].items():
        row = next(r for r in report["rows"] if r["dataset"] == d)
        lines.append(f"{d}: patch {'x'.join(map(str, row['patch_size']))}, batch {row['batch_size']}, "
                     f"{ds['configuration']}, {len(ds['teachers'])} teacher(s)")
    lines += [
        "step: train_step with everything on; student: the same trainer's step with teachers and losses off "
        "(the plain student step; the 'plain' row is nnKDTrainerClsBaseline in its own process); teachers: "
        "teacher_outputs alone; losses: the LossBank forward + backward on the step's own outputs (cut from the "
        "student's graph), loss fwd: its forward; all variants interleaved on the same batches",
        f"ratio = step / (student + teachers) per batch, median (target <= {TARGET_RATIO:.2f}); ratio/plain uses "
        f"the plain row instead of the student column; loss share = losses / step (target <= "
        f"{TARGET_LOSS_SHARE:.0%}); '!' marks a miss",
        f"memory: {report['rows'][0]['memory_measure']} during the timed steps",
    ]
    return lines


def format_table(report: Dict[str, Any]) -> str:
    rows = [[h for h, _, _ in COLUMNS]] + [_cells(r) for r in report["rows"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [""] + _caption(report))


def format_markdown(report: Dict[str, Any]) -> str:
    head = [h for h, _, _ in COLUMNS]
    lines = ["# nnkd bench speed", "", "| " + " | ".join(head) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in report["rows"]]
    return "\n".join(lines + [""] + [f"- {c}" for c in _caption(report)]) + "\n"


def plot(report: Dict[str, Any], path: str) -> None:
    """Per method: KD step and student + teachers, relative to student + teachers; extra peak memory."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    from nnkd.io import save_figure

    rows = [r for r in report["rows"] if r["kd"]]
    fig, (ax, axm) = plt.subplots(1, 2, figsize=(12, 0.8 * max(len(rows), 1) + 1.8),
                                  gridspec_kw={"width_ratios": [3, 1]})
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        base = r["student_ms"] + r["teachers_ms"]
        losses = max(r["losses_ms"], 0.0) / base
        ax.barh(y + 0.2, r["step_ms"] / base - losses, 0.38, color="#4c72b0",
                label="KD step without losses" if i == 0 else None)
        ax.barh(y + 0.2, losses, 0.38, left=r["step_ms"] / base - losses, color="#dd8452",
                label="distillation losses (fwd+bwd)" if i == 0 else None)
        ax.barh(y - 0.2, r["student_ms"] / base, 0.38, color="#8c8c8c", label="plain student step" if i == 0 else None)
        ax.barh(y - 0.2, r["teachers_ms"] / base, 0.38, left=r["student_ms"] / base, color="#55a868",
                label="teacher forwards" if i == 0 else None)
        ax.text(max(r["step_ms"] / base, 1.0) + 0.01, y,
                f"ratio {r['ratio']:.2f}, losses {r['loss_share']:.1%}\nstep {r['step_ms']:.0f} ms",
                va="center", fontsize=8)
        axm.barh(y, r.get("mem_vs_plain_mib", 0.0), 0.6, color="#4c72b0")
    ax.axvline(TARGET_RATIO, color="#c44e52", ls="--", lw=1, label=f"target ratio {TARGET_RATIO:.2f}")
    labels = [f"{r['label']}\n({r['dataset']})" for r in rows][::-1]
    for a in (ax, axm):
        a.set_yticks(range(len(rows)))
        a.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("time per training iteration relative to plain student + teacher forwards "
                  "(upper bar: KD step; lower: student + teachers)")
    ax.set_xlim(0, max([r["step_ms"] / (r["student_ms"] + r["teachers_ms"]) for r in rows] + [TARGET_RATIO]) * 1.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=7, frameon=False)
    axm.set_xlabel("peak memory above plain (MiB)")
    s = report["settings"]
    fig.suptitle(f"nnkd bench speed: {s['device']}, medians over {s['iters']} batches", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def write_outputs(report: Dict[str, Any], out: str) -> None:
    from nnkd.io import write_json, write_text

    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "speed.json"), report)
    write_text(os.path.join(out, "speed.md"), format_markdown(report))
    plot(report, os.path.join(out, "speed.png"))
