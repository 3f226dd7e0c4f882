"""``nnkd simulate-dose``: low-dose copies of an nnU-Net raw CT dataset, one dataset per dose.

For dose ``I0`` number ``i`` (in the order given) the new dataset is
``$nnUNet_raw/Dataset{N+i:03d}_{Src}Dose{tag}`` (``Src`` = the source name without its
``DatasetXXX_`` prefix, ``tag`` = I0 in short scientific form: 1e4, 5e2, 2p5e4 for 2.5e4;
``LineInt`` is appended for ``--variant line_integral``). In it the CT channel of imagesTr and
imagesTs is re-simulated (:func:`nnkd.dose.simulate_low_doses`, the noiseless sinogram of a
volume is shared by all doses), every other file (other channels, labels, dataset.json with
its ``nnkd`` key) is copied byte for byte, and ``dose.json`` records I0, variant, seed and
source. Each dataset is assembled in a hidden sibling folder and renamed into place when
complete, so a failure leaves no partial dataset. Noise is seeded per (seed, file, dose):
results do not depend on the number of workers or on the other doses requested.
Integer images are written back rounded, in their own pixel type.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import List, Optional, Sequence, Tuple

import numpy as np

from nnkd.errors import NNKDError
from nnkd.io import atomic_path, write_json

IMAGE_FOLDERS = ("imagesTr", "imagesTs")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate-dose", help="make simulated low-dose copies of a raw CT dataset",
        description="Write one new nnU-Net raw dataset per dose, named DatasetNNN_<Src>Dose<I0>, whose CT "
                    "channel is re-simulated at that dose (photon noise on re-projected line integrals, "
                    "filtered back-projection); other channels, labels and dataset.json are copied.")
    p.add_argument("src", metavar="DATASET", help="source raw dataset: id or DatasetXXX_Name under $nnUNet_raw")
    p.add_argument("--dose", type=float, nargs="+", required=True, metavar="I0",
                   help="incident photons per ray, e.g. 1e6 5e4 1e4 1e3 5e2 (one dataset each)")
    p.add_argument("--id", type=int, required=True, dest="first_id", metavar="N",
                   help="dataset id of the first new dataset; the next doses get id+1, id+2, ...")
    p.add_argument("--variant", choices=("physics", "line_integral"), default="physics",
                   help="physics: Poisson photon counts on exp(-line integral), Beer-Lambert (default); "
                        "line_integral: Poisson noise on the line integrals of a min-max normalised slice, without "
                        "Beer-Lambert, as the official REACT-KD script does")
    p.add_argument("--channel", type=int, default=0, help="index of the CT channel (default 0)")
    p.add_argument("--seed", type=int, default=0,
                   help="noise seed (default 0); the noise of a file and dose does not depend on the other "
                        "doses or on --workers")
    p.add_argument("--workers", type=int, default=2, help="processes over images (default 2)")
    p.add_argument("-device", "--device", default="cpu", help="torch device for the projections: cpu (default) or cuda")
    p.add_argument("--overwrite", action="store_true", help="replace existing target datasets")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    made = simulate_dose_dataset(args.src, args.dose, args.first_id, variant=args.variant,
                                 channel=args.channel, seed=args.seed, workers=args.workers,
                                 device=args.device, overwrite=args.overwrite)
    for path in made:
        print(path)
    return 0


def dose_tag(dose: float) -> str:
    """``1e4`` for 10000, ``2p5e4`` for 25000: a folder-safe short form of I0."""
    mantissa, exponent = f"{dose:e}".split("e")
    return f"{float(mantissa):g}".replace(".", "p") + f"e{int(exponent)}"


def target_name(src_name: str, dataset_id: int, dose: float, variant: str = "physics") -> str:
    base = re.sub(r"^Dataset\d+_", "", src_name)
    suffix = "" if variant == "physics" else "LineInt"
    return f"Dataset{dataset_id:03d}_{base}Dose{dose_tag(dose)}{suffix}"


def simulate_dose_dataset(src: str, doses: Sequence[float], first_id: int, variant: str = "physics",
                          channel: int = 0, seed: int = 0, workers: int = 2, device: str = "cpu",
                          overwrite: bool = False, raw_root: Optional[str] = None) -> List[str]:
    """Create one raw dataset per dose (see module docstring); returns their paths."""
    from nnkd.dose.simulate import MU_WATER_PER_MM  # imports torch: not at CLI start-up

    raw = raw_root or os.environ.get("nnUNet_raw")
    if not raw or not os.path.isdir(raw):
        raise NNKDError(f"nnUNet_raw is not set or not a folder ({raw!r}); set it to your raw datasets folder")
    src_name = _resolve(src)
    src_dir = os.path.join(raw, src_name)
    dataset_json = _load_dataset_json(src_dir)
    ending = dataset_json["file_ending"]
    names = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    if str(channel) not in names:
        raise NNKDError(f"{src_dir}/dataset.json: channel {channel} is not in channel_names {names}")
    if str(names[str(channel)]).upper() != "CT":
        warnings.warn(f"{src_dir}/dataset.json: channel {channel} is named {names[str(channel)]!r}, not 'CT'; "
                      "simulating it as HU anyway")
    doses = [float(d) for d in doses]
    if not doses or min(doses) <= 0 or len(set(doses)) != len(doses):
        raise NNKDError(f"--dose: need distinct positive photon counts, got {doses}")
    targets = _check_targets(raw, src_name, doses, first_id, variant, overwrite)

    degrade, copy = _plan_files(src_dir, ending, channel)
    if not any(rel.startswith("imagesTr") for rel in degrade):
        raise NNKDError(f"{src_dir}/imagesTr: no files of channel {channel} (*_{channel:04d}{ending})")

    tmp_dirs = [tempfile.mkdtemp(prefix=f".{os.path.basename(t)}.", suffix=".partial", dir=raw) for t in targets]
    try:
        for rel in copy:
            for tmp in tmp_dirs:
                with atomic_path(os.path.join(tmp, rel)) as part:
                    shutil.copyfile(os.path.join(src_dir, rel), part)
        jobs = [(os.path.join(src_dir, rel), [os.path.join(t, rel) for t in tmp_dirs], doses, variant,
                 [seed, zlib.crc32(rel.encode())], device) for rel in degrade]
        for message in _run(jobs, workers):
            if message:
                warnings.warn(message)
        for tmp, dose in zip(tmp_dirs, doses):
            write_json(os.path.join(tmp, "dose.json"), {
                "I0": dose, "variant": variant, "seed": seed, "source": src_name, "channel": channel,
                "files": degrade, "mu_water_per_mm": MU_WATER_PER_MM if variant == "physics" else None})
        for tmp, target in zip(tmp_dirs, targets):
            _move_into_place(tmp, target)
    except BaseException:
        for tmp in tmp_dirs:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return targets


# -- helpers ---------------------------------------------------------------------------------
def _resolve(src: str) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(src)
    except (RuntimeError, ValueError) as e:
        raise NNKDError(f"source dataset {src!r}: {str(e).splitlines()[0]}") from None


def _load_dataset_json(src_dir: str) -> dict:
    path = os.path.join(src_dir, "dataset.json")
    try:
        with open(path, encoding="utf-8") as f:
            dj = json.load(f)
    except FileNotFoundError:
        raise NNKDError(f"{path}: not found (is {os.path.basename(src_dir)} a raw dataset?)") from None
    except json.JSONDecodeError as e:
        raise NNKDError(f"{path}: invalid JSON ({e})") from None
    if "file_ending" not in dj:
        raise NNKDError(f"{path}: missing field 'file_ending'")
    if "dataset" in dj:
        raise NNKDError(f"{path}: explicit file lists (field 'dataset') are not supported by simulate-dose")
    return dj


def _check_targets(raw: str, src_name: str, doses, first_id: int, variant: str, overwrite: bool) -> List[str]:
    ids = [first_id + i for i in range(len(doses))]
    if min(ids) < 1 or max(ids) > 999:
        raise NNKDError(f"--id: dataset ids {ids[0]}..{ids[-1]} must lie in 1..999")
    src_id = re.match(r"Dataset(\d+)_", src_name)
    targets = []
    for dataset_id, dose in zip(ids, doses):
        name = target_name(src_name, dataset_id, dose, variant)
        if src_id and int(src_id.group(1)) == dataset_id:
            raise NNKDError(f"--id: dataset id {dataset_id} is the source's ({src_name})")
        clash = [d for d in os.listdir(raw) if d.startswith(f"Dataset{dataset_id:03d}_") and d != name]
        if clash:
            raise NNKDError(f"--id: dataset id {dataset_id} is taken by {os.path.join(raw, clash[0])}")
        path = os.path.join(raw, name)
        if os.path.exists(path) and not overwrite:
            raise NNKDError(f"{path} exists; pass --overwrite to replace it")
        targets.append(path)
    return targets


def _plan_files(src_dir: str, ending: str, channel: int) -> Tuple[List[str], List[str]]:
    """Relative paths to degrade (the CT channel in imagesTr/imagesTs) and to copy (the rest)."""
    ct = re.compile(r".+_(\d{4})" + re.escape(ending) + r"$")
    degrade, copy = [], []
    for folder, _, files in os.walk(src_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), src_dir)
            top = rel.split(os.sep)[0]
            m = ct.match(name)
            if top in IMAGE_FOLDERS and os.path.dirname(rel) == top and m and int(m.group(1)) == channel:
                degrade.append(rel)
            elif rel != "dose.json":  # a simulated source's own record is replaced
                copy.append(rel)
    return sorted(degrade), sorted(copy)


def _run(jobs, workers: int):
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="simulate-dose", unit="image", file=sys.stderr)
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield _degrade_file(*job)
                bar.update()
            return
        threads = max(1, (os.cpu_count() or 1) // workers)
        # spawn: forking a process whose torch thread pool is running can deadlock.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            futures = [pool.submit(_degrade_file, *job) for job in jobs]
            try:
                for fut in futures:
                    yield fut.result()
                    bar.update()
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    finally:
        bar.close()


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _degrade_file(src: str, dsts: List[str], doses: List[float], variant: str, entropy: List[int],
                  device: str) -> Optional[str]:
    """Simulate every dose for one image file; returns a warning message or None."""
    import SimpleITK as sitk

    from nnkd.dose import simulate_low_doses

    try:
        image = sitk.ReadImage(src)
    except RuntimeError as e:
        raise NNKDError(f"{src}: cannot read image ({str(e).strip().splitlines()[-1]})") from None
    arr = sitk.GetArrayFromImage(image)
    if arr.ndim not in (2, 3) or image.GetNumberOfComponentsPerPixel() != 1:
        raise NNKDError(f"{src}: expected a 2D or 3D scalar image, got array shape {arr.shape}")
    sx, sy = image.GetSpacing()[:2]
    rngs = [np.random.default_rng(entropy + [zlib.crc32(repr(d).encode())]) for d in doses]
    outs = simulate_low_doses(arr, (sy, sx), doses, rngs, variant, device=device)
    for out, dst in zip(outs, dsts):
        if np.issubdtype(arr.dtype, np.integer):
            info = np.iinfo(arr.dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        result = sitk.GetImageFromArray(out.astype(arr.dtype, copy=False))
        result.CopyInformation(image)
        with atomic_path(dst) as part:
            sitk.WriteImage(result, part, True)
    lo, hi = float(arr.min()), float(arr.max())
    if lo > -500 or hi > 5000:
        return f"{src}: intensities {lo:g}..{hi:g} do not look like HU (expect air near -1000)"
    return None


def _move_into_place(tmp: str, target: str) -> None:
    """Rename the finished dataset onto ``target``, replacing an existing one (``--overwrite``)."""
    if not os.path.exists(target):
        os.rename(tmp, target)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", suffix=".old", dir=os.path.dirname(target))
    os.rename(target, os.path.join(old, "dataset"))
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
