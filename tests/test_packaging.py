"""The built wheel: it ships the plans and the nnU-Net shim, and a shipped plan resolves by name from it."""
import os
import shutil
import subprocess
import sys
import zipfile

from conftest import REPO, run_cli


def test_wheel_ships_plans_and_resolves_them_by_name(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, f), src / f)
    shutil.copytree(os.path.join(REPO, "nnkd"), src / "nnkd", ignore=shutil.ignore_patterns("__pycache__"))
    # no build isolation: the test must not need the network (build's wheel check is skipped: setuptools builds it)
    run_cli([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check",
             "--outdir", str(tmp_path / "dist"), str(src)])
    (wheel,) = (tmp_path / "dist").iterdir()
    names = set(zipfile.ZipFile(wheel).namelist())
    plans = sorted(f for f in os.listdir(os.path.join(REPO, "nnkd", "plans")) if f.endswith(".json"))
    assert plans and {f"nnkd/plans/{p}" for p in plans} <= names
    assert {"nnkd/plans/README.md", "nnkd/nnunet_ext/nnkd_trainer_shim.py"} <= names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site))
    code = ("import nnkd, nnkd.plan as p; print(nnkd.__file__); print(p.plan_path('react_kd')); "
            "print(p.load_plan('pagkd_pro_only')['trainers'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == str(site / "nnkd" / "__init__.py")  # the installed copy, not the repository
    assert out[1] == str(site / "nnkd" / "plans" / "react_kd.json")
    assert out[2] == "['nnKDTrainerPaGKDProOnly']"
