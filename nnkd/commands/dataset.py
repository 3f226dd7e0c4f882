"""`nnkd dataset from-images`: an nnU-Net raw dataset from a folder of 2D images and a label table."""
from __future__ import annotations

import argparse
import sys

_FROM_IMAGES_DESCRIPTION = """\
Write $nnUNet_raw/DatasetNNN_NAME from a folder of 2D images (png, jpg/jpeg, bmp, tif/tiff;
one image per case, case id = file name without extension) and a label CSV with the header
case_id,label (further columns are ignored). Images are stored as 8-bit RGB png for nnU-Net's
natural-image reader (NaturalImage2DIO): grey images become 3 equal channels, alpha is dropped,
16-bit images are scaled to 8 bits. The case labels go into dataset.json (key "nnkd") as
`nnkd labels import` writes them; class indices follow the natural-sort order of the labels
(G2 before G10). Case ids are made valid nnU-Net identifiers (characters other than letters,
digits, _ and - become _); image_sources.json in the dataset records each case's files.

Masks. Without --masks the dataset is classification-only: nnU-Net 2.8.1 cannot plan a dataset
whose masks are all background (fingerprint extraction fails with "IndexError: index -1 is out
of bounds for axis 0 with size 0"), so every mask labels the whole image as label 1 "image" and
dataset.json records "nnkd": {"masks": "none"}; nnkd's classification trainers then train the
classification head alone. With --masks, MASKS_DIR holds one lossless mask (png, bmp, tif) per
image under the same stem, kept with its values: 0 = background, 1..K (a 0/255 mask is binary:
255 becomes 1), named background/lesion when K = 1, else label_1..label_K.

Nothing is written when anything is wrong: unreadable images or masks, images without a label,
labels without an image, missing masks, masks of another size, clashing case ids are refused
together in one error listing each file. The dataset is built in a hidden staging folder in
$nnUNet_raw and renamed into place when complete; staging folders that an interrupted run left
behind (.DatasetNNN_NAME.*.staging) are removed at the start of the next run, which says so. An existing dataset id is refused unless
--overwrite (which replaces a dataset of the same id and name only)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("dataset", help="create nnU-Net raw datasets (from-images)")
    sub = p.add_subparsers(dest="dataset_command", metavar="{from-images}", required=True)
    f = sub.add_parser("from-images", help="a 2D RGB dataset from an image folder and a case_id,label CSV",
                       description=_FROM_IMAGES_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("images", metavar="IMAGES_DIR", help="folder with one image per case (not searched recursively)")
    f.add_argument("labels", metavar="LABELS.csv", help="label table with the columns case_id,label")
    f.add_argument("--id", type=int, required=True, dest="dataset_id", metavar="N", help="dataset id (1..999)")
    f.add_argument("--name", required=True, help="dataset name (letters, digits, _ and -): DatasetNNN_NAME")
    f.add_argument("--masks", metavar="MASKS_DIR",
                   help="lesion masks, one per image with the same file stem (default: classification-only)")
    f.add_argument("--overwrite", action="store_true", help="replace an existing dataset of the same id and name")
    f.set_defaults(func=run_from_images)


def run_from_images(args: argparse.Namespace) -> int:
    from nnkd.image_folder import SOURCES_FILE, from_images

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    out = from_images(args.images, args.labels, args.dataset_id, args.name, masks_dir=args.masks,
                      overwrite=args.overwrite, progress=progress)
    counts = {c: sum(case.label == c for case in out.cases) for c in out.class_names}
    print(f"written: {out.folder} ({len(out.cases)} cases)")
    print("classes (index order): " + ", ".join(f"{i}={c} ({counts[c]})" for i, c in enumerate(out.class_names)))
    print("masks: " + ("none (label 1 = the whole image; nnkd trains the classification head alone)"
                       if args.masks is None else ", ".join(f"{v}={k}" for k, v in out.labels.items())))
    renamed = [c for c in out.cases if c.case_id != c.stem]
    if renamed:
        shown = ", ".join(f"{c.stem!r} -> {c.case_id}" for c in renamed[:10])
        print(f"renamed {len(renamed)} case id(s) to nnU-Net identifiers: {shown}{' ...' if len(renamed) > 10 else ''} "
              f"(all in {SOURCES_FILE})")
    if out.ignored:
        print(f"ignored {len(out.ignored)} entr{'y' if len(out.ignored) == 1 else 'ies'} of {args.images} that are "
              f"not image files: {', '.join(out.ignored[:10])}{' ...' if len(out.ignored) > 10 else ''}")
    print(f"next: nnUNetv2_plan_and_preprocess -d {args.dataset_id} -c 2d --verify_dataset_integrity")
    return 0
