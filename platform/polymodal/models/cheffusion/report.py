"""The ChefFusion part of ``polymodal report``: generated images beside the real ones (a PNG
grid) and the recipes written from those images beside their references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polymodal import shards

GRID_NAME = "generations.png"


def image_grid(rows: list[dict[str, Any]], path: Path, cell: int = 128) -> None:
    """One row per example: the real image, the image drawn from its recipe (t2i) and, when the
    LM asked for one, the t2ti image; titles on top. Written as a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [("real", "real"), ("t2i: from the recipe", "t2i")]
    if any(r.get("t2ti") is not None for r in rows):
        cols.append(("t2ti: from the title", "t2ti"))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.2 * len(cols), 2.2 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j, (title, key) in enumerate(cols):
            ax = axes[i][j]
            ax.axis("off")
            if row.get(key) is not None:
                ax.imshow(row[key].resize((cell, cell)))
            if i == 0:
                ax.set_title(title, fontsize=8)
        axes[i][0].text(-0.05, 0.5, row["title"][:28], transform=axes[i][0].transAxes, rotation=90,
                        ha="right", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report_sections(cfg, out_dir: Path, n: int = 6) -> list[str]:
    """Generate for the first ``n`` rows of the test split (or val) with the run's best
    checkpoint; write the grid into ``out_dir``; return the Markdown section."""
    from polymodal.evaluate import load_model
    from polymodal.runs import find_checkpoint

    from .backbones import decode_image

    split = "test" if cfg.data.test else "val" if cfg.data.val else None
    if split is None:
        return []
    uri = getattr(cfg.data, split)
    _, _, model = load_model(find_checkpoint(cfg), cfg.storage)
    model.opts = cfg.storage
    batch = next(shards.iter_local_batches(uri, n, shuffle=False, shuffle_buffer=0, opts=cfg.storage))
    recipes = [str(r) for r in batch["recipe"]]
    titles = [str(t) for t in batch["title"]]
    seeds = list(range(len(recipes)))
    t2i = model.generate("t2i", texts=recipes, seeds=seeds)
    t2ti = model.generate("t2ti", texts=titles, seeds=seeds)
    import torch

    # a copy: the column may be a read-only view of the Arrow buffer
    i2t = model.generate("i2t", clip_image=torch.tensor(batch["clip_image"]))
    rows = [{"title": titles[i], "real": decode_image(bytes(batch["image"][i]), f"row {i}"),
             "t2i": t2i[i].images[0], "t2ti": (t2ti[i].images or [None])[0]} for i in range(len(recipes))]
    image_grid(rows, out_dir / GRID_NAME)
    c = model.cfg
    cap = (f"up to {c.eval_max_new_tokens} tokens" if c.eval_max_new_tokens is not None
           else "up to the longest reference of each batch plus EOS")
    sample = ("every row" if c.eval_image_share >= 1 else
              f"a seeded sample of {c.eval_image_share:g} of the rows (seed {c.eval_image_seed}; `clip_sim_rows` counts them)")
    lines = ["## Generations", "",
             f"Evaluation settings: recipes written greedily from each image, {cap}; `clip_sim` on {sample}, "
             f"{c.eval_steps} diffusion steps.", "",
             f"First {len(rows)} rows of `{uri}` ({split}), best checkpoint, {model.cfg.steps} diffusion steps, "
             f"guidance {model.cfg.guidance}, seeds 0..{len(rows) - 1}. Left: the real image; then the image drawn "
             "from the recipe (t2i) and, where the LM wrote [IMG1] after continuing the title, the t2ti image.", "",
             f"![generated images beside the real ones]({GRID_NAME})", "",
             "| id | reference | written from the image (i2t) | t2ti text |", "|---|---|---|---|"]
    for i in range(len(rows)):
        cells = [str(batch["id"][i]), recipes[i], i2t[i].text, t2ti[i].text]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return lines + [""]
