"""Timing and peak memory of a trainer's ``train_step`` and its parts, inside a ``nnkd bench speed`` worker."""
from __future__ import annotations

import os
import pickle
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

PROGRESS = "@@ "  # worker lines starting with this are forwarded to the console


def median(values: Sequence[float]) -> float:
    """Median, NaN for no values."""
    return float(statistics.median(values)) if values else float("nan")


class _Clock:
    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.sync = torch.cuda.synchronize if self.cuda else (lambda: None)

    def __call__(self, fn) -> float:
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t


def _rss_mib(field_name: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0
    raise OSError(field_name)


class _Memory:
    """Peak memory of the timed steps: CUDA allocator peak, or the process's peak RSS on CPU."""

    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch
        self.measure = "torch.cuda.max_memory_allocated" if self.cuda else "peak RSS of the case's process (VmHWM)"

    def start(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = self.torch.cuda.memory_allocated() / 2**20
            return
        import gc

        gc.collect()
        try:  # reset the kernel's high-water mark of this process to its current RSS
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            self.reset = False
            self.measure = "peak RSS of the case's process since its start (ru_maxrss)"
        self.base = _rss_mib("VmRSS")

    def stop(self) -> Tuple[float, float]:
        if self.cuda:
            self.torch.cuda.synchronize()
            peak = self.torch.cuda.max_memory_allocated() / 2**20
        elif self.reset:
            peak = _rss_mib("VmHWM")
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        return peak, peak - self.base


def _load_or_make_batches(trainer, path: str, n: int) -> list:
    """``n`` training batches: the dataset's saved ones when present (every case reads the same data),
    else drawn from the trainer's own loader and saved. The loaders are always built: unpaired
    trainers set up their teacher streams there, which their ``make_batch`` needs."""
    import torch

    from nnkd.io import torch_save

    loader, val = trainer.get_dataloaders()
    batches = []
    if os.path.isfile(path):
        try:  # tensors, lists and strings only: read without unpickling code
            batches = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError):
            print(f"{PROGRESS}{path}: unreadable batch cache, fetching the batches again", flush=True)
    if len(batches) < n:
        print(f"{PROGRESS}pre-fetching {n} batches from {type(trainer).__name__}'s training data loader", flush=True)
        batches = [_plain(next(loader)) for _ in range(n)]
        torch_save(batches, path)
    for dl in (loader, val):
        if hasattr(dl, "_finish"):
            dl._finish()
    return batches[:n]



def _plain(x):
    """A batch as tensors, lists and strings (numpy key arrays become lists) for a weights_only cache."""
    import numpy as np
    import torch

    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist() if x.dtype.kind in "USO" else torch.from_numpy(x)
    return x

def _leaf_outputs(out):
    """The student's outputs cut from its graph: tensors detached, features and logits new leaves."""
    from dataclasses import fields, replace

    def leaf(x):
        return x.detach().requires_grad_(x.requires_grad) if hasattr(x, "detach") else x

    values = {f.name: getattr(out, f.name) for f in fields(out)}
    values["features"] = [leaf(f) for f in out.features]
    values["logits"] = leaf(out.logits)
    values["attention"] = leaf(out.attention)
    values["seg"] = [s.detach() for s in out.seg] if isinstance(out.seg, (list, tuple)) else leaf(out.seg)
    return replace(out, **values)


def measure(trainer, spec: Dict[str, Any]) -> Dict[str, Any]:
    """Time the trainer's ``train_step`` (and, for KD trainers, its variants) on the shared batches.

    KD trainers: every timed batch runs, in an order rotated per batch so that load drift hits
    all alike, ``step`` (everything on), ``step_no_losses`` (LossBank off, teachers on),
    ``student`` (teachers and LossBank off: the plain student step of the same trainer) and
    ``teachers`` (``teacher_outputs`` alone). The LossBank call that ``step_no_losses`` skipped
    then runs on that step's own student and teacher outputs, cut from the student's graph
    (new leaves), forward and backward timed separately (``losses_fwd``, ``losses_bwd``): the
    distillation losses alone, without the noise of a difference of two whole steps (which is
    kept as ``losses_ab`` for comparison).
    """
    import torch

    iters, warmup, kd = int(spec["iters"]), int(spec["warmup"]), bool(spec["kd"])
    batches = _load_or_make_batches(trainer, spec["batches"], iters + warmup)
    trainer.network.train()
    # past every loss warm-up (distillation terms are constant zeros before it): time the real terms
    trainer.current_epoch = max(int(trainer.num_epochs) - 1, 0)
    clock, memory = _Clock(trainer.device), _Memory(trainer.device)
    name = spec["label"]
    out: Dict[str, Any] = {"label": name, "trainer": spec["trainer"], "kd": kd,
                           "patch_size": list(trainer.configuration_manager.patch_size),
                           "batch_size": int(trainer.batch_size), "threads": torch.get_num_threads(),
                           "memory_measure": memory.measure, "load_before": _loadavg()}
    print(f"{PROGRESS}{name}: patch {'x'.join(map(str, out['patch_size']))}, batch {out['batch_size']}, "
          f"{warmup} warm-up + {iters} timed batches", flush=True)
    timed = batches[warmup:]
    times: Dict[str, List[float]] = {"step": []}
    if not kd:
        for i in range(warmup):
            trainer.train_step(batches[i])
        memory.start()
        for batch in timed:
            times["step"].append(clock(lambda: trainer.train_step(batch)))
        peak, delta = memory.stop()
    else:
        bank, teacher_outputs = trainer.loss_bank_call, trainer.teacher_outputs
        out["losses"] = list(trainer.loss_bank.losses.keys())
        out["n_teachers"] = len(getattr(trainer, "teachers", []) or [])
        times.update(step_no_losses=[], student=[], teachers=[], losses_fwd=[], losses_bwd=[])
        captured = []

        def no_losses(*args):
            captured.append(args)
            return {}

        def losses_alone():
            student, teachers, b = captured.pop()
            student = _leaf_outputs(student)
            terms = {}
            with trainer._autocast():
                fwd = clock(lambda: terms.update(bank(student, teachers, b)))
            total = sum(v for k, v in terms.items() if not k.startswith("n_") and v.requires_grad)
            bwd = clock(total.backward) if torch.is_tensor(total) else 0.0
            trainer.optimizer.zero_grad(set_to_none=True)
            return fwd, bwd

        def step(call, teachers_on=True):
            def run_step(batch):
                trainer.loss_bank_call = call
                if not teachers_on:
                    trainer.teacher_outputs = lambda b: []
                try:
                    return clock(lambda: trainer.train_step(batch))
                finally:
                    trainer.loss_bank_call = bank
                    trainer.__dict__.pop("teacher_outputs", None)
            return run_step

        def teachers_alone(batch):
            b = trainer.make_batch(batch)
            with trainer._autocast():
                return clock(lambda: teacher_outputs(b))

        variants = [("step", step(bank)), ("step_no_losses", step(no_losses)),
                    ("student", step(no_losses, teachers_on=False)), ("teachers", teachers_alone)]
        for i in range(warmup):
            for key, fn in variants:
                fn(batches[i])
                if key == "step_no_losses":
                    losses_alone()
            captured.clear()
        memory.start()
        for i, batch in enumerate(timed):
            for k in range(len(variants)):  # rotated order: slow drift of the machine's load hits every variant
                key, fn = variants[(i + k) % len(variants)]
                times[key].append(fn(batch))
                if key == "step_no_losses":
                    fwd, bwd = losses_alone()
                    times["losses_fwd"].append(fwd)
                    times["losses_bwd"].append(bwd)
            captured.clear()
        peak, delta = memory.stop()
    out.update(times=times, peak_mem_mib=peak, step_mem_mib=delta, load_after=_loadavg())
    msg = f"{name}: step {median(times['step']) * 1e3:.1f} ms"
    if kd:
        msg += (f", without losses {median(times['step_no_losses']) * 1e3:.1f} ms, student alone "
                f"{median(times['student']) * 1e3:.1f} ms, teachers {median(times['teachers']) * 1e3:.1f} ms, "
                f"losses fwd {median(times['losses_fwd']) * 1e3:.1f} + bwd "
                f"{median(times['losses_bwd']) * 1e3:.1f} ms")
    print(f"{PROGRESS}{msg}, peak memory {peak:.0f} MiB", flush=True)
    return out


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


