"""Benchmarks: ``nnkd bench speed`` (cost per training step) and ``nnkd bench quality`` (what each method buys).

Each benchmark is a module with ``add_arguments(parser)`` and ``run(args) -> int``.
"""
