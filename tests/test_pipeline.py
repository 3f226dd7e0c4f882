"""nnkd.pipeline: the workspace layer of `nnkd demo` and the benchmarks (logged child processes, folders)."""
import os
import sys
import threading
import time

import pytest

from nnkd.errors import NNKDError
from nnkd.pipeline import CONSOLE_WIDTH, Workspace, console_line

# The child prints without flushing (only PYTHONUNBUFFERED, which Workspace sets, makes the line leave at once),
# then waits until the test has seen that line in the log: it cannot end before, however slow the machine.
CHILD = r"""
import os, sys, time
print("2026-01-01 10:00:00.123456: first line")
print("next: nnUNetv2_plan_and_preprocess -d 1")
go = sys.argv[1]
for _ in range(1200):
    if os.path.exists(go):
        break
    time.sleep(0.05)
else:
    sys.exit(3)
print("second line")
"""


def _wait_for(path, text, thread, timeout=60.0):
    t0 = time.time()
    while time.time() - t0 < timeout and thread.is_alive():
        if os.path.isfile(path) and text in open(path).read():
            return True
        time.sleep(0.05)
    return os.path.isfile(path) and text in open(path).read()


def test_logged_child_streams_to_log_and_console_while_running(tmp_path, capsys):
    ws = Workspace(str(tmp_path / "ws"))
    log, go = str(tmp_path / "logs" / "child.log"), str(tmp_path / "go")
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        seconds=ws.run([sys.executable, "-c", CHILD, go], log=log, label="child")))
    thread.start()
    try:
        seen = _wait_for(log, "first line", thread)
        assert seen and thread.is_alive(), "the first line must reach the log while the child still runs"
        assert "second line" not in open(log).read()
    finally:
        open(go, "w").close()
        thread.join(120)
    assert not thread.is_alive() and result["seconds"] >= 0
    text = open(log).read()
    assert text.index("first line") < text.index("next: nnUNetv2") < text.index("second line")  # the log keeps all
    out = capsys.readouterr().out
    assert f"(log: {log})" in out
    assert "  first line\n" in out and "  second line\n" in out  # echoed, nnU-Net's timestamp cut
    # a sub-command's hint is not shown as if the user should run it
    assert not any(line.strip().startswith("next:") for line in out.splitlines())


def test_failed_child_names_its_log_and_last_lines(tmp_path):
    ws = Workspace(str(tmp_path / "ws"), verbose=False)
    log = str(tmp_path / "fail.log")
    with pytest.raises(NNKDError, match=r"failed \(exit 2\); log .*fail\.log:\nsomething broke"):
        ws.run([sys.executable, "-c", "import sys; print('something broke'); sys.exit(2)"], log=log)


def test_console_line():
    assert console_line("2026-12-07 00:52:13.123456: Epoch 3\n") == "Epoch 3"
    assert console_line("   \n") is None and console_line("next: nnkd predict ...\n") is None
    assert console_line("Preprocessing cases:  50%|#####     | 3/6\n") == "Preprocessing cases:  50%|#####     | 3/6"
    assert console_line("2026-12-07 01:05:54.529872:\n") is None  # nnU-Net's empty log line
    long = console_line("{" + "x" * 1000 + "}\n")
    assert len(long) == CONSOLE_WIDTH and long.endswith("... (whole line in log)")


def test_workspace_folders_are_where_nnkd_env_points(tmp_path, capsys):
    """`eval "$(nnkd env --workspace W)"` must find the demo's data and models: the same three folders."""
    from nnkd.cli import main

    ws = Workspace(str(tmp_path / "w"))
    assert main(["env", "--workspace", str(tmp_path / "w")]) == 0
    exported = dict(line[len("export "):].split("=", 1) for line in capsys.readouterr().out.splitlines()
                    if line.startswith("export "))
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        assert exported[k] == ws.env[k] == os.path.join(ws.root, k)


def test_demo_prints_model_folders_logs_and_working_commands(tmp_path):
    """The demo's closing lines: every model folder under the workspace's nnUNet_results and the commands
    that find them after `eval "$(nnkd env --workspace W)"`."""
    from nnkd.demo import QUICK, QUICK_NOTE, where_lines

    root = str(tmp_path / "nnkd_workspace")
    results = os.path.join(root, "nnUNet_results", "Dataset930_SynthLiverPETCT")
    runs = {}
    for key, trainer in (("teacher", "nnKDTrainerCls"), ("react", "nnKDTrainerREACT")):
        run = os.path.join(root, "runs", "paired3d", "seed0", key)
        runs[key] = {"0": {"model_folder": os.path.join(results, f"{trainer}__nnUNetPlans__3d_fullres"),
                           "test_images": os.path.join(root, "test_images", "paired3d_932_ch0"),
                           "logs": {"train": os.path.join(run, "train.log")}}}
    text = "\n".join(where_lines(root, {"runs": runs}, "0"))
    assert os.path.join(results, "nnKDTrainerCls__nnUNetPlans__3d_fullres") in text
    assert os.path.join(root, "runs", "paired3d", "seed0", "react", "train.log") in text
    assert os.path.join(results, "nnKDTrainerREACT__nnUNetPlans__3d_fullres", "fold_0", "training_log_*.txt") in text
    assert f'eval "$(nnkd env --workspace {root})"' in text
    assert ('-m "$nnUNet_results/Dataset930_SynthLiverPETCT/nnKDTrainerREACT__nnUNetPlans__3d_fullres" -f 0'
            in text)  # the distilled student, through the variable nnkd env sets
    assert QUICK.quick and "carry no meaning" in QUICK_NOTE


def test_missing_command_is_a_clear_refusal(tmp_path):
    """A console script that is not installed (nnUNetv2_train outside nnU-Net's environment) is named, no traceback."""
    from nnkd.pipeline import run_logged

    with pytest.raises(NNKDError, match="command not found: nnkd_no_such_tool_xyz .*pip install nnunetv2"):
        run_logged(["nnkd_no_such_tool_xyz", "--help"], dict(os.environ), log=str(tmp_path / "x.log"))
