"""`nnkd detect`: scored lesion detections from nnUNetv2_predict --save_probabilities output."""
from __future__ import annotations

import argparse

from nnkd.errors import NNKDError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "detect", help="turn nnU-Net probability maps (.npz) into a lesion detection CSV",
        description="Connected components of the lesion probability above a threshold, scored by their maximum "
                    "probability. Reads the .npz files nnUNetv2_predict writes with --save_probabilities and "
                    "writes case_id,score,center_*,box_lo_*,box_hi_* (voxel coordinates, array axis order).")
    p.add_argument("-i", "--input", required=True, metavar="PRED_FOLDER", help="nnU-Net prediction folder")
    p.add_argument("-o", "--output", required=True, metavar="CSV", help="detection CSV to write")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    p.add_argument("--min-size", type=int, default=0, help="drop components smaller than this many voxels")
    p.add_argument("--channel", type=int, nargs="+", default=[1],
                   help="lesion channel(s) of the probability map; several are summed (default 1)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from nnkd.detection import detect_folder

    if not 0.0 <= args.threshold < 1.0:
        raise NNKDError(f"--threshold {args.threshold} must be in [0, 1)")
    if args.min_size < 0:
        raise NNKDError(f"--min-size {args.min_size} must be >= 0")
    channel = args.channel[0] if len(args.channel) == 1 else args.channel
    n_cases, n_det = detect_folder(args.input, args.output, args.threshold, args.min_size, channel)
    print(f"wrote {n_det} detection(s) for {n_cases} case(s) to {args.output}")
    return 0
