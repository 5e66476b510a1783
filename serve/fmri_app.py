"""fMRI encoding models behind Ray Serve: ``import_path: serve.fmri_app:app_builder``.

The spine does the work (auth, limits, batching, 4xx on bad input); the task comes from the
run's own config. A request is a story's words with times, the response predicted voxels.
"""

from __future__ import annotations

from typing import Any

from polymodal.serving.app import ServeArgs
from polymodal.serving.app import app_builder as _spine_builder


def app_builder(args: dict[str, Any] | ServeArgs) -> Any:
    """Strictly validated ``args`` (see :class:`polymodal.serving.app.ServeArgs`) -> Serve app."""
    return _spine_builder(args)
