"""`nnkd` sub-commands: each module with `register(subparsers)` is discovered by nnkd.cli."""
