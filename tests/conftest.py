import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def nnunet_roots(tmp_path, monkeypatch):
    """``{variable: folder}`` of nnUNet_raw / nnUNet_preprocessed / nnUNet_results under tmp_path, created, with
    the environment variables pointing there."""
    out = {k: tmp_path / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for key, path in out.items():
        path.mkdir()
        monkeypatch.setenv(key, str(path))
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: thread hand-off costs more than it saves on a shared 2-core machine. Modules use it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(args, env=None, check=True, cwd=None):
    """Run a console command in a subprocess; returns CompletedProcess (text)."""
    # nnUNet_n_proc_DA stays unset here: nnU-Net's planner calls torch.set_num_threads() with it,
    # and 0 crashes planning; training calls pass it explicitly.
    full_env = dict(os.environ, nnUNet_def_n_proc="1", nnUNet_compile="0", MPLBACKEND="agg")
    full_env.pop("nnUNet_n_proc_DA", None)
    full_env.update(env or {})
    p = subprocess.run(args, env=full_env, capture_output=True, text=True, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\nSTDOUT\n{p.stdout[-4000:]}\nSTDERR\n{p.stderr[-4000:]}")
    return p


def workspace(root) -> dict:
    """nnU-Net folders under ``root`` (created) and the variables a child process needs, no plan set."""
    from nnkd.environment import ext_trainer_value, workspace_env

    env = workspace_env(str(root))
    for v in env.values():
        os.makedirs(v)
    env["nnUNet_extTrainer"] = ext_trainer_value("")
    env["NNKD_PLAN"] = ""
    return env


def nnkd_cli(*args, **kw):
    return run_cli([sys.executable, "-m", "nnkd.cli", *map(str, args)], **kw)


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """Fresh nnUNet_raw/_preprocessed/_results under tmp_path, exported for this process and children."""
    from nnkd.environment import ext_trainer_value, workspace_env

    env = workspace_env(str(tmp_path / "ws"))
    for k, v in env.items():
        os.makedirs(v, exist_ok=True)
        monkeypatch.setenv(k, v)
    env["nnUNet_extTrainer"] = ext_trainer_value("")
    monkeypatch.setenv("nnUNet_extTrainer", env["nnUNet_extTrainer"])
    monkeypatch.delenv("NNKD_PLAN", raising=False)
    return env
