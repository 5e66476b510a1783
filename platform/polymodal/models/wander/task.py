"""Wander's tasks, plugged into the spine: classification, regression, retrieval, multilabel, and
``pretrain`` (self-supervised backbone pre-training, :mod:`polymodal.models.wander.pretrain`)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polymodal.cache import local_copy
from polymodal.metrics import retrieval_metrics
from polymodal.task import Batch, Task

from . import pretrain
from .backbone import image_normalization, init_input_projections, load_backbone
from .config import PRESETS, WanderConfig
from .data import LABEL, SYNTH_QUERY, TASKS
from .metrics import classification_metrics, multilabel_metrics, regression_metrics
from .model import WanderModel


class _WanderTask(Task):
    model_config_cls = WanderConfig
    presets = PRESETS
    head: ClassVar[str]

    def build_model(self, cfg: WanderConfig) -> nn.Module:
        path = local_copy(cfg.backbone)
        spec, encoders = load_backbone(path)
        model = WanderModel(spec, encoders, cfg, head=self.head, image_norm=image_normalization(path, spec))
        init_input_projections(model.proj, path, spec)  # pre-trained projections (wander.pretrain), if any
        return model

    def collate(self, columns: dict[str, np.ndarray]) -> Batch:
        out = {}
        for k, v in columns.items():
            t = torch.from_numpy(np.require(v, requirements=["C", "W"]))
            # images are stored as uint8 to keep shards small; the model reads floats in [0, 1] and
            # normalises them with the ViT's image processor (WanderModel.encode)
            out[k] = t.float().div_(255.0) if t.dtype == torch.uint8 else t
        return out

    @staticmethod
    def inputs(batch: Batch) -> Batch:
        return {k: v for k, v in batch.items() if k != LABEL}

    def synth(self, out_uri, *, seed=0, scale=1.0, storage=None, progress=True):
        from .synth import write_synthetic

        return write_synthetic(out_uri, self.head, seed=seed, scale=scale, opts=storage, progress=progress)

    def synth_overrides(self, out):
        return [*super().synth_overrides(out), f"model.backbone={out['backbone']}"]

    # serving: see polymodal.models.wander.serving
    def example_request(self, cfg, data_uri):
        from polymodal.shards import first_rows

        from .backbone import read_spec

        # only the backbone's modalities: a dataset may carry more (MSR-VTT's expert masks)
        names = set(read_spec(local_copy(cfg.model.backbone, cfg.storage)).names())
        row = first_rows(data_uri, 1, cfg.storage)
        return {"inputs": {name: values[0].tolist() for name, values in row.items() if name in names}}

    def request_model(self, cfg: WanderConfig):
        from . import serving

        return serving.request_model(cfg)

    def response_model(self, cfg: WanderConfig):
        from . import serving

        return serving.response_model(self.head)

    def serve_predict(self, model, requests):
        from . import serving

        return serving.serve_predict(model, requests)

    def adapter_key(self, cfg: WanderConfig):
        from . import serving

        return serving.adapter_key(cfg)


class ClassificationTask(_WanderTask):
    """UPMC-Food101-style: cross-entropy, accuracy and F1."""

    name = TASKS["classification"]
    head = "classification"
    primary_metric = "accuracy"
    fraction_metrics = frozenset({"accuracy", "f1_macro", "f1_weighted"})
    mode = "max"

    def loss(self, model, batch):
        logits = model(self.inputs(batch))["logits"].float()
        loss = F.cross_entropy(logits, batch[LABEL])
        return loss, {}

    def predict(self, model, batch):
        logits = model(self.inputs(batch))["logits"].float()
        return {"logits": logits.cpu().numpy(), LABEL: batch[LABEL].cpu().numpy()}

    def metrics(self, outputs):
        return classification_metrics(outputs["logits"], outputs[LABEL])


    def reference_params(self, cfg: WanderConfig) -> dict[str, int] | None:
        """Table 1's trainable counts (UPMC-Food101, ViT-B/16 + BERT-base, head included) for the
        paper's Wander at d = 64 and d = 128; see :func:`~polymodal.models.wander.model.table1_reference`."""
        from .model import table1_reference

        return table1_reference(cfg, local_copy(cfg.backbone))


class RegressionTask(_WanderTask):
    """CMU-MOSI-style sentiment in [-3, 3]: L1 loss (as MulT/MMSA train it), MAE, r, Acc-2/7."""

    name = TASKS["regression"]
    head = "regression"
    primary_metric = "mae"
    fraction_metrics = frozenset({"acc2", "acc2_nonzero", "f1", "f1_nonzero", "acc7"})
    mode = "min"

    def loss(self, model, batch):
        pred = model(self.inputs(batch))["pred"].float()
        return F.l1_loss(pred, batch[LABEL].float()), {}

    def predict(self, model, batch):
        pred = model(self.inputs(batch))["pred"].float()
        return {"pred": pred.cpu().numpy(), LABEL: batch[LABEL].float().cpu().numpy()}

    def metrics(self, outputs):
        return regression_metrics(outputs["pred"], outputs[LABEL])


class RetrievalTask(_WanderTask):
    """MSRVTT-style text-to-video retrieval: symmetric InfoNCE over in-batch pairs."""

    name = TASKS["retrieval"]
    head = "retrieval"
    primary_metric = "t2v_r1"
    fraction_metrics = frozenset(f"{d}_r{k}" for d in ("t2v", "v2t") for k in (1, 5, 10))
    mode = "max"

    def synth_overrides(self, out):
        return [*super().synth_overrides(out), f"model.query_modality={SYNTH_QUERY}"]

    def loss(self, model, batch):
        out = model(self.inputs(batch))
        v, t = out["video_emb"].float(), out["text_emb"].float()
        logits = out["logit_scale"].float() * t @ v.T  # (B_text, B_video)
        target = torch.arange(len(t), device=t.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)), {}

    def predict(self, model, batch):
        out = model(self.inputs(batch))
        return {"video_emb": out["video_emb"].float().cpu().numpy(),
                "text_emb": out["text_emb"].float().cpu().numpy()}

    def metrics(self, outputs):
        return retrieval_metrics(outputs["text_emb"] @ outputs["video_emb"].T)


class MultiLabelTask(_WanderTask):
    """IEMOCAP-style: K independent binary targets (``model.num_classes`` = K), one logit each.

    Loss: binary cross-entropy per target, averaged (Multimodal-Transformer trains two logits per
    emotion with softmax cross-entropy; one logit per target is the same model for the pair
    ``(0, logit)``). Metrics: :func:`~polymodal.models.wander.metrics.multilabel_metrics`,
    per-target accuracy and weighted F1 as its ``eval_iemocap`` reports them.
    """

    name = TASKS["multilabel"]
    head = "multilabel"
    primary_metric = "accuracy"
    # per-target metrics are named by index; 64 targets cover any multi-label set we import
    fraction_metrics = frozenset({"accuracy", "f1"} | {f"{m}_{k}" for m in ("acc", "f1") for k in range(64)})
    mode = "max"

    def synth_overrides(self, out):
        from .synth import MULTILABEL_TARGETS

        return [*super().synth_overrides(out), f"model.num_classes={MULTILABEL_TARGETS}"]

    def loss(self, model, batch):
        logits = model(self.inputs(batch))["logits"].float()  # (B, K)
        return F.binary_cross_entropy_with_logits(logits, batch[LABEL].float()), {}

    def predict(self, model, batch):
        logits = model(self.inputs(batch))["logits"].float()
        return {"logits": logits.cpu().numpy(), LABEL: batch[LABEL].cpu().numpy()}

    def metrics(self, outputs):
        return multilabel_metrics(outputs["logits"], outputs[LABEL])


class PretrainTask(Task):
    """Self-supervised pre-training of the backbone (masked frame modelling + cross-modal InfoNCE);
    see :mod:`polymodal.models.wander.pretrain`. Reads MMSA-format shards (the ``label`` column is
    ignored); :meth:`fit` exports the best checkpoint's backbone to ``<run>/backbone``. Not served."""

    name = "wander.pretrain"
    primary_metric = "loss"
    mode = "min"

    model_config_cls = pretrain.PretrainConfig
    presets = pretrain.PRESETS

    def build_model(self, cfg):
        return pretrain.build_model(cfg)

    collate = _WanderTask.collate

    def loss(self, model, batch):
        module = getattr(model, "module", model)  # the DeepSpeed engine wraps the model
        loss, mfm, nce = pretrain.objective(module.cfg, module.spec.names(), model(batch))
        return loss, {"mfm_mse": float(mfm.detach()), "nce": float(nce.detach())}

    def predict(self, model, batch):
        module = getattr(model, "module", model)
        out = model(batch, mask_seed=pretrain.EVAL_MASK_SEED)
        loss, _, _ = pretrain.objective(module.cfg, module.spec.names(), out)
        rows = {k: v.detach().float().cpu().numpy() for k, v in out.items()}
        rows["loss"] = np.full(len(rows["nce"]), float(loss), dtype=np.float32)  # the batch's objective, per row
        return rows

    def metrics(self, outputs):
        return pretrain.metrics(outputs)

    def synth(self, out_uri, *, seed=0, scale=1.0, storage=None, progress=True):
        return pretrain.write_pretrain_synthetic(out_uri, seed=seed, scale=scale, opts=storage, progress=progress)

    def synth_overrides(self, out):
        return [*super().synth_overrides(out), f"model.backbone={out['backbone']}"]

    def fit(self, cfg, *, progress=True, local=False):
        summary = super().fit(cfg, progress=progress, local=local)
        uri = pretrain.export_run_backbone(self, cfg)
        print(f"[polymodal] backbone exported: {uri} (use it as model.backbone of a Wander run)", flush=True)
        return {**summary, "backbone": uri}
