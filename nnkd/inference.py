"""Whole-case classification with nnU-Net's sliding-window predictor.

How window logits become one case prediction: every network call the predictor makes (each
sliding-window tile, each test-time mirror, each fold of an ensemble) yields class logits for
the tile; their softmax probabilities are averaged with equal weight. The segmentation path
is nnU-Net's, unchanged (Gaussian-weighted tile logits, mirroring, fold averaging).
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from nnkd.errors import NNKDError


class ClassProbabilityCollector(nn.Module):
    """Wraps an :class:`~nnkd.nets.network.NNKDNetwork` for ``nnUNetPredictor``.

    ``forward(x)`` returns the segmentation logits the predictor expects and accumulates the
    class probabilities of every sample it sees; ``mean()`` is their average since ``reset()``
    (``(0,)`` for a network without classification head, ``num_classes`` 0).
    ``load_state_dict`` and ``state_dict`` act on the wrapped network, so the predictor's
    per-fold weight loading works unchanged.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        self.missing: Tuple[int, ...] = ()  # channels absent in the current case (see fill_missing)
        self.fill_value = 0.0
        self.reset()

    def fill_missing(self, channels, value: float = 0.0) -> None:
        """Set ``channels`` of every network input to ``value`` from now on (a case predicted with a subset
        of its channels: :mod:`nnkd.subsets`); ``()`` restores the plain forward."""
        self.missing, self.fill_value = tuple(channels), float(value)

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        from nnkd.subsets import fill_channels

        return fill_channels(x, self.missing, self.fill_value)

    def reset(self) -> None:
        self._sum = None
        self._count = 0

    def forward(self, x: torch.Tensor):
        out = self.network(self.network_input(x), return_all=True)
        if out.logits is not None:  # None: a head-less (segmentation-only) network
            probs = torch.softmax(out.logits.float(), dim=1).sum(0)
            self._sum = probs if self._sum is None else self._sum + probs
        self._count += x.shape[0]
        return out.seg

    def mean(self) -> torch.Tensor:
        if not self._count:
            raise RuntimeError("no network call since reset()")
        return torch.zeros(0) if self._sum is None else (self._sum / self._count).cpu()

    def load_state_dict(self, state_dict, *args, **kwargs):
        return self.network.load_state_dict(state_dict, *args, **kwargs)

    def state_dict(self, *args, **kwargs):
        return self.network.state_dict(*args, **kwargs)

    @property
    def decoder(self):
        return self.network.decoder


def predict_case(predictor, data: torch.Tensor, ensemble: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(C, *shape) preprocessed case -> (segmentation logits, class probabilities (K,); K = 0 without head).

    ``predictor.network`` must be a :class:`ClassProbabilityCollector`. With ``ensemble`` the
    predictor's loaded fold parameters are averaged (``predict_logits_from_preprocessed_data``);
    otherwise the network's current weights are used.
    """
    collector = predictor.network
    collector.reset()
    if ensemble:
        logits = predictor.predict_logits_from_preprocessed_data(data)
    else:
        logits = predictor.predict_sliding_window_return_logits(data)
    return logits.cpu(), collector.mean()


def class_predictor(network: nn.Module, plans_manager, configuration_manager, dataset_json: dict, trainer_name: str,
                    mirroring_axes, device: torch.device, parameters=None):
    """nnU-Net's sliding-window predictor around ``ClassProbabilityCollector(network)``: the one set-up
    of ``nnkd predict`` and of the trainers' final validation. ``parameters``: per-fold state dicts to
    ensemble (``None``: the network's current weights)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(ClassProbabilityCollector(network), plans_manager, configuration_manager,
                                    parameters, dataset_json, trainer_name, mirroring_axes)
    return predictor


def predict_classes(predictor, cases: Iterable[Tuple[str, torch.Tensor]], csv_path: str, class_names: List[str],
                    labels: Optional[List[str]] = None, ensemble: bool = False,
                    each: Optional[Callable[[str, torch.Tensor], None]] = None,
                    channels: Optional[dict] = None) -> np.ndarray:
    """Predict every ``(case id, (C, *shape) preprocessed data)`` and write ``classification.csv``.

    ``each(case, segmentation logits)`` runs after each case (segmentation export, attention maps).
    ``channels``: {case: channels used, e.g. ``CT+FDG``}, filled while the cases are read, written as the
    CSV's ``channels`` column. Returns the class probabilities (N, K); the CSV is written once, after the
    last case.
    """
    from nnkd.evaluation.predictions import write_prediction_csv

    ids, probs = [], []
    with torch.no_grad():
        for case, data in cases:
            logits, p = predict_case(predictor, data, ensemble)
            if each is not None:
                each(case, logits)
            ids.append(case)
            probs.append(p.numpy())
    probs = np.stack(probs)
    write_prediction_csv(csv_path, ids, probs, class_names, labels,
                         None if channels is None else [channels[c] for c in ids])
    return probs


def predict_segmentations(predictor, cases: Iterable[Tuple[str, torch.Tensor]], csv_path: str,
                          each: Callable[[str, torch.Tensor], None], channels: dict,
                          ensemble: bool = True) -> List[str]:
    """:func:`predict_classes` for a model without classification head (``num_classes`` 0): ``each(case,
    segmentation logits)`` exports each case, and ``csv_path`` (``cases.csv``: ``case_id,channels``, see
    :func:`nnkd.evaluation.predictions.write_cases_csv`) is written once, after the last case. Returns the case ids."""
    from nnkd.evaluation.predictions import write_cases_csv

    ids = []
    with torch.no_grad():
        for case, data in cases:
            logits, _ = predict_case(predictor, data, ensemble)
            each(case, logits)
            ids.append(case)
    write_cases_csv(csv_path, ids, [channels[c] for c in ids])
    return ids


def load_model_folder(folder: str, folds, checkpoint: str, device: torch.device, mirroring: bool = True):
    """A :func:`class_predictor` for an nnkd model folder, every fold's weights read with
    :func:`nnkd.checkpoints.load_checkpoint` (nnU-Net's own loader unpickles with ``weights_only=False``).
    ``mirroring`` False: no test-time mirroring (nnU-Net's ``--disable_tta``), one forward per window.

    ``folds``: fold names (int or "all"), or ``None`` for every ``fold_*`` holding ``checkpoint``.
    Raises :class:`NNKDError` listing every problem of the folder.
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnkd.checkpoints import PREDICT_KEYS, load_checkpoint
    from nnkd.nets.network import build_network
    from nnkd.subsets import channel_contract

    if not os.path.isdir(folder):
        raise NNKDError(f"model folder not found: {folder}")
    missing = [n for n in ("plans.json", "dataset.json") if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise NNKDError(f"{folder} is not an nnU-Net model folder (no {' or '.join(missing)})")
    jsons = {}
    for name in ("plans.json", "dataset.json"):
        try:
            jsons[name] = load_json(os.path.join(folder, name))
        except ValueError as e:
            raise NNKDError(f"{os.path.join(folder, name)}: not valid JSON: {e}") from None
    plans, dataset_json = jsons["plans.json"], jsons["dataset.json"]
    if "network" not in plans.get("nnkd", {}):
        raise NNKDError(f"{folder} holds no nnkd classification network (no 'nnkd' entry in plans.json); train it "
                        f"with an nnKDTrainer* classification trainer")
    present = sorted(d for d in os.listdir(folder) if d.startswith("fold_"))
    if folds is None:
        folds = [d[len("fold_"):] for d in present
                 if d != "fold_all" and os.path.isfile(os.path.join(folder, d, checkpoint))]
        if not folds:
            raise NNKDError(f"{folder}: no fold_*/{checkpoint} (folds present: {', '.join(present) or 'none'})")
    problems, checkpoints = [], []
    for f in folds:
        path = os.path.join(folder, f"fold_{f}", checkpoint)
        if not os.path.isfile(path):
            problems.append(f"checkpoint not found: {path} (folds present: {', '.join(present) or 'none'})")
            continue
        try:
            checkpoints.append((path, load_checkpoint(path, PREDICT_KEYS)))
        except NNKDError as e:
            problems.append(str(e))
    if problems:
        raise NNKDError("\n  ".join([f"cannot predict with {folder}:", *problems]))
    first = checkpoints[0][1]
    configuration = first["init_args"].get("configuration") if isinstance(first["init_args"], dict) else None
    pm = PlansManager(plans)
    try:
        cm = pm.get_configuration(configuration)
    except (KeyError, RuntimeError, TypeError) as e:
        raise NNKDError(f"{checkpoints[0][0]}: configuration {configuration!r} is not in {folder}/plans.json "
                        f"({e})") from None
    network = build_network(pm, cm, determine_num_input_channels(pm, cm, dataset_json),
                            pm.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    for path, ck in checkpoints:
        try:
            network.load_state_dict(ck["network_weights"])  # checks every fold fits; the first stays loaded
        except RuntimeError as e:
            problems.append(f"{path} does not fit the network of {folder}: {str(e).strip().splitlines()[0]}")
    if problems:
        raise NNKDError("\n  ".join([f"cannot predict with {folder}:", *problems]))
    network.load_state_dict(first["network_weights"])
    predictor = class_predictor(network, pm, cm, dataset_json, first["trainer_name"],
                                first.get("inference_allowed_mirroring_axes"), device,
                                [ck["network_weights"] for _, ck in checkpoints])
    predictor.use_mirroring = mirroring
    predictor.channel_contract = channel_contract(
        folder, dataset_json["channel_names"],
        [ck["nnkd"].get("plan") if isinstance(ck.get("nnkd"), dict) else None for _, ck in checkpoints])
    return predictor
