#!/usr/bin/env bash
# GPU check of nnkd: autocast tests on CUDA, nnkd bench speed -device cuda, a 2-epoch training of
# every method trainer with prediction, and nnkd predict -device cuda; report in OUT/gpu_check.md.
# About 8 minutes on one GPU. Each step is recorded and the others still run when one fails; the
# exit status is 1 when any step failed.
#
#   scripts/gpu_check.sh -o OUT              # on a CUDA machine (nnkd installed, or run from the repository)
#   scripts/gpu_check.sh -o OUT --dry-run    # list the commands, run nothing
#   scripts/gpu_check.sh -o OUT --only autocast bench   # some steps only
#
# PYTHON selects the interpreter (default: python, else python3). See scripts/gpu_check.py.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-$(command -v python || command -v python3)}"
if [ -z "$python" ]; then
    echo "gpu_check: no python on PATH (set PYTHON)" >&2
    exit 2
fi
exec "$python" "$here/gpu_check.py" "$@"
