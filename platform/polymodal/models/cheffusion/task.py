"""ChefFusion's recipe task, plugged into the spine.

Training minimises ``w_recipe * l_r + w_img_token * l_p + w_gen * l_g`` (:meth:`.model.ChefFusion.forward`).
Evaluation writes a recipe for every image (i2t, greedy) and scores it against the reference
(``bleu``: SacreBLEU, ``rouge2``: ROUGE-2 F1), draws the first ``eval_images`` recipes of each
batch (t2i, ``eval_steps`` diffusion steps) and scores them by CLIP cosine similarity to the real
image (``clip_sim``), and reports the mean validation losses ``l_r``, ``l_p``, ``l_g`` and
``loss``. ``bleu`` and ``rouge2`` are fractions in [0, 1] (SacreBLEU's 0-100 score / 100),
``clip_sim`` the cosine in [-1, 1]. The primary metric is ``bleu``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from polymodal.task import Batch, Task

from .config import PRESETS, CheffusionConfig
from .data import TASK


class RecipeTask(Task):
    """Recipes from food images and food images from recipes (ChefFusion)."""

    name = TASK
    model_config_cls = CheffusionConfig
    presets = PRESETS
    primary_metric = "bleu"
    mode = "max"
    #: metrics that are fractions in [0, 1] (reports print them as %)
    fraction_metrics = frozenset({"bleu", "rouge2"})

    def build_model(self, cfg: CheffusionConfig) -> nn.Module:
        from .backbones import load_lm
        from .model import ChefFusion

        lm, tokenizer = load_lm(cfg.lm)
        return ChefFusion(cfg, lm, tokenizer)

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
        """Per row: ``id``, ``generated`` (i2t recipe), ``reference``, losses ``l_r`` / ``l_p`` /
        ``l_g`` and ``clip_sim`` (NaN for rows without a generated image)."""
        from polymodal.text import decode_texts

        from .backbones import image_to_png
        from .metrics import clip_similarity

        net = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
        cfg: CheffusionConfig = net.cfg
        losses = model(batch)
        refs = decode_texts(batch["recipe_bytes"])
        gens = net.generate("i2t", clip_image=batch["clip_image"])
        n = len(refs)
        sim = np.full(n, np.nan, dtype=np.float32)
        pngs = np.full(n, b"", dtype=object)
        k = min(cfg.eval_images, n)
        if k:
            images = net.render(net.sd_embeddings(refs[:k]), list(range(k)), steps=cfg.eval_steps)
            feats = net.clip_features(images).float().cpu().numpy()
            sim[:k] = clip_similarity(feats, batch["clip_image"][:k].float().cpu().numpy())
            pngs[:k] = [image_to_png(im) for im in images]
        return {"id": np.asarray(decode_texts(batch["id_bytes"]), dtype=object),
                "generated": np.asarray([g.text for g in gens], dtype=object),
                "reference": np.asarray(refs, dtype=object), "image_png": pngs, "clip_sim": sim,
                **{k: losses[k].float().cpu().numpy() for k in ("l_r", "l_p", "l_g")},
                "loss": np.full(n, float(losses["loss"]), dtype=np.float32)}

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        from .metrics import bleu, rouge2

        hyps, refs = list(outputs["generated"]), list(outputs["reference"])
        out = {"bleu": bleu(hyps, refs), "rouge2": rouge2(hyps, refs)}
        sims = outputs["clip_sim"][~np.isnan(outputs["clip_sim"])]
        if len(sims):
            out["clip_sim"] = float(sims.mean())
        out.update({k: float(np.mean(outputs[k])) for k in ("l_r", "l_p", "l_g", "loss")})
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

