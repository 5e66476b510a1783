"""Wander behind Ray Serve: ``import_path: serve.wander_app:app_builder`` in serve/config.yaml.

The spine does the work; this module only names the entry point, so the task comes from the
checkpoint's own config (any Wander task: classification, regression or retrieval).
"""

from __future__ import annotations

from typing import Any

from polymodal.serving.app import ServeArgs
from polymodal.serving.app import app_builder as _spine_builder


def app_builder(args: dict[str, Any] | ServeArgs) -> Any:
    """Strictly validated ``args`` (see :class:`polymodal.serving.app.ServeArgs`) -> Serve app."""
    return _spine_builder(args)
