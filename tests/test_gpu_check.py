"""scripts/gpu_check.py: the step runner (fail-soft, timeouts, report) on CPU with stand-in commands."""
import importlib.util
import json
import os
import subprocess
import sys
import time

from conftest import REPO

SCRIPT = os.path.join(REPO, "scripts", "gpu_check.py")


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _py(code):
    return [sys.executable, "-c", code]


def _assert_ended(pid):
    for _ in range(50):
        try:
            with open(f"/proc/{pid}/status") as f:
                if "State:\tZ" in f.read():
                    return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} still runs")


def test_failed_step_is_recorded_and_the_others_still_run(tmp_path):
    gc = _module()
    steps = [gc.Step("environment", _py("print('probe ok')"), 60),
             gc.Step("fails", _py("import sys; print('broken'); sys.exit(3)"), 60),
             gc.Step("slow", _py("import subprocess, sys, time; p = subprocess.Popen(['sleep', '60'], stdout=-3, stderr=-3); "
                                 f"open({str(tmp_path / 'pid')!r}, 'w').write(str(p.pid)); time.sleep(60)"), 3, group="g"),
             gc.Step("fast", _py("import os; print('cwd', os.getcwd())"), 60, group="g"),
             gc.Step("late", _py("pass"), 60, prepare=lambda: None)]
    assert gc.run_steps(steps, str(tmp_path)) == 1
    status = {s.name: (s.status, s.note) for s in steps}
    assert status == {"environment": ("PASS", ""), "fails": ("FAIL", "exit 3"), "slow": ("FAIL", "timed out after 3 s"),
                      "fast": ("PASS", ""), "late": ("SKIP", status["late"][1])}
    assert f"cwd {REPO}" in open(steps[3].log).read()  # steps run in the repository root
    _assert_ended(int((tmp_path / "pid").read_text()))  # the timed-out step's child went with it
    assert "broken" in open(steps[1].log).read()
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| fails | FAIL |" in md and "| fast | PASS |" in md and "| late | SKIP |" in md and "probe ok" in md
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["status"] for s in report["steps"]] == ["PASS", "FAIL", "FAIL", "PASS", "SKIP"]


def test_failed_environment_skips_the_rest(tmp_path):
    gc = _module()
    steps = [gc.Step("environment", _py("raise SystemExit(1)"), 60), gc.Step("tests", _py("pass"), 60)]
    assert gc.run_steps(steps, str(tmp_path)) == 1
    assert [s.status for s in steps] == ["FAIL", "SKIP"] and "environment step failed" in steps[1].note


def test_dry_run_lists_every_step_and_runs_nothing(tmp_path):
    out = tmp_path / "out"
    p = subprocess.run(["bash", os.path.join(REPO, "scripts", "gpu_check.sh"), "-o", str(out), "--dry-run"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable))
    assert p.returncode == 0, p.stderr
    for name in ("environment", "autocast tests", "bench speed", "train+predict paired3d",
                 "train+predict unpaired2d", "train+predict lesion2d", "nnkd predict"):
        assert f"[gpu_check] {name}: DRY-RUN" in p.stdout, name
    assert "bench speed -device cuda" in p.stdout and "NNKD" not in p.stdout
    assert "--epochs 2" in p.stdout and "-device cuda -o" in p.stdout
    assert not (out / "logs").exists() or not os.listdir(out / "logs")
    assert "| autocast tests | DRY-RUN |" in (out / "gpu_check.md").read_text()


def test_predict_step_reads_the_react_model_of_the_paired_run(tmp_path):
    gc = _module()
    out = tmp_path / "out"
    predict = next(s for s in gc.build_steps(str(out), "cuda", 2) if s.name == "nnkd predict")
    assert predict.prepare() is None  # nothing trained yet: the step is skipped, not failed
    ws = out / "quality" / "paired3d" / "workspace"
    (ws / "runs" / "paired3d" / "seed0" / "react").mkdir(parents=True)
    (ws / "runs" / "paired3d" / "seed0" / "react" / "run.json").write_text(json.dumps({"model_folder": "/m/REACT"}))
    (ws / "test_images" / "paired3d_932_ch0").mkdir(parents=True)
    argv = predict.prepare()
    assert argv[-10:] == ["-i", str(ws / "test_images" / "paired3d_932_ch0"), "-o", str(out / "predict_react"),
                          "-m", "/m/REACT", "-f", "0", "-device", "cuda"]
    assert argv[1:4] == ["-m", "nnkd.cli", "predict"]


def test_device_reaches_every_training_and_prediction(tmp_path, monkeypatch):
    from nnkd import pipeline
    from nnkd.bench.quality import QualityRun

    ws = QualityRun(str(tmp_path / "q"), [0], quick=True, verbose=False, device="cuda").ws
    assert ws.device == "cuda" and pipeline.Workspace(str(tmp_path / "w"), verbose=False).device == "cpu"
    calls = []
    monkeypatch.setattr(pipeline.Workspace, "run", lambda self, args, extra_env=None, log=None, label=None: calls.append(args))
    os.makedirs(os.path.join(ws.env["nnUNet_preprocessed"], "Dataset930_Toy"))
    pipeline.train(ws, 930, "3d_fullres", "nnKDTrainerREACT", {"name": "p"}, "label")
    pipeline.predict_classes(ws, "imgs", str(tmp_path / "pc"), "model")
    pipeline.predict_detections(ws, "imgs", str(tmp_path / "pd"), "model")
    train, predict, nnunet_predict, _detect = calls
    for argv in (train, predict, nnunet_predict):
        assert argv[argv.index("-device") + 1] == "cuda", argv
