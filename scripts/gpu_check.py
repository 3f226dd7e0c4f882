"""GPU check of nnkd: everything that only runs on CUDA, in one command, with a Markdown report.

Steps (each recorded as PASS / FAIL / SKIP with its time and log; a failed step does not stop the
others; the exit status is 1 when any step failed):

1. ``environment``: torch, CUDA device, bfloat16 support, ``nvidia-smi``.
2. ``autocast tests``: ``tests/test_autocast.py`` with ``NNKD_TEST_DEVICE=cuda``: one ``train_step``
   of every registered trainer under nnU-Net's CUDA autocast (float16, bfloat16) and GradScaler,
   against float32, plus the float32 islands of the losses.
3. ``bench speed``: ``nnkd bench speed -device cuda`` (ratio and loss share with nnU-Net's
   autocast; alone on the machine, so the timings are clean).
4. ``train+predict <benchmark>`` (paired3d, unpaired2d, lesion2d, run at the same time):
   ``nnkd bench quality --quick --epochs 2 -device cuda``: every method's trainer (teachers,
   no-KD students, REACT-KD and its baselines, PaGKD and its ablations, the ImPA teacher, CoMoTo
   and its baselines) trains 2 epochs with ``nnUNetv2_train -device cuda``, then predicts its
   test set (``nnkd predict -device cuda``, or ``nnUNetv2_predict`` + ``nnkd detect``) and is
   evaluated. Metrics of a 2-epoch run mean nothing; the step checks that the path runs.
5. ``nnkd predict``: ``nnkd predict -device cuda`` of the REACT-KD student once more, on its own,
   timed.

Usage: ``scripts/gpu_check.sh -o OUT`` (about 8 minutes on one GPU); ``--dry-run`` lists the
commands and writes the report skeleton without running anything; ``--device cpu`` runs the same
steps on the CPU (slow: the training steps alone take about 15 minutes on 2 cores).
The report is ``OUT/gpu_check.md`` (and ``OUT/gpu_check.json``).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = ("paired3d", "unpaired2d", "lesion2d")
CPU_SLOWER = 10  # a 2-core CPU run of the same steps takes about this much longer than one GPU

ENV_PROBE = r"""
import torch, nnkd, nnunetv2, importlib.metadata as md
print("nnkd", nnkd.__version__, "| nnunetv2", md.version("nnunetv2"), "| torch", torch.__version__,
      "| CUDA build", torch.version.cuda)
ok = torch.cuda.is_available()
print("cuda available:", ok)
if ok:
    p = torch.cuda.get_device_properties(0)
    print("device:", torch.cuda.get_device_name(0), f"| {p.total_memory / 2**30:.0f} GiB",
          "| bf16:", torch.cuda.is_bf16_supported())
raise SystemExit(0 if ok or DEVICE == "cpu" else 1)
"""


@dataclass
class Step:
    """One command of the check. ``group``: steps with the same group run at the same time."""

    name: str
    argv: List[str]
    timeout: int
    env: Dict[str, str] = field(default_factory=dict)
    group: Optional[str] = None
    prepare: Optional[Callable[[], Optional[List[str]]]] = None  # late argv (needs an earlier step's output)
    status: str = "pending"
    seconds: float = 0.0
    log: str = ""
    note: str = ""


def nnkd(*args: str) -> List[str]:
    return [sys.executable, "-m", "nnkd.cli", *args]


def build_steps(out: str, device: str, jobs: int) -> List[Step]:
    """The steps in order; timeouts are for one GPU (a CPU run gets ``CPU_SLOWER`` times as long)."""
    quality = os.path.join(out, "quality")
    steps = [
        Step("environment", [sys.executable, "-c", f"DEVICE = {device!r}\n" + ENV_PROBE], 120),
        Step("autocast tests", [sys.executable, "-m", "pytest", "-q", "-n0", "-p", "no:cacheprovider", "-rfE",
                                os.path.join(REPO, "tests", "test_autocast.py")], 300,
             env={"NNKD_TEST_DEVICE": device}),
        Step("bench speed", nnkd("bench", "speed", "-device", device, "-o", os.path.join(out, "speed")), 420),
    ]
    for bench in BENCHMARKS:
        steps.append(Step(f"train+predict {bench}",
                          nnkd("bench", "quality", "--quick", "--epochs", "2", "--benchmarks", bench, "--jobs", str(jobs),
                               "--n-bootstrap", "100", "-device", device, "-o", os.path.join(quality, bench)),
                          420, env={"nnUNet_n_proc_DA": "2"}, group="quality"))

    def predict_argv() -> Optional[List[str]]:
        ws = os.path.join(quality, "paired3d", "workspace")
        record = os.path.join(ws, "runs", "paired3d", "seed0", "react", "run.json")
        images = sorted(glob.glob(os.path.join(ws, "test_images", "paired3d_*_ch0")))
        if not os.path.isfile(record) or not images:
            return None
        with open(record) as f:
            model = json.load(f)["model_folder"]
        return nnkd("predict", "-i", images[0], "-o", os.path.join(out, "predict_react"), "-m", model, "-f", "0",
                    "-device", device)

    steps.append(Step("nnkd predict", nnkd("predict", "...", "-device", device), 180, prepare=predict_argv))
    if device == "cpu":
        for s in steps:
            s.timeout *= CPU_SLOWER
    return steps


def _shown(argv: List[str]) -> str:
    return " ".join("<script>" if "\n" in a else a for a in argv)


def _start(step: Step, logs: str, base_env: Dict[str, str]) -> subprocess.Popen:
    step.log = os.path.join(logs, step.name.replace(" ", "_").replace("+", "_") + ".log")
    f = open(step.log, "w")
    f.write("$ " + _shown(step.argv) + "\n")
    f.flush()
    # own process group: a timeout ends the step's children too (nnUNetv2_train under bench quality)
    proc = subprocess.Popen(step.argv, env=dict(base_env, **step.env), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    proc.log_file = f  # type: ignore[attr-defined]
    proc.t0 = time.time()  # type: ignore[attr-defined]
    return proc


def _pump(step: Step, proc: subprocess.Popen, echo: bool) -> None:
    for line in proc.stdout:  # type: ignore[union-attr]
        proc.log_file.write(line)  # type: ignore[attr-defined]
        if echo:
            print(f"  | {line.rstrip()}", flush=True)


def _pytest_summary(log: str) -> Optional[str]:
    """pytest's last line ("26 passed in 110.13s"), when the step ran pytest."""
    with open(log, encoding="utf-8", errors="replace") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    last = lines[-1] if lines else ""
    return last.strip("= ") if (" passed" in last or " failed" in last or " error" in last) and " in " in last else None


def _finish(step: Step, proc: subprocess.Popen) -> None:
    proc.log_file.close()  # type: ignore[attr-defined]
    step.seconds = round(time.time() - proc.t0, 1)  # type: ignore[attr-defined]
    rc = proc.returncode
    if getattr(proc, "timed_out", False):
        step.status, step.note = "FAIL", f"timed out after {step.timeout} s"
    else:
        step.status, step.note = ("PASS", "") if rc == 0 else ("FAIL", f"exit {rc}")
        summary = _pytest_summary(step.log)
        if summary:
            step.note = "; ".join(filter(None, (step.note, summary)))
    print(f"[gpu_check] {step.name}: {step.status} in {step.seconds:.0f} s"
          + (f" ({step.note}; log {step.log})" if step.note else ""), flush=True)


def _run_group(steps: List[Step], logs: str, base_env: Dict[str, str]) -> None:
    """Run ``steps`` at the same time (one thread per output pipe); echo a lone step's output."""
    import threading

    procs = []
    for step in steps:
        print(f"[gpu_check] {step.name}: {_shown(step.argv)}", flush=True)
        procs.append(_start(step, logs, base_env))
    threads = [threading.Thread(target=_pump, args=(s, p, len(steps) == 1), daemon=True) for s, p in zip(steps, procs)]
    for t in threads:
        t.start()
    for step, proc, thread in zip(steps, procs, threads):
        remaining = max(1.0, step.timeout - (time.time() - proc.t0))  # type: ignore[attr-defined]
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            proc.timed_out = True  # type: ignore[attr-defined]
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        thread.join()
        _finish(step, proc)


def run_steps(steps: List[Step], out: str, dry_run: bool = False, stop_after_failed: str = "environment",
              device: str = "cuda") -> int:
    """Run every step (groups at once), fail-soft; write the report. Returns 1 if any step failed."""
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    base_env = dict(os.environ, PYTHONUNBUFFERED="1")
    base_env.setdefault("nnUNet_compile", "0")  # torch.compile would take longer than these short runs
    base_env["PYTHONPATH"] = REPO + (os.pathsep + base_env["PYTHONPATH"] if base_env.get("PYTHONPATH") else "")
    t0 = time.time()
    i = 0
    blocked = None
    while i < len(steps):
        group = [steps[i]]
        while steps[i].group and i + len(group) < len(steps) and steps[i + len(group)].group == steps[i].group:
            group.append(steps[i + len(group)])
        i += len(group)
        for step in group:
            if step.prepare is not None and not dry_run:
                argv = step.prepare()
                if argv is None:
                    step.status, step.note = "SKIP", "nothing to run: an earlier step did not produce its input"
                else:
                    step.argv = argv
        todo = [s for s in group if s.status == "pending"]
        if blocked or dry_run:
            for s in todo:
                s.status, s.note = ("DRY-RUN", "") if dry_run and not blocked else ("SKIP", blocked)
                print(f"[gpu_check] {s.name}: {s.status} {_shown(s.argv)}", flush=True)
            continue
        if todo:
            _run_group(todo, logs, base_env)
        if any(s.name == stop_after_failed and s.status == "FAIL" for s in group):
            blocked = f"the {stop_after_failed} step failed"
    minutes = (time.time() - t0) / 60
    write_report(steps, out, minutes, device)
    failed = [s.name for s in steps if s.status == "FAIL"]
    print(f"[gpu_check] {len(steps) - len(failed)} of {len(steps)} steps without failure in {minutes:.1f} min; "
          f"report {os.path.join(out, 'gpu_check.md')}" + (f"; FAILED: {', '.join(failed)}" if failed else ""),
          flush=True)
    return 1 if failed else 0


def _read(path: str) -> Optional[str]:
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    return None


def _environment(steps: List[Step]) -> List[str]:
    env = next((s for s in steps if s.name == "environment"), None)
    lines = []
    if env is not None and env.log and os.path.isfile(env.log):
        with open(env.log, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f.readlines()[1:] if ln.strip()]
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if smi.returncode == 0:
            lines.append("nvidia-smi: " + smi.stdout.strip().replace("\n", "; "))
    except (OSError, subprocess.TimeoutExpired):
        lines.append("nvidia-smi: not available")
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    lines.append(f"host {platform.node()}, {os.cpu_count()} CPU cores, commit {commit or '?'}, "
                 f"nnUNet_compile={os.environ.get('nnUNet_compile', '0')}")
    return lines


def write_report(steps: List[Step], out: str, minutes: float, device: str = "cuda") -> None:
    md = ["# nnkd GPU check", "", f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {minutes:.1f} min.", ""]
    md += [f"- {ln}" for ln in _environment(steps)] + [""]
    md += ["| step | result | seconds | log | note |", "|---|---|---:|---|---|"]
    for s in steps:
        log = os.path.relpath(s.log, out) if s.log else "-"
        md.append(f"| {s.name} | {s.status} | {s.seconds:.0f} | {log} | {s.note} |")
    speed = _read(os.path.join(out, "speed", "speed.md"))
    md += ["", f"## Speed: `nnkd bench speed -device {device}`", "", speed or "(no speed.md)"]
    md += ["", "## Trainings (2 epochs each, metrics meaningless)", ""]
    for bench in BENCHMARKS:
        report = os.path.join(out, "quality", bench, "quality.md")
        md.append(f"- {bench}: {os.path.relpath(report, out) if os.path.isfile(report) else 'no report'}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gpu_check.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(out, "gpu_check.json"), "w", encoding="utf-8") as f:
        json.dump({"minutes": round(minutes, 2),
                   "steps": [{"name": s.name, "status": s.status, "seconds": s.seconds, "log": s.log, "note": s.note,
                              "argv": s.argv} for s in steps]}, f, indent=2)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    p.add_argument("-o", "--out", default="gpu_check", help="output folder (default ./gpu_check)")
    p.add_argument("-device", "--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--jobs", type=int, default=2, help="trainings at once within each benchmark (default 2)")
    p.add_argument("--only", nargs="+", metavar="STEP",
                   help="run only the steps whose name starts with one of these (e.g. 'autocast' 'bench')")
    p.add_argument("--dry-run", action="store_true", help="list the commands and write the report skeleton")
    args = p.parse_args(argv)
    out = os.path.abspath(args.out)
    steps = build_steps(out, args.device, args.jobs)
    if args.only:
        steps = [s for s in steps if s.name == "environment" or any(s.name.startswith(o) for o in args.only)]
    print(f"[gpu_check] {len(steps)} steps on {args.device}; output {out}", flush=True)
    return run_steps(steps, out, args.dry_run, device=args.device)


if __name__ == "__main__":
    sys.exit(main())
