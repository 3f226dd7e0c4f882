"""Every registered nnkd trainer's training step under mixed precision, against float32.

On CUDA nnU-Net runs ``train_step`` under ``torch.autocast("cuda")`` (float16) with a GradScaler;
on CPU it disables autocast. These tests run the trainers' own ``train_step`` (nnU-Net's, or
``nnKDTrainerCls``'s, which teachers and losses run inside) with that very code path switched on
for the CPU: the ``dummy_context()`` that nnU-Net's CPU branch enters is replaced by
``torch.autocast("cpu", dtype)`` and the trainer gets a ``torch.amp.GradScaler``. Each trainer
is built the way ``nnUNetv2_train`` builds it (constructor, ``initialize()``, plan from
``NNKD_PLAN``, teachers loaded from model folders) on a tiny 3D toy dataset, with seed 0, so
the float32 reference and the autocast runs start from the same weights and see the same batch.

Checked per trainer and dtype (float16, bfloat16): every loss term finite and within
``TOLERANCE`` of its float32 value; every gradient finite once the GradScaler has settled on its
scale (a first step whose scaled float16 gradients overflow is skipped and retried at half the
scale, as GradScaler does in training); the gradient direction close to float32's.

``NNKD_TEST_DEVICE=cuda`` runs the same tests on a GPU (scripts/gpu_check.sh): there the
trainers use nnU-Net's real CUDA branch (``autocast("cuda")`` and its GradScaler) and only the
autocast dtype is chosen here; the float32 reference replaces that ``autocast`` by a null context.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import os
from types import SimpleNamespace

import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
import numpy as np
import pytest
import torch

import nnkd.trainers.cls as cls_module
from nnkd.hooks import lookup, registry
from nnkd.io import torch_save, write_json
from nnkd.nets.network import build_network

if not hasattr(torch, "set_autocast_dtype"):  # torch < 2.4: no per-device autocast dtype, no GradScaler("cpu")
    pytest.skip("needs torch >= 2.4", allow_module_level=True)
DEVICE = torch.device(os.environ.get("NNKD_TEST_DEVICE", "cpu"))
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
#: allowed |term - float32 term| <= rtol * |float32 term| + atol, per autocast dtype. float16 keeps
#: 11 significant bits, bfloat16 8 (rounding 5e-4 and 4e-3 per operation). Measured worst cases on
#: this toy set: float16 0.3 % (logit KD), bfloat16 4.8 % (logit KD: a small difference of two
#: distributions, from logits of bfloat16 feature maps). Before the float32 islands of
#: nnkd.ops.precision, float16 TCKD (DKD) was 11 % off.
TOLERANCE = {"float16": (0.01, 1e-4), "bfloat16": (0.15, 1e-4)}
#: smallest cosine between the autocast and the float32 gradient (all trainable parameters as one
#: vector); measured worst: float16 0.9999, bfloat16 0.964 (bfloat16 feature maps: the head's
#: standardised pooled inputs, and so its weight gradients, keep ~1 % error)
MIN_GRAD_COSINE = {"float16": 0.999, "bfloat16": 0.9}

PATCH = (8, 16, 16)
WIDTHS = [4, 8, 16]
BATCH = 4
CLASSES = ["G1", "G2", "G3"]  # three: DKD's non-target term (NCKD) is zero with two
STUDENT_DATASET, TEACHER_DATASET = "Dataset991_AutocastToy", "Dataset992_AutocastTeacher"
CONFIGURATION = "3d_fullres"
EPOCH = 10  # past every built-in loss's warm-up (PaGKD: 5 epochs of zeros)

# Which teachers each registered trainer distils from. A trainer missing here fails the test:
# add it with the teacher setting its plan needs.
TEACHER_SETTINGS = {
    "nnKDTrainer": "none", "nnKDTrainerCls": "none", "nnKDTrainerClsBaseline": "none",
    "nnKDTrainerDoseTeacher": "none", "nnKDTrainerImPA": "none",
    "nnKDTrainerDistill": "paired", "nnKDTrainerREACT": "paired", "nnKDTrainerLogitKD": "paired",
    "nnKDTrainerRegionGraph": "paired",
    "nnKDTrainerFitNet": "paired", "nnKDTrainerAT": "paired", "nnKDTrainerDKD": "paired",
    "nnKDTrainerSegKD": "paired", "nnKDTrainerSegKDBaseline": "none",
    "nnKDTrainerUnpaired": "unpaired", "nnKDTrainerPaGKD": "unpaired", "nnKDTrainerPaGKDProOnly": "unpaired",
    "nnKDTrainerPaGKDDenOnly": "unpaired", "nnKDTrainerPaGKDImageLevel": "unpaired",
    "nnKDTrainerCoMoTo": "unpaired", "nnKDTrainerCoMoToImageKD": "unpaired", "nnKDTrainerCoMoToNoKD": "unpaired",
}
BUILTIN = sorted(name for name, (_, plugin) in registry("trainers").items() if plugin == "nnkd.builtin")


def toy_plans(dataset: str) -> dict:
    """nnU-Net plans of one small 3D configuration (the structure nnUNetv2_plan_and_preprocess writes)."""
    arch = {
        "n_stages": len(WIDTHS), "features_per_stage": WIDTHS, "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * len(WIDTHS), "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": BATCH, "patch_size": list(PATCH), "median_image_size_in_voxels": list(PATCH),
        "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"] * 2,
        "use_mask_for_norm": [False, False], "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling,
        "resampling_fn_seg_kwargs": dict(resampling, is_seg=True, order=1),
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": dict(resampling, order=1),
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": arch, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": True,
    }
    return {"dataset_name": dataset, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1.0] * 3,
            "original_median_shape_after_transp": list(PATCH), "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {CONFIGURATION: config}, "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {str(c): {"mean": 0.0, "std": 1.0} for c in range(2)}}


def dataset_json(channels: list, keys: list) -> dict:
    labels = {k: CLASSES[i % len(CLASSES)] for i, k in enumerate(keys)}
    return {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": {"background": 0, "lesion": 1},
            "numTraining": len(keys), "file_ending": ".nii.gz",
            "nnkd": {"class_names": CLASSES, "case_labels": labels}}


STUDENT_KEYS = [f"case_{i:03d}" for i in range(BATCH)]
TEACHER_KEYS = [f"tcase_{i:03d}" for i in range(BATCH)]
NETWORK = {"head_hidden": 16, "head_dropout": 0.0}  # no dropout: float32 and autocast runs see the same head


def _write_teacher(results: str, name: str, channels: list, seed: int, **network) -> str:
    """A trained-looking nnkd model folder (plans, dataset.json, fold_0/checkpoint_final.pth); ``network``:
    settings beside ``NETWORK``."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = os.path.join(results, TEACHER_DATASET, f"nnKDTrainerCls_{name}__nnUNetPlans__{CONFIGURATION}")
    plans = toy_plans(TEACHER_DATASET)
    plans["nnkd"] = {"network": dict(NETWORK, num_classes=len(CLASSES), **network), "class_names": CLASSES,
                     "input_channels": list(range(len(channels)))}
    config = plans["configurations"][CONFIGURATION]
    for key in ("normalization_schemes", "use_mask_for_norm"):
        config[key] = config[key][:len(channels)]
    write_json(os.path.join(folder, "plans.json"), plans)
    write_json(os.path.join(folder, "dataset.json"), dataset_json(channels, TEACHER_KEYS))
    pm = PlansManager(plans)
    torch.manual_seed(seed)
    net = build_network(pm, pm.get_configuration(CONFIGURATION), len(channels), 2, False)
    torch_save({"network_weights": net.state_dict(), "trainer_name": "nnKDTrainerCls"},
               os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread on CPU: on these tiny tensors two threads only wait for each other
    (a step takes ~10x longer on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    if DEVICE.type == "cpu":
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """nnU-Net folders with the toy student dataset, two paired teachers (PET/CT, PET) and one unpaired (MR; its
    head pools every stage, as nnkd's default plan trains it: PaGKD's Grad-CAM reads a shallower stage)."""
    root = tmp_path_factory.mktemp("autocast")
    env = {k: str(root / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    pre = os.path.join(env["nnUNet_preprocessed"], STUDENT_DATASET)
    os.makedirs(os.path.join(pre, "nnUNetPlans_3d_fullres"))
    # nnU-Net's initialize() picks its dataset class from the preprocessed files' ending
    open(os.path.join(pre, "nnUNetPlans_3d_fullres", f"{STUDENT_KEYS[0]}.b2nd"), "w").close()
    teachers = {
        "paired": [{"name": "petct", "model_folder": _write_teacher(env["nnUNet_results"], "petct", ["CT", "PET"], 1),
                    "channels": ["CT", "PET"]},
                   {"name": "pet", "model_folder": _write_teacher(env["nnUNet_results"], "pet", ["PET"], 2),
                    "channels": ["PET"]}],
        "unpaired": [{"name": "mr", "model_folder": _write_teacher(env["nnUNet_results"], "mr", ["MR"], 3, head_stages="all"),
                      "paired": False, "dataset": TEACHER_DATASET}],
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield SimpleNamespace(root=root, teachers=teachers)


def make_trainer(cls, ws) -> object:
    """``cls`` as nnUNetv2_train builds it (constructor + initialize), its plan from NNKD_PLAN, on DEVICE."""
    setting = TEACHER_SETTINGS[cls.__name__]
    plan = {"seed": 0, "network": NETWORK}
    # the toy dataset has no masks to measure the lesions on: give lesion-sized losses their extent
    sized = [s for s in cls.plan_defaults.get("losses") or []
             if "lesion_extent" in inspect.signature(lookup("losses", s["name"])).parameters]
    if sized:
        plan["losses"] = [dict(s, params=dict(s.get("params") or {}, lesion_extent=[4, 4, 4])) if s in sized else s
                          for s in cls.plan_defaults["losses"]]
    if setting != "none":
        plan.update(teachers=ws.teachers[setting], student={"channels": ["CT"]})
    path = os.path.join(ws.root, f"{cls.__name__}_plan.json")
    write_json(path, plan)
    plans = dict(toy_plans(STUDENT_DATASET), continue_training=False)  # what nnUNetv2_train adds
    with pytest.MonkeyPatch.context() as mp, open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        mp.setenv("NNKD_PLAN", path)
        trainer = cls(plans, CONFIGURATION, 0, dataset_json(["CT", "PET"], STUDENT_KEYS), DEVICE)
        trainer.initialize()
    trainer.current_epoch = EPOCH
    if setting == "unpaired":  # what the class-matched teacher stream attaches (nnkd.data.teacher_stream)
        classes = {k: i % len(CLASSES) for i, k in enumerate(TEACHER_KEYS)}  # matched to the student's, index by index
        trainer.teacher_data = [SimpleNamespace(sampler=SimpleNamespace(case_to_class=classes))]
    return trainer


def _lesions(generator: torch.Generator) -> torch.Tensor:
    """(B, 1, *PATCH) int16 masks with two or three box lesions per image (regions for graphs and keypoints)."""
    seg = torch.zeros(BATCH, 1, *PATCH, dtype=torch.int16)
    for b in range(BATCH):
        for _ in range(2 + b % 2):
            size = torch.randint(2, 5, (3,), generator=generator)
            lo = [int(torch.randint(0, s - int(w), (1,), generator=generator)) for s, w in zip(PATCH, size)]
            seg[b, 0, lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]] = 1
    return seg


def _deep_supervision(seg: torch.Tensor) -> list:
    """nnU-Net's deep-supervision targets: full resolution, then each decoder stage's grid (nearest)."""
    sizes = [PATCH, (PATCH[0], PATCH[1] // 2, PATCH[2] // 2)]
    return [torch.nn.functional.interpolate(seg.float(), size=s, mode="nearest").to(seg.dtype) for s in sizes]


def make_batch(setting: str) -> dict:
    """A batch as nnU-Net's data loader yields it (CPU tensors; train_step moves them)."""
    g = torch.Generator().manual_seed(0)
    seg = _lesions(g)
    data = torch.randn(BATCH, 2, *PATCH, generator=g) + 2 * seg.float()  # lesions brighter in both channels
    batch = {"data": data, "target": _deep_supervision(seg), "keys": list(STUDENT_KEYS)}
    if setting == "unpaired":
        t_seg = _lesions(g)
        batch.update(teacher_data=[torch.randn(BATCH, 1, *PATCH, generator=g) - 2 * t_seg.float()],
                     teacher_target=[_deep_supervision(t_seg)], teacher_keys=[list(TEACHER_KEYS)])
    return batch


@contextlib.contextmanager
def precision(dtype):
    """The trainers' own train_step with autocast at ``dtype`` (None: float32, autocast off)."""
    modules = (nnunet_trainer_module, cls_module)
    with pytest.MonkeyPatch.context() as mp:
        if dtype is None:
            for m in modules:
                mp.setattr(m, "autocast", lambda *a, **k: contextlib.nullcontext())
        else:
            previous = torch.get_autocast_dtype(DEVICE.type)
            torch.set_autocast_dtype(DEVICE.type, dtype)  # what autocast(device, enabled=True) then uses
            if DEVICE.type == "cpu":  # nnU-Net's CPU branch: dummy_context() -> autocast
                for m in modules:
                    mp.setattr(m, "dummy_context", lambda: torch.autocast("cpu"))
        try:
            yield
        finally:
            if dtype is not None:
                torch.set_autocast_dtype(DEVICE.type, previous)


def _params(trainer):
    return [p for g in trainer.optimizer.param_groups for p in g["params"]]


def run_step(cls, ws, dtype, max_halvings: int = 16):
    """One train_step from the initial weights; returns (terms, flat gradient, retries, scale)."""
    setting = TEACHER_SETTINGS[cls.__name__]
    scale = 2.0 ** 16  # GradScaler's default initial scale
    for retry in range(max_halvings + 1):
        trainer = make_trainer(cls, ws)
        trainer.grad_scaler = None if dtype is None else torch.amp.GradScaler(DEVICE.type, init_scale=scale)
        with precision(dtype):
            out = trainer.train_step(make_batch(setting))
        grads = [p.grad for p in _params(trainer) if p.grad is not None]
        flat = torch.cat([g.detach().float().flatten() for g in grads]).cpu()
        if dtype is None or trainer.grad_scaler.get_scale() >= scale:  # no overflow: the step was taken
            terms = {k: float(np.mean(v)) for k, v in out.items()}
            return terms, flat, retry, scale
        scale = trainer.grad_scaler.get_scale()  # skipped step: GradScaler halved its scale; retry there
    pytest.fail(f"{cls.__name__}: gradients still overflow after {max_halvings} halvings of the GradScaler's scale")


def test_every_registered_trainer_has_a_case():
    missing = sorted(set(BUILTIN) - set(TEACHER_SETTINGS))
    assert not missing, f"add these trainers to TEACHER_SETTINGS in {__file__}: {missing}"
    assert len(BUILTIN) >= 19


@pytest.mark.parametrize("name", BUILTIN)
def test_train_step_under_autocast(name, workspace):
    if name not in TEACHER_SETTINGS:
        pytest.fail(f"{name} is registered but has no case in TEACHER_SETTINGS: add one")
    cls = registry("trainers")[name][0]
    ref, ref_grad, _, _ = run_step(cls, workspace, None)
    assert all(math.isfinite(v) for v in ref.values()), ref
    assert torch.isfinite(ref_grad).all()
    report = []
    for dname, dtype in DTYPES.items():
        if DEVICE.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            continue
        terms, grad, retries, scale = run_step(cls, workspace, dtype)
        assert set(terms) == set(ref)
        bad = [k for k, v in terms.items() if not math.isfinite(v)]
        assert not bad, f"{name} {dname}: non-finite terms {bad}: {terms}"
        assert torch.isfinite(grad).all(), f"{name} {dname}: non-finite gradients at scale {scale}"
        rtol, atol = TOLERANCE[dname]
        for k, v in terms.items():
            err = abs(v - ref[k])
            report.append(f"{dname} {k}: {v:.6g} vs {ref[k]:.6g} ({err / (abs(ref[k]) + 1e-12):.2e} rel)")
            assert err <= rtol * abs(ref[k]) + atol, \
                f"{name} {dname}: term {k} = {v:.6g}, float32 {ref[k]:.6g} (tolerance rtol {rtol}, atol {atol})"
        cos = torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0).item()
        report.append(f"{dname} grad cosine {cos:.5f}, scale retries {retries}")
        assert cos >= MIN_GRAD_COSINE[dname], f"{name} {dname}: gradient cosine to float32 {cos:.4f}"
    print(f"\n{name}\n  " + "\n  ".join(report))


# ------------------------------------------------------------------ the float32 islands, one by one

def _autocast(dtype):
    return torch.autocast(DEVICE.type, dtype=dtype)


@pytest.mark.parametrize("dname", DTYPES)
def test_sinkhorn_runs_in_float32_under_autocast(dname):
    from nnkd.ops.sinkhorn import sinkhorn

    g = torch.Generator().manual_seed(0)
    cost = (torch.rand(3, 5, 4, generator=g) * 2).to(DEVICE)
    mx, my = torch.ones(3, 5, dtype=torch.bool, device=DEVICE), torch.ones(3, 4, dtype=torch.bool, device=DEVICE)
    for bound in (None, 2.0):  # log domain, float64 scaling domain
        ref = sinkhorn(cost, mx, my, eps=0.05, iters=100, cost_bound=bound)
        with _autocast(DTYPES[dname]):
            half = cost.to(DTYPES[dname])  # what a float16 matmul upstream hands over
            pi = sinkhorn(half, mx, my, eps=0.05, iters=100, cost_bound=bound)
        assert pi.dtype == torch.float32 and torch.isfinite(pi).all()
        # only the cost's own rounding differs: |d cost| <= 2**-8 * 2 (bfloat16), times 1/eps in the exponent
        exact = sinkhorn(half.float(), mx, my, eps=0.05, iters=100, cost_bound=bound)
        torch.testing.assert_close(pi, exact, rtol=1e-5, atol=1e-6)
        assert (pi.sum(1) - 0.25).abs().max() < 1e-3 and (ref.sum(1) - 0.25).abs().max() < 1e-3  # column marginals


@pytest.mark.parametrize("dname", DTYPES)
def test_logit_losses_and_head_in_float32_under_autocast(dname):
    from nnkd.losses.logit import dkd_terms, tempered_kl
    from nnkd.nets.head import ClassificationHead

    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(6, 3, generator=g).to(DEVICE), torch.randn(6, 3, generator=g).to(DEVICE)
    y = torch.tensor([0, 1, 2, 0, 1, 2], device=DEVICE)
    low = DTYPES[dname]
    with _autocast(low):
        kl = tempered_kl(zs.to(low), torch.softmax(zt.to(low).float() / 4, -1).to(low), 4.0)
        tckd, nckd = dkd_terms(zs.to(low), zt.to(low), y, 4.0)
    assert kl.dtype == tckd.dtype == nckd.dtype == torch.float32
    # the same numbers as float32 on the rounded inputs: no float16 arithmetic inside
    zs_r, zt_r = zs.to(low).float(), zt.to(low).float()
    torch.testing.assert_close(kl, tempered_kl(zs_r, torch.softmax(zt_r / 4, -1).to(low).float(), 4.0))
    for a, b in zip((tckd, nckd), dkd_terms(zs_r, zt_r, y, 4.0)):
        torch.testing.assert_close(a, b)

    torch.manual_seed(0)
    head = ClassificationHead([4, 8], 3, hidden=16, pool="avgmax", standardize=True).to(DEVICE).eval()
    feats = [torch.randn(2, 4, 6, 6, generator=g).to(DEVICE) + 5, torch.randn(2, 8, 3, 3, generator=g).to(DEVICE) + 5]
    with _autocast(low):
        logits = head([f.to(low) for f in feats])
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, head([f.to(low).float() for f in feats]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dname", DTYPES)
def test_grad_cam_and_prototype_similarity_in_float32_under_autocast(dname):
    from nnkd.losses.group_pro import prototype_similarity
    from nnkd.ops.cam import grad_cam

    g = torch.Generator().manual_seed(0)
    low = DTYPES[dname]
    lin = torch.nn.Linear(8, 3).to(DEVICE)
    feats = torch.randn(2, 8, 4, 4, 4, generator=g).to(DEVICE).to(low)
    target = torch.tensor([0, 2], device=DEVICE)
    with _autocast(low):
        cam = grad_cam(feats, lin, target)
    assert cam.dtype == torch.float32
    torch.testing.assert_close(cam, grad_cam(feats.float(), lin, target), rtol=1e-5, atol=1e-6)
    a, b = torch.randn(3, 12, 128, generator=g).to(DEVICE), torch.randn(5, 12, 128, generator=g).to(DEVICE)
    for kind in ("cos", "code"):
        with _autocast(low):
            sim = prototype_similarity(a.to(low), b.to(low), kind)
        assert sim.dtype == torch.float32
        torch.testing.assert_close(sim, prototype_similarity(a.to(low).float(), b.to(low).float(), kind))


# ------------------------------------------------------------------ the segmentation-only student

def _segkd_step(ws, losses, teachers=None, init=False):
    """nnKDTrainerSegKD built as nnUNetv2_train builds it, on a dataset.json WITHOUT case labels, one step.
    Returns (trainer, terms, decoder calls per teacher)."""
    cls = registry("trainers")["nnKDTrainerSegKD"][0]
    plan = {"seed": 0, "network": NETWORK, "teachers": teachers or ws.teachers["paired"],
            "student": {"channels": ["CT"], "init_from_teacher": init}, "losses": losses}
    path = os.path.join(ws.root, "segkd_plan.json")
    write_json(path, plan)
    djson = dataset_json(["CT", "PET"], STUDENT_KEYS)
    del djson["nnkd"]  # no case labels
    plans = dict(toy_plans(STUDENT_DATASET), continue_training=False)
    with pytest.MonkeyPatch.context() as mp, open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        mp.setenv("NNKD_PLAN", path)
        trainer = cls(plans, CONFIGURATION, 0, djson, DEVICE)
        trainer.initialize()
    calls = [0] * len(trainer.teachers)
    for i, t in enumerate(trainer.teachers):
        t.network.decoder.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    before = [p.detach().clone() for p in trainer._bare_network().parameters()]
    if init:  # started from teacher 0's weights, all but its head
        teacher = trainer.teachers[0].network.state_dict()
        own = trainer._bare_network().state_dict()
        assert set(teacher) - set(own) and all(k.startswith("head.") for k in set(teacher) - set(own))
        assert all(torch.equal(v, teacher[k]) for k, v in own.items())
    with precision(None):
        out = trainer.train_step(make_batch("paired"))
    moved = any(not torch.equal(a, p) for a, p in zip(before, trainer._bare_network().parameters()))
    assert moved, "the optimizer step changed no student weight"
    return trainer, {k: float(np.mean(v)) for k, v in out.items()}, calls


def test_segkd_trains_without_case_labels_and_decodes_teachers_only_for_seg_kd(workspace):
    feature = [{"name": "fitnet", "weight": 1.0, "params": {"stage": -1}}, {"name": "at", "weight": 1.0, "params": {}},
               {"name": "region_graph", "weight": 1.0, "params": {"stage": -2}}]
    trainer, terms, calls = _segkd_step(workspace, [{"name": "seg_kd", "weight": 1.0, "params": {}}] + feature)
    assert trainer._bare_network().head is None and trainer.plans_manager.plans["nnkd"]["network"]["num_classes"] == 0
    assert {"term/seg", "term/seg_kd", "term/fitnet", "term/at"} <= set(terms), terms
    assert any(k.startswith("term/region_graph") for k in terms), terms
    assert "term/cls" not in terms and all(math.isfinite(v) for v in terms.values()), terms
    assert terms["term/seg_kd"] > 0
    assert calls == [1, 1]  # seg_kd read each teacher's segmentation: one decoder run per teacher
    _, terms, calls = _segkd_step(workspace, feature)  # feature losses only: no teacher decodes
    assert calls == [0, 0] and "term/seg_kd" not in terms and all(math.isfinite(v) for v in terms.values())


def test_segkd_student_starts_from_a_teacher_with_head(workspace):
    pet = {"name": "pet", "model_folder": workspace.teachers["paired"][1]["model_folder"],
           "channel_map": {"PET": "CT"}}  # one input channel: the student's architecture
    _, terms, calls = _segkd_step(workspace, [{"name": "seg_kd"}], teachers=[pet], init=True)
    assert calls == [1] and math.isfinite(terms["term/seg_kd"])
