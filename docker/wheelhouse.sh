#!/bin/sh
# Build stage of docker/Dockerfile: every wheel the image installs, into one folder.
#   wheelhouse.sh OUT      (run in the source tree; env TORCH_VERSION, TORCH_PIP_ARGS, EXTRAS)
# Pins come from requirements.lock (the complete lock CI tests with) when the build context has
# one, else from constraints.txt; torch comes from TORCH_PIP_ARGS (the PyTorch index of the
# target: its CPU or CUDA build). The final stage installs from OUT with no index (install.sh).
set -eu
out=$1
mkdir -p "$out"
if [ -f requirements.lock ]; then
    lock=requirements.lock
else
    echo "wheelhouse: no requirements.lock in the build context; pinning with constraints.txt" >&2
    lock=constraints.txt
fi
python docker/lock_pins.py "$lock" > "$out/pins.txt"
# The target's torch build first (no deps: they resolve with everything else below). A local
# version (2.13.0+cpu, +cu128) sorts above the PyPI release, so the resolver keeps this one.
# shellcheck disable=SC2086  # TORCH_PIP_ARGS holds several pip options
python -m pip download --no-deps --dest "$out" $TORCH_PIP_ARGS "torch==$TORCH_VERSION"
# --use-pep517: sdists (deepspeed, rouge-score) build in an isolated env that has setuptools and
# wheel, whatever the base's pip defaults to.
python -m pip wheel --use-pep517 --wheel-dir "$out" --find-links "$out" -c "$out/pins.txt" \
    "torch==$TORCH_VERSION" ".[$EXTRAS]"
cp docker/install.sh "$out/install.sh"
