"""Workspace preparation of ``nnkd bench speed`` (synthetic data, preprocessing, teacher folders, plans) and one
:mod:`nnkd.bench.speed.worker` process per teacher build and per measured case, through :mod:`nnkd.pipeline`."""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional

from nnkd.bench.catalogue import DATASETS, PLAIN_TRAINER, BenchDataset, Case, TeacherModel, speed_cases
from nnkd.bench.speed.measure import PROGRESS
from nnkd.errors import NNKDError
from nnkd.pipeline import Workspace, model_folder, plan_and_preprocess, synth


class SpeedRun:
    """One ``nnkd bench speed`` workspace: synthetic data, preprocessing, teacher folders, plans, one worker per case.

    Datasets, logs (``WORKSPACE/logs``) and logged child processes are :class:`nnkd.pipeline.Workspace`'s;
    workers echo only their progress lines (``@@ ...``) to the console, their full output goes to the log.
    """

    def __init__(self, workspace: str, device: str, quick: bool, iters: int, warmup: int, threads: Optional[int]):
        self.ws = Workspace(workspace)
        self.root, self.device, self.quick = self.ws.root, device, quick
        self.iters, self.warmup, self.threads = iters, warmup, threads
        self.ws.env["nnUNet_compile"] = "0"
        if "OMP_WAIT_POLICY" not in os.environ:  # timings with OpenMP's defaults (Workspace makes idle threads passive)
            self.ws.env.pop("OMP_WAIT_POLICY", None)
        os.makedirs(self.path("logs"), exist_ok=True)
        os.makedirs(self.path("plans"), exist_ok=True)

    def path(self, *parts: str) -> str:
        return self.ws.path(*parts)

    # ---------------------------------------------------------------- data
    def prepare_datasets(self, datasets: List[BenchDataset]) -> None:
        """Synthetic raw datasets, then one nnUNetv2_plan_and_preprocess per configuration for the missing ones."""
        for ds in datasets:
            size, cases = (ds.quick_size, ds.quick_cases) if self.quick else (ds.size, ds.cases)
            ids = [ds.dataset_id + i for i in range(ds.n_datasets)]
            if any(self.ws.dataset_folder("nnUNet_raw", i) is None for i in ids):
                _progress(f"synthetic dataset {ds.kind} (ids {ids}, {cases} cases, size {'x'.join(map(str, size))})")
                synth(self.ws, ds.kind, ds.dataset_id, cases, 0, size)
        for config in dict.fromkeys(ds.configuration for ds in datasets):
            ids = [ds.dataset_id + i for ds in datasets if ds.configuration == config for i in range(ds.n_datasets)]
            missing = [i for i in ids if not self.ws.is_preprocessed(i, config)]
            if missing:
                _progress(f"nnUNetv2_plan_and_preprocess -d {' '.join(map(str, missing))} -c {config}")
                plan_and_preprocess(self.ws, missing, config)

    def teacher_folder(self, ds: BenchDataset, t: TeacherModel) -> str:
        return model_folder(self.ws, ds.dataset_id + t.dataset_offset, t.trainer, ds.configuration)

    def prepare_teachers(self, ds: BenchDataset) -> None:
        """Teacher model folders from untrained networks (timing does not depend on weights), one process."""
        todo = [t for t in ds.teachers
                if not os.path.isfile(os.path.join(self.teacher_folder(ds, t), "fold_0", "checkpoint_final.pth"))]
        if not todo:
            return
        _progress(f"teacher model folders (untrained weights): {', '.join(f'{t.name} ({t.trainer})' for t in todo)}")
        specs = [{"trainer": t.trainer, "dataset_id": ds.dataset_id + t.dataset_offset,
                  "plan": self.write_plan(f"teacher_{ds.kind}_{t.name}", dict({"seed": 0}, **t.plan))} for t in todo]
        self.worker({"task": "teachers", "teachers": specs, "configuration": ds.configuration, "device": "cpu",
                     "plan": specs[0]["plan"]}, f"teachers_{ds.kind}")

    def write_plan(self, name: str, plan: Dict[str, Any]) -> str:
        from nnkd.io import write_json

        path = self.path("plans", f"{name.replace(' ', '_')}.json")
        write_json(path, dict({"name": f"bench_{name.replace(' ', '_')}"}, **plan))
        return path

    def case_plan(self, case: Case) -> str:
        ds = DATASETS[case.dataset]
        plan: Dict[str, Any] = {"seed": 0, **({"student": ds.student} if ds.student else {})}
        if case.trainer != PLAIN_TRAINER:
            plan["teachers"] = [dict({"name": t.name, "model_folder": self.teacher_folder(ds, t)}, **t.plan_entry,
                                     **({} if t.paired else {"paired": False,
                                                             "dataset": ds.dataset_id + t.dataset_offset}))
                                for t in ds.teachers]
        return self.write_plan(f"case_{case.label}", dict(plan, **case.plan))

    # ---------------------------------------------------------------- running
    def run(self, cases: List[Case]) -> Dict[str, Dict[str, Any]]:
        from nnkd.hooks import registry

        datasets = list(dict.fromkeys(c.dataset for c in cases))
        trainers = registry("trainers")
        missing = sorted({c.trainer for c in cases} - set(trainers))
        if missing:
            raise NNKDError(f"trainer(s) {missing} are not registered (nnkd trainers lists the known ones)")
        self.prepare_datasets([DATASETS[d] for d in datasets])
        for d in datasets:
            self.prepare_teachers(DATASETS[d])
        results: Dict[str, Dict[str, Any]] = {}
        for d in datasets:
            ds = DATASETS[d]
            batches = self.path(f"batches_{d}{'_quick' if self.quick else ''}_{self.iters + self.warmup}.pt")
            mine = [c for c in cases if c.dataset == d]
            source = next((c for c in mine if c.label == ds.batch_case), None)
            if source is None:
                source = next(c for c in speed_cases() if c.label == ds.batch_case)
            order = [source] + [c for c in mine if c is not source]
            for case in order:
                i = cases.index(case) + 1 if case in cases else 0
                _progress(f"case {i}/{len(cases)}: {case.label} ({case.trainer} on {d})")
                res = self.worker({"task": "measure", "label": case.label, "trainer": case.trainer,
                                   "dataset_id": ds.dataset_id, "configuration": ds.configuration,
                                   "plan": self.case_plan(case), "device": self.device, "iters": self.iters,
                                   "warmup": self.warmup, "batches": batches, "threads": self.threads,
                                   "kd": case.trainer != PLAIN_TRAINER}, f"case_{case.label}")
                if case in cases:
                    results[case.label] = res
        return results

    def worker(self, spec: Dict[str, Any], name: str) -> Dict[str, Any]:
        from nnkd.io import write_json

        tag = name.replace(" ", "_")
        spec_path, result_path = self.path("logs", f"{tag}.spec.json"), self.path("logs", f"{tag}.result.json")
        if os.path.exists(result_path):
            os.remove(result_path)
        write_json(spec_path, dict(spec, result=result_path))
        env = dict(nnUNet_n_proc_DA="0", NNKD_PLAN=spec["plan"])
        if spec.get("threads"):
            env.update(OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
        self.ws.run([sys.executable, "-m", "nnkd.bench.speed.worker", spec_path], extra_env=env,
                    log=self.path("logs", f"{tag}.log"), echo=_worker_progress)
        with open(result_path) as f:
            return json.load(f)


def _worker_progress(line: str) -> Optional[str]:
    return "  " + line[len(PROGRESS):].rstrip() if line.startswith(PROGRESS) else None


def _progress(msg: str) -> None:
    print(f"[bench speed] {msg}", flush=True)

