"""`nnkd predict`: class probabilities (and segmentations) for a folder of raw images.

A model without classification head (``nnkd.network.num_classes`` 0, e.g. ``nnKDTrainerSegKD``) predicts the
same way, channel subsets and refusals included; it writes the segmentations and ``cases.csv``
(``case_id,channels``) in place of ``classification.csv``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Dict, List, Optional, Sequence

from nnkd.errors import NNKDError


#: endings nnU-Net reads with its natural-image reader, where one file may hold several channels (RGB)
MULTI_CHANNEL_FILE_ENDINGS = (".png", ".bmp", ".tif")


def _find_cases(folder: str, file_ending: str, channel_names: Dict[str, str], contract=None,
                use: Optional[List[int]] = None) -> Dict[str, List[Optional[str]]]:
    """{case id: [file per channel, None where absent]} for nnU-Net-style ``CASE_XXXX<ending>`` names; errors
    name every case.

    ``contract`` (:class:`nnkd.subsets.ChannelContract`): channels it allows to miss may be absent (None).
    ``use``: read only these channels (each case must have them); the files of the others are ignored.
    """
    from nnkd.image_check import channel_files

    if not os.path.isdir(folder):
        raise NNKDError(f"input folder not found: {folder}")
    found = channel_files(folder, file_ending)
    if not found:
        raise NNKDError(f"{folder}: no images named CASE_XXXX{file_ending} (nnU-Net naming)")
    n = len(channel_names)
    expected = ", ".join(f"_{int(k):04d}={v}" for k, v in sorted(channel_names.items(), key=lambda kv: int(kv[0])))
    cases, problems = {}, []
    for case, files in found.items():
        if file_ending in MULTI_CHANNEL_FILE_ENDINGS and sorted(files) == list(range(len(files))) and len(files) <= n \
                and use is None:
            # one natural image file holds several channels (RGB = 3): counted after reading
            cases[case] = [files[c] for c in range(len(files))]
            continue
        wanted = range(n) if use is None else use
        missing = [c for c in wanted if c not in files]
        extra = sorted(set(files) - set(range(n)))
        if missing and contract is not None and use is None:
            refused = contract.problems([c for c in range(n) if c in files])
            if not refused:  # every absent channel is one the model was trained to miss
                cases[case] = [files.get(c) for c in range(n)]
                continue
            problems.append(f"case {case}: missing channel file(s) "
                            f"{', '.join(f'{case}_{c:04d}{file_ending}' for c in missing)}; " + "; ".join(refused)
                            + f"; the model reads {n} channel(s): {expected}")
        elif missing:
            problems.append(f"case {case}: missing channel file(s) "
                            f"{', '.join(f'{case}_{c:04d}{file_ending}' for c in missing)}; "
                            + (f"the model reads {n} channel(s): {expected}" if use is None else
                               f"--channels names {'+'.join(channel_names[str(c)] for c in use)}"))
        elif extra:
            problems.append(f"case {case}: wrong channel count: files for channel(s) {extra} exist but the model "
                            f"reads {n} channel(s): {expected}")
        else:
            cases[case] = [files[c] if use is None or c in use else None for c in range(n)]
    if problems:
        raise NNKDError("\n  ".join(problems) if len(problems) == 1 else
                        "\n  ".join([f"{folder}: {len(problems)} case(s) cannot be predicted:", *problems]))
    return cases


def predict_folder(input_folder: str, output_folder: str, model_folder: str, folds=None,
                   checkpoint: str = "checkpoint_final.pth", device: str = "cpu",
                   save_probabilities: bool = False, progress: bool = True, save_attention: bool = False,
                   channels: Optional[Sequence] = None, predictor=None, mirroring: bool = True) -> str:
    """Predict every case of ``input_folder``; returns the path of ``classification.csv``, or of ``cases.csv``
    (``case_id,channels``, :func:`nnkd.evaluation.predictions.write_cases_csv`) for a model without
    classification head (``num_classes`` 0), which writes segmentations only.

    ``channels``: the channels to use (names or indices; the other channels' files are ignored); None: each
    case's present files. Absent channels are filled as the model's modality dropout filled them in
    training (:mod:`nnkd.subsets`); channels the model never lost are refused, naming model and channel.
    ``predictor``: an already loaded :func:`nnkd.inference.load_model_folder` (``model_folder`` then only
    names it). ``mirroring`` False: no test-time mirroring (``--disable_tta``).

    The model folder's checkpoints are read without running code (:func:`nnkd.inference.load_model_folder`)
    and every input file is checked (:func:`nnkd.image_check.check_case`) before anything is written.
    """
    import numpy as np
    import torch
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from tqdm import tqdm

    from nnkd.image_check import check_case
    from nnkd.evaluation.predictions import CASES_CSV
    from nnkd.inference import load_model_folder, predict_classes, predict_segmentations

    if os.path.exists(output_folder) and not os.path.isdir(output_folder):
        raise NNKDError(f"-o {output_folder}: an existing file, not a folder; name a folder for the predictions")
    from nnkd.subsets import channel_contract, parse_channels

    if predictor is None:
        predictor = load_model_folder(model_folder, folds, checkpoint, torch.device(device), mirroring)
    class_names = predictor.plans_manager.plans["nnkd"]["class_names"]
    # no classification head (nnKDTrainerSegKD*: num_classes 0, class_names [])
    headless = not class_names or predictor.plans_manager.plans["nnkd"].get("network", {}).get("num_classes") == 0
    dataset_json = predictor.dataset_json
    contract = getattr(predictor, "channel_contract", None) or \
        channel_contract(model_folder, dataset_json["channel_names"], [None])  # no plan known: no dropout
    use = None
    if channels is not None:
        use = parse_channels(channels, dataset_json["channel_names"], model_folder)
        refused = contract.problems(use)
        if refused:
            raise NNKDError("\n  ".join([f"--channels {' '.join(map(str, channels))}: nothing was predicted:",
                                         *refused]))
    cases = _find_cases(input_folder, dataset_json["file_ending"], dataset_json["channel_names"], contract, use)
    problems = [p for case, files in tqdm(cases.items(), desc="nnkd predict: checking inputs", unit="case",
                                          disable=not progress) for p in check_case(case, [f for f in files if f])]
    if problems:
        raise NNKDError("\n  ".join([f"{input_folder}: {len(problems)} problem(s) in the input images; nothing "
                                     f"was predicted:", *problems]))
    os.makedirs(output_folder, exist_ok=True)
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    properties, used = {}, {}
    names = contract.channel_names

    def preprocessed():
        for case, files in tqdm(cases.items(), desc="nnkd predict", unit="case", disable=not progress):
            absent = [c for c, f in enumerate(files) if f is None]
            present = [f for f in files if f is not None]
            # an absent channel is read from a present file (a placeholder for nnU-Net's preprocessing, which
            # normalises each channel on its own); the network wrapper overwrites it with the training fill
            files = [f if f is not None else present[0] for f in files]
            predictor.network.fill_missing(absent, contract.fill if absent else 0.0)
            used[case] = "+".join(names[c] for c in range(len(files)) if c not in absent) \
                if len(files) == len(names) else "+".join(names)
            try:
                data, _, props = preprocessor.run_case(files, None, predictor.plans_manager,
                                                       predictor.configuration_manager, dataset_json)
            except Exception as e:  # readers raise many types; name the case
                raise NNKDError(f"case {case}: cannot read {', '.join(map(os.path.basename, files))}: {e}") from None
            if data.shape[0] != len(dataset_json["channel_names"]):
                raise NNKDError(f"case {case}: wrong channel count: {', '.join(map(os.path.basename, files))} hold "
                                f"{data.shape[0]} channel(s), the model reads {len(dataset_json['channel_names'])}: "
                                f"{', '.join(dataset_json['channel_names'].values())}")
            data = torch.from_numpy(np.ascontiguousarray(data)).float()
            properties[case] = props
            yield case, data
            if save_attention:
                _save_attention(predictor, data, props, os.path.join(output_folder, "attention", f"{case}_attention"))

    def export(case, logits):
        with tempfile.TemporaryDirectory(dir=output_folder, prefix=".tmp_") as tmp:
            # nnU-Net's exporter writes in place; export into a temporary folder and move.
            export_prediction_from_logits(logits, properties.pop(case), predictor.configuration_manager,
                                          predictor.plans_manager, dataset_json, os.path.join(tmp, case),
                                          save_probabilities)
            for name in os.listdir(tmp):
                shutil.move(os.path.join(tmp, name), os.path.join(output_folder, name))

    csv = os.path.join(output_folder, CASES_CSV if headless else "classification.csv")
    try:
        if headless:
            predict_segmentations(predictor, preprocessed(), csv, export, used)
        else:
            predict_classes(predictor, preprocessed(), csv, class_names, ensemble=True, each=export, channels=used)
    finally:
        predictor.network.fill_missing(())
    return csv


def _save_attention(predictor, data, props, path_without_ending: str) -> str:
    """``data``: the (C, *shape) preprocessed tensor. The case's CBAM spatial attention (fold mean) on the input grid, next to the predictions."""
    import torch

    from nnkd.attention import AttentionAsSegmentation, to_input_grid, write_map

    collector = predictor.network
    predictor.network = AttentionAsSegmentation(_FilledInput(collector), predictor.label_manager.num_segmentation_heads)
    try:
        with torch.no_grad():
            att = predictor.predict_logits_from_preprocessed_data(data)[0].numpy()
    finally:
        predictor.network = collector
    return write_map(to_input_grid(att, props, predictor.plans_manager, predictor.configuration_manager),
                     path_without_ending, props)


class _FilledInput:
    """``collector.network`` called on the collector's filled input (absent channels), for the attention maps."""

    def __init__(self, collector):
        self.collector = collector

    def __call__(self, x, **kwargs):
        return self.collector.network(self.collector.network_input(x), **kwargs)

    def load_state_dict(self, *args, **kwargs):
        return self.collector.network.load_state_dict(*args, **kwargs)


def _parse_folds(folds):
    if folds is None:
        return None
    return tuple(f if f == "all" else int(f) for f in folds)


def _predict(args) -> int:
    from nnkd.evaluation.predictions import CASES_CSV

    if not args.all_subsets:
        csv = predict_folder(args.i, args.o, args.m, _parse_folds(args.f), args.chk, args.device,
                             args.save_probabilities, save_attention=args.save_attention, channels=args.channels,
                             mirroring=not args.disable_tta)
        print(f"{'channels per case' if csv.endswith(CASES_CSV) else 'class probabilities'}: {csv}\n"
              f"segmentations: {args.o}")
        return 0
    return predict_all_subsets(args)


def predict_all_subsets(args) -> int:
    """``--all-subsets``: OUT/<subset>/ (classification.csv + segmentations) for every channel subset the
    model accepts, e.g. OUT/CT+FDG, OUT/CT; then ``nnkd evaluate --subsets OUT/*/classification.csv``.
    A model without classification head writes cases.csv + segmentations per subset."""
    import torch

    from nnkd.evaluation.predictions import CASES_CSV
    from nnkd.inference import load_model_folder

    if args.channels is not None:
        raise NNKDError("--all-subsets predicts every subset the model accepts; leave out --channels")
    predictor = load_model_folder(args.m, _parse_folds(args.f), args.chk, torch.device(args.device),
                                  not args.disable_tta)
    subsets = predictor.channel_contract.allowed_subsets()
    print(f"{args.m}: {len(subsets)} channel subset(s): "
          f"{', '.join(predictor.channel_contract.name(s) for s in subsets)}", flush=True)
    csvs = []
    for subset in subsets:
        name = predictor.channel_contract.name(subset)
        print(f"subset {name}", flush=True)
        csvs.append(predict_folder(args.i, os.path.join(args.o, name), args.m, device=args.device,
                                   save_probabilities=args.save_probabilities, save_attention=args.save_attention,
                                   channels=list(subset), predictor=predictor))
    if csvs[0].endswith(CASES_CSV):  # no classification head: segmentations (and cases.csv) per subset
        print("segmentations:\n  " + "\n  ".join(os.path.dirname(c) for c in csvs))
        return 0
    print("class probabilities:\n  " + "\n  ".join(csvs))
    print(f"robustness per subset: nnkd evaluate --subsets {' '.join(csvs)} -o REPORT")
    return 0


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict case classes (and segmentations) with an nnkd model folder",
                       description="nnU-Net preprocessing and sliding window; the class probability of a case is the "
                                   "mean softmax over all windows, mirrors (unless --disable_tta) and folds.")
    # nnUNetv2_predict's flags (-i -o -f -chk -device), each with a long form; dest keeps the short name
    p.add_argument("-i", "--input", dest="i", required=True, metavar="INPUT_FOLDER",
                   help="folder of images named CASE_XXXX<ending> (the model's channels only)")
    p.add_argument("-o", "--output", dest="o", required=True, metavar="OUTPUT_FOLDER",
                   help="output folder (classification.csv + segmentations; cases.csv + segmentations for a model "
                        "without classification head)")
    p.add_argument("-m", "--model", dest="m", required=True, metavar="MODEL_FOLDER",
                   help="model folder: nnUNet_results/DatasetX/<Trainer>__<plans>__<config>")
    p.add_argument("-f", "--folds", dest="f", nargs="+", default=None, metavar="FOLD",
                   help="folds to ensemble, e.g. 0 1 2 or all (default: all fold_* present)")
    p.add_argument("-chk", "--checkpoint", dest="chk", default="checkpoint_final.pth", metavar="CHECKPOINT",
                   help="checkpoint file name in each fold folder (default %(default)s)")
    p.add_argument("-device", "--device", default="cpu", choices=["cpu", "cuda"],
                   help="device to predict on (default %(default)s)")
    p.add_argument("--disable_tta", "--disable-tta", dest="disable_tta", action="store_true",
                   help="no test-time mirroring: one forward per window instead of one per mirror (up to 8 in 3D); "
                        "faster, usually slightly less accurate (nnU-Net's --disable_tta)")
    p.add_argument("--save-probabilities", "--save_probabilities", action="store_true",
                   help="also write segmentation softmax (.npz)")
    p.add_argument("--save-attention", action="store_true",
                   help="also write each case's CBAM spatial-attention map, aligned with the input, to OUT/attention/")
    p.add_argument("--channels", nargs="+", default=None, metavar="CHANNEL",
                   help="predict with these channels only (names or indices, e.g. CT); the others are filled as the "
                        "model's modality dropout filled them in training (default: each case's present files)")
    p.add_argument("--all-subsets", action="store_true",
                   help="predict once per channel subset the model accepts, into OUTPUT_FOLDER/<subset>/ "
                        "(e.g. CT+FDG, CT)")
    p.set_defaults(func=_predict)
