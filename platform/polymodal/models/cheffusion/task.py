"""ChefFusion's recipe task, plugged into the spine.

Training minimises ``w_recipe * l_r + w_img_token * l_p + w_gen * l_g`` (:meth:`.model.ChefFusion.forward`).
Evaluation writes a whole recipe for every image (i2t, greedy, up to ``eval_max_new_tokens`` or,
unset, the longest reference of the batch plus EOS) and scores it against the reference (``bleu``:
SacreBLEU, ``rouge2``: ROUGE-2 F1); draws an image from the recipe of every row (or of a seeded
sample, ``eval_image_share`` / ``eval_image_seed``; t2i, ``eval_steps`` diffusion steps) and scores
it by CLIP cosine similarity to the real image (``clip_sim``, over ``clip_sim_rows`` rows); and
reports the mean validation losses ``l_r``, ``l_p``, ``l_g`` and ``loss`` and two length checks:
``gen_at_cap`` (share of recipes cut by the cap) and ``ref_over_cap`` (share of references longer
than the cap; 0 when the cap is derived). ``bleu`` and ``rouge2`` are fractions in [0, 1]
(SacreBLEU's 0-100 score / 100), ``clip_sim`` the cosine in [-1, 1]. The primary metric is ``bleu``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn

from polymodal.task import Batch, Task

from .config import PRESETS, CheffusionConfig
from .data import TASK


def lm_device() -> torch.device:
    """This process's current CUDA device when it has one (a Ray Train worker's own GPU), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def lm_dtype(name: str, device: torch.device) -> torch.dtype:
    """``model.lm_dtype`` on ``device``: ``auto`` is bf16 on CUDA and fp32 on CPU, as ``optim.precision: auto``."""
    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def eval_text_cap(cfg: CheffusionConfig, ref_tokens: np.ndarray) -> int:
    """Text tokens an evaluation recipe may take: ``model.eval_max_new_tokens``, or when unset
    the longest reference of the batch (``ref_tokens``: tokens per reference) plus its EOS, so
    a whole recipe can be written (a row stops at its own EOS well before, as a rule)."""
    if cfg.eval_max_new_tokens is not None:
        return int(cfg.eval_max_new_tokens)
    return int(ref_tokens.max(initial=0)) + 1


def _row_hash(seed: int, rid: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{rid}".encode(), digest_size=8).digest(), "little")


def clip_sim_rows(ids: list[str], share: float, seed: int) -> tuple[list[int], list[int]]:
    """(rows of the batch that get an image for ``clip_sim``, each one's diffusion seed).

    Every row when ``share`` is 1; otherwise row ``i`` is in when a hash of ``(seed, ids[i])``,
    read as a number in [0, 1), is below ``share``: a seeded sample of about ``share`` of the
    split that picks the same rows, with the same noise seeds, however the split is batched."""
    hashes = [_row_hash(seed, rid) for rid in ids]
    rows = [i for i, h in enumerate(hashes) if share >= 1 or h / 2.0**64 < share]
    return rows, [hashes[i] % 2**31 for i in rows]


class RecipeTask(Task):
    """Recipes from food images and food images from recipes (ChefFusion)."""

    name = TASK
    model_config_cls = CheffusionConfig
    presets = PRESETS
    primary_metric = "bleu"
    mode = "max"
    #: metrics that are fractions in [0, 1] (reports print them as %)
    fraction_metrics = frozenset({"bleu", "rouge2", "gen_at_cap", "ref_over_cap"})

    def build_model(self, cfg: CheffusionConfig) -> nn.Module:
        """The frozen LM loads straight into ``model.lm_dtype`` on this process's device (the
        worker's GPU, which the train loop has made current, when there is one); the small
        trainable parts join it there (batches on the host are moved in as they are used)."""
        from .backbones import load_lm
        from .model import ChefFusion

        device = lm_device()
        lm, tokenizer = load_lm(cfg.lm, dtype=lm_dtype(cfg.lm_dtype, device), device=device)
        return ChefFusion(cfg, lm, tokenizer).to(device)

    def collate(self, columns: dict[str, np.ndarray]) -> Batch:
        if "clip_image" not in columns or "sd_target" not in columns:
            raise ValueError("ChefFusion trains on feature shards (`clip_image`, `sd_target`); this dataset has "
                             "raw rows only: run `polymodal data features` on it first")
        from polymodal.text import encode_texts

        return {"recipe_bytes": torch.from_numpy(encode_texts(columns["recipe"], max_bytes=4096)),
                "id_bytes": torch.from_numpy(encode_texts(columns["id"])),
                "clip_image": torch.from_numpy(np.require(columns["clip_image"], np.float32, ["C", "W"])),
                "sd_target": torch.from_numpy(np.require(columns["sd_target"], requirements=["C", "W"]))}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(batch)
        return out["loss"], {k: float(out[k].detach().mean()) for k in ("l_r", "l_p", "l_g")}

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch) -> dict[str, np.ndarray]:
        """Per row: ``id``, ``generated`` (i2t recipe, greedy, up to :func:`eval_text_cap` tokens),
        ``reference``, losses ``l_r`` / ``l_p`` / ``l_g``, ``clip_sim`` (NaN for rows outside the
        :func:`clip_sim_rows` sample), ``gen_at_cap`` (the recipe hit the cap without EOS) and
        ``ref_over_cap`` (the reference is longer than the cap)."""
        from polymodal.text import decode_texts

        from .backbones import image_to_png
        from .metrics import clip_similarity

        net = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
        cfg: CheffusionConfig = net.cfg
        losses = model(batch)
        refs = decode_texts(batch["recipe_bytes"])
        ids = decode_texts(batch["id_bytes"])
        ref_tokens = np.asarray(net.text_tokens(refs))
        cap = eval_text_cap(cfg, ref_tokens)
        gens = net.generate("i2t", clip_image=batch["clip_image"], max_new_tokens=cap)
        n = len(refs)
        sim = np.full(n, np.nan, dtype=np.float32)
        pngs = np.full(n, b"", dtype=object)
        rows, seeds = clip_sim_rows(ids, cfg.eval_image_share, cfg.eval_image_seed)
        if rows:
            images = net.render(net.sd_embeddings([refs[i] for i in rows]), seeds, steps=cfg.eval_steps)
            feats = net.clip_features(images).float().cpu().numpy()
            sim[rows] = clip_similarity(feats, batch["clip_image"][rows].float().cpu().numpy())
            for i, im in zip(rows, images):
                pngs[i] = image_to_png(im)
        return {"id": np.asarray(ids, dtype=object),
                "generated": np.asarray([g.text for g in gens], dtype=object),
                "reference": np.asarray(refs, dtype=object), "image_png": pngs, "clip_sim": sim,
                "gen_at_cap": np.asarray([not g.stopped for g in gens], dtype=np.float32),
                "ref_over_cap": (ref_tokens + 1 > cap).astype(np.float32),
                **{k: losses[k].float().cpu().numpy() for k in ("l_r", "l_p", "l_g")},
                "loss": np.full(n, float(losses["loss"]), dtype=np.float32)}

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """``bleu``, ``rouge2``, ``clip_sim`` (mean over the rows that got an image) and
        ``clip_sim_rows`` (how many), the losses, and the length checks ``gen_at_cap`` /
        ``ref_over_cap`` (shares of rows)."""
        from .metrics import bleu, rouge2

        hyps, refs = list(outputs["generated"]), list(outputs["reference"])
        out = {"bleu": bleu(hyps, refs), "rouge2": rouge2(hyps, refs)}
        sims = outputs["clip_sim"][~np.isnan(outputs["clip_sim"])]
        if len(sims):
            out["clip_sim"] = float(sims.mean())
        out["clip_sim_rows"] = float(len(sims))
        out.update({k: float(np.mean(outputs[k])) for k in ("l_r", "l_p", "l_g", "loss", "gen_at_cap", "ref_over_cap")})
        return out

    def prediction_rows(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """One row per recipe: ``id``, ``generated``, ``reference`` (and ``clip_sim`` where an image was drawn)."""
        rows = []
        for i, rid in enumerate(outputs["id"]):
            row = {"id": str(rid), "generated": str(outputs["generated"][i]), "reference": str(outputs["reference"][i])}
            if not np.isnan(outputs["clip_sim"][i]):
                row["clip_sim"] = float(outputs["clip_sim"][i])
            rows.append(row)
        return rows

    def report_sections(self, cfg, out_dir) -> list[str]:
        from .report import report_sections

        return report_sections(cfg, out_dir)

    # -- serving (see .serving) ------------------------------------------------------------------

    def request_model(self, cfg: CheffusionConfig):
        from .serving import ChefRequest

        return ChefRequest

    def response_model(self, cfg: CheffusionConfig):
        from .serving import ChefResponse

        return ChefResponse

    def serve_predict(self, model: nn.Module, requests):
        from .serving import serve_predict

        return serve_predict(model, requests)

    def example_request(self, cfg, data_uri):
        """The first dish's image, asking for its recipe."""
        import base64

        from polymodal.shards import first_rows

        return {"image": base64.b64encode(bytes(first_rows(data_uri, 1, cfg.storage)["image"][0])).decode()}

    def serve_media(self, response) -> tuple[bytes, str] | None:
        from .serving import media

        return media(response)

    def adapter_key(self, cfg: CheffusionConfig) -> str:
        # adapters trained on the same frozen LM share it (and the CLIP / SD loaded for generation)
        return f"cheffusion:{cfg.lm}"

    def synth_overrides(self, out):
        return [*super().synth_overrides(out), *(f"model.{k}={out[k]}" for k in ("lm", "clip", "sd"))]

    def synth(self, out_uri, *, seed=0, scale=1.0, storage=None, progress=True) -> dict[str, str]:
        """Synthetic dishes (see :mod:`.synth`): raw and feature splits plus tiny backbones."""
        from .synth import write_synthetic

        return write_synthetic(out_uri, seed=seed, scale=scale, opts=storage, progress=progress)

