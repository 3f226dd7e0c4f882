"""`nnkd check DATASET`: find damaged images in a raw nnU-Net dataset before planning."""
from __future__ import annotations

import argparse
import os
import sys

from nnkd.errors import NNKDError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="find unreadable, truncated or non-finite images in a raw nnU-Net dataset",
        description="Reads every image and label of $nnUNet_raw/DATASET completely (imagesTr, labelsTr, imagesTs) "
                    "and lists every problem at once: unreadable or truncated files, NaN/inf voxels, missing "
                    "channel files, labels without images, shape or geometry differing between a case's files, "
                    "label values not in dataset.json. nnU-Net's --verify_dataset_integrity finds none of the "
                    "first two. Exit status 0 when the dataset is clean, 2 otherwise.")
    p.add_argument("dataset", help="dataset id (5), name (Dataset005_Liver) or raw dataset folder")
    p.add_argument("--quiet", action="store_true", help="no per-case progress")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from nnkd.image_check import check_raw_dataset
    from nnkd.dataset_folders import RAW, dataset_folder

    folder = args.dataset if os.path.isdir(args.dataset) else dataset_folder(args.dataset, RAW)
    seen = []

    def progress(case: str) -> None:
        seen.append(case)
        if not args.quiet:
            print(f"checking case {len(seen)}: {case}", file=sys.stderr, flush=True)

    n, problems = check_raw_dataset(folder, progress)
    if problems:
        raise NNKDError("\n  ".join([f"{folder}: {len(problems)} problem(s) in {n} case(s):", *problems]))
    print(f"{folder}: {n} case(s) checked, no problems found")
    return 0
