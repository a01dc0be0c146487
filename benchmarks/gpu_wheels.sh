#!/usr/bin/env bash
# Fetch, on a machine with a package registry, the wheels that the GPU machine (Python 3.12,
# x86-64, no registry) lacks, into .whl/ (ignored by git). Then, on the GPU machine, from the
# repository's root with .whl/ beside it:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
#   python3 benchmarks/gpu_check.py --out OUT
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-path info/exclude)"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest .whl \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -r benchmarks/gpu_requirements.txt
du -sh .whl
