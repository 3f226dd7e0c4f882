"""``nnkd simulate-dose``: low-dose copies of an nnU-Net raw CT dataset (engine: :mod:`nnkd.dose.dataset`)."""
from __future__ import annotations

import argparse


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
    from nnkd.dose.dataset import simulate_dose_dataset  # imports torch: not at CLI start-up

    made = simulate_dose_dataset(args.src, args.dose, args.first_id, variant=args.variant,
                                 channel=args.channel, seed=args.seed, workers=args.workers,
                                 device=args.device, overwrite=args.overwrite)
    for path in made:
        print(path)
    return 0
