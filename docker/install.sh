#!/bin/sh
# Final stage of docker/Dockerfile: install polymodal with its extras from the build stage's
# wheel folder (bind-mounted at $1, so no wheel stays in a layer), with no index and no cache.
#   install.sh WHEELS      (env TORCH_VERSION, EXTRAS)
set -eu
wheels=$1
python -m pip install --no-cache-dir --no-index --find-links "$wheels" -c "$wheels/pins.txt" \
    "torch==$TORCH_VERSION" "polymodal[$EXTRAS]"
