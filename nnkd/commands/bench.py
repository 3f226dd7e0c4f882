"""`nnkd bench speed|quality`: the benchmarks of :mod:`nnkd.bench`, one module each."""
from __future__ import annotations

import importlib

BENCHMARKS = {
    "speed": "median time and peak memory per training step of every method, against plain student + teachers",
    "quality": "teacher, no-KD student and each method on the synthetic benchmarks over several seeds",
}


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: cost per step (speed) and what each method buys (quality)")
    sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, help_text in BENCHMARKS.items():
        module = importlib.import_module(f"nnkd.bench.{name}")
        q = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0])
        module.add_arguments(q)
        q.set_defaults(func=module.run)
