"""Synthetic food: coloured-shape 'dishes' with matching titles, ingredients and steps.

A dish is a (colour, shape) pair. The colour names the main ingredient (red -> tomato, green ->
spinach, ...), the shape the kind of dish (a disc is a soup, a square a cake, a triangle a pie,
a ring a salad), and both fix the recipe: the title ``"<main> <dish>"``, the dish's ingredient
list and its steps, with the main ingredient in them. Per row, noise that the image does not
show: an optional garnish (ingredient and step) and a cooking time. The image is the shape in
the colour (jittered in hue, size and position) on a noisy plate, as a PNG.

So a recipe is predictable from its image up to the noise (what ``l_r`` learns through
``W_recipe``), and the SD targets ``T_psi(recipe)`` are predictable from the recipe (what
``l_g`` learns through the mapper). :func:`dish_of` reads the dish back from a recipe text,
which the tests use to score generations.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from polymodal import storage as st
from polymodal.config import StorageOptions
from polymodal.shards import ShardWriter

from .data import RAW_COLUMNS, SPLITS, TASK, format_recipe

COLOURS = {"red": ((210, 40, 40), "tomato"), "green": ((50, 150, 60), "spinach"), "yellow": ((225, 205, 50), "corn"),
           "orange": ((235, 135, 30), "carrot"), "purple": ((125, 45, 145), "beet"), "brown": ((120, 75, 35), "mushroom")}
DISHES = {
    "disc": ("soup", ["water", "salt", "onion"],
             ["chop the {main}.", "boil the {main} with water for {t} minutes.", "season with salt."]),
    "square": ("cake", ["flour", "eggs", "sugar"],
               ["mix the {main} with flour and eggs.", "bake for {t} minutes.", "let it cool."]),
    "triangle": ("pie", ["butter", "flour", "cream"],
                 ["roll the dough.", "fill it with {main} and cream.", "bake for {t} minutes."]),
    "ring": ("salad", ["oil", "lemon", "pepper"],
             ["slice the {main}.", "toss with oil and lemon for {t} minutes.", "serve cold."]),
}
GARNISHES = ["parsley", "cheese", "basil", None]
TIMES = [10, 15, 20, 25, 30]
#: rows per split at ``scale=1``
SPLIT_ROWS = {"train": 480, "val": 96, "test": 96}
_STREAM = {"train": 1, "val": 2, "test": 3}


def draw_dish(rng: np.random.Generator, colour: str, shape: str, size: int = 32) -> np.ndarray:
    """(size, size, 3) uint8: the shape in the (jittered) colour on a noisy light plate."""
    from PIL import Image, ImageDraw

    plate = np.clip(rng.normal(232, 10, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(plate)
    draw = ImageDraw.Draw(img)
    rgb = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLOURS[colour][0])
    r = size * rng.uniform(0.28, 0.4)
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "disc":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=rgb)
    else:  # ring
        draw.ellipse(box, fill=rgb)
        hole = r * 0.5
        draw.ellipse([cx - hole, cy - hole, cx + hole, cy + hole], fill=tuple(int(v) for v in plate[0, 0]))
    return np.asarray(img)


def sample_recipe(rng: np.random.Generator, colour: str, shape: str) -> dict[str, Any]:
    """Title, ingredients and instructions of one dish, with the per-row noise."""
    main = COLOURS[colour][1]
    kind, ings, steps = DISHES[shape]
    t = int(rng.choice(TIMES))
    garnish = GARNISHES[int(rng.integers(len(GARNISHES)))]
    ingredients = [main, *ings] + ([garnish] if garnish else [])
    instructions = [s.format(main=main, t=t) for s in steps] + ([f"top with {garnish}."] if garnish else [])
    return {"title": f"{main} {kind}", "ingredients": ingredients, "instructions": instructions}


def dish_of(text: str) -> tuple[str | None, str | None]:
    """(main ingredient, dish kind) named first in a recipe text, or None for each that is absent."""
    words = re.findall(r"[a-z]+", str(text).lower())
    mains = {v[1] for v in COLOURS.values()}
    kinds = {v[0] for v in DISHES.values()}
    return next((w for w in words if w in mains), None), next((w for w in words if w in kinds), None)


def sample_rows(rng: np.random.Generator, n: int, *, image_size: int = 32, id_prefix: str = "synth") -> dict[str, list]:
    """``n`` raw rows (the columns of :data:`~.data.RAW_COLUMNS`), dishes drawn uniformly."""
    from .backbones import image_to_png

    colours, shapes = list(COLOURS), list(DISHES)
    cols: dict[str, list] = {k: [] for k in RAW_COLUMNS}
    for i in range(n):
        colour, shape = colours[int(rng.integers(len(colours)))], shapes[int(rng.integers(len(shapes)))]
        rec = sample_recipe(rng, colour, shape)
        cols["id"].append(f"{id_prefix}-{i:06d}")
        cols["title"].append(rec["title"])
        cols["ingredients"].append("\n".join(rec["ingredients"]))
        cols["instructions"].append("\n".join(rec["instructions"]))
        cols["recipe"].append(format_recipe(rec["title"], rec["ingredients"], rec["instructions"]))
        cols["image"].append(image_to_png(draw_dish(rng, colour, shape, image_size)))
    return cols


def write_synthetic(out_uri: str, *, seed: int = 0, scale: float = 1.0, image_size: int = 32,
                    opts: StorageOptions | None = None, progress: bool = True, use_ray: bool = False,
                    pretrain_steps: int = 300) -> dict[str, str]:
    """Raw splits at ``<out>/raw/<split>``, tiny backbones at ``<out>/backbones/{lm,clip,sd}`` (the LM
    trained on the train recipes) and feature splits at ``<out>/<split>``.

    Returns ``{"train", "val", "test", "lm", "clip", "sd"}`` URIs. ``use_ray``: extract features with
    the Ray Data actor pool (otherwise in this process, the same extractor)."""
    from .backbones import write_tiny_backbones
    from .features import extract_features

    raw: dict[str, str] = {}
    train_texts: list[str] = []
    for split in SPLITS:
        n = max(16, int(round(SPLIT_ROWS[split] * scale)))
        rows = sample_rows(np.random.default_rng([seed, _STREAM[split]]), n, image_size=image_size,
                           id_prefix=f"synth-{split}")
        if split == "train":
            train_texts = rows["recipe"]
        raw[split] = st.join(out_uri, "raw", split)
        with ShardWriter(raw[split], task=TASK, split=split, columns=RAW_COLUMNS, rows_per_shard=256,
                         meta={"stage": "raw", "source": "synthetic", "seed": seed}, opts=opts,
                         progress=progress and f"synth {split}") as writer:
            writer.write(rows)
    out = write_tiny_backbones(st.join(out_uri, "backbones"), train_texts, seed=seed, image_size=image_size,
                               pretrain_steps=pretrain_steps, opts=opts)
    for split in SPLITS:
        uri = st.join(out_uri, split)
        extract_features(raw[split], uri, clip=out["clip"], sd=out["sd"], opts=opts, use_ray=use_ray,
                         rows_per_shard=256, progress=progress)
        out[split] = uri
    return out
