"""ChefFusion datasets: one recipe with one food image per row.

Two stages share the task name and split names:

* **raw** (importers, the synthetic generator): ``id``, ``title``, ``ingredients`` and
  ``instructions`` (one item per line), ``recipe`` (the text the LM reads, :func:`format_recipe`)
  and ``image`` (the encoded JPEG/PNG bytes);
* **features** (:mod:`.features`): the same columns plus ``clip_image`` (d_clip,) float32, the
  frozen CLIP pooled output ``v_phi``, and ``sd_target`` (L, d_sd), the SD text encoder's
  embedding of ``recipe`` (``T_psi``), stored float16 by default (half the bytes; the targets
  are a frozen encoder's outputs, well inside float16's range). Training streams these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TASK = "cheffusion.recipes"
SPLITS = ("train", "val", "test")

RAW_COLUMNS: dict[str, dict[str, Any]] = {
    "id": {"dtype": "string"},
    "title": {"dtype": "string"},
    "ingredients": {"dtype": "string"},
    "instructions": {"dtype": "string"},
    "recipe": {"dtype": "string"},
    "image": {"dtype": "binary"},
}


def feature_columns(clip_dim: int, sd_tokens: int, sd_dim: int, target_dtype: str = "float16") -> dict[str, dict[str, Any]]:
    """Columns of a features dataset."""
    return {**RAW_COLUMNS, "clip_image": {"dtype": "float32", "shape": [clip_dim]},
            "sd_target": {"dtype": target_dtype, "shape": [sd_tokens, sd_dim]}}


def format_recipe(title: str, ingredients: Sequence[str], instructions: Sequence[str]) -> str:
    """The recipe text the LM reads and writes:
    ``"<title>. ingredients: a, b, c. instructions: step one. step two."``"""
    def clean(s: str) -> str:
        return " ".join(str(s).split()).strip()

    title = clean(title).rstrip(".")
    ings = ", ".join(i for i in (clean(x) for x in ingredients) if i)
    steps = " ".join(s if s.endswith((".", "!", "?")) else s + "." for s in (clean(x) for x in instructions) if s)
    return f"{title}. ingredients: {ings}. instructions: {steps}".strip()
