"""Serving hooks for Wander: request/response schemas and batched, shape-checked inference.

A request carries ONE example, every modality of the backbone under ``inputs``::

    {"inputs": {"m0": [[...32 floats], ... 8 rows], "m1": [[...], ...]}}    # embeds: seq_len x feature_dim
    {"inputs": {"text": [101, 2023, ...]}}                                # input_ids: seq_len ints
    {"inputs": {"image": [[[...W], ...H], ...C]}}                         # pixel_values: C x H x W floats in [0, 1]

Pydantic checks the JSON types; :func:`serve_predict` checks shapes against the model and
raises :class:`~polymodal.errors.ServeInputError` naming ``inputs.<modality>``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, create_model
from torch import nn

from polymodal.cache import local_copy
from polymodal.errors import ServeInputError

from .backbone import BackboneSpec, ModalitySpec, encoder_source, read_spec
from .config import WanderConfig


class ClassificationResponse(BaseModel):
    label: int = Field(..., description="argmax class")
    probabilities: list[float] = Field(..., description="softmax over num_classes")


class MultiLabelResponse(BaseModel):
    labels: list[int] = Field(..., description="0/1 per target: sigmoid(logit) > 0.5")
    probabilities: list[float] = Field(..., description="sigmoid of each target's logit")


class RegressionResponse(BaseModel):
    score: float


class RetrievalResponse(BaseModel):
    video_embedding: list[float] | None = Field(None, description="L2-normalised, embed_dim")
    text_embedding: list[float] | None = Field(None, description="L2-normalised, embed_dim")


RESPONSES: dict[str, type[BaseModel]] = {
    "classification": ClassificationResponse, "regression": RegressionResponse, "retrieval": RetrievalResponse,
    "multilabel": MultiLabelResponse}


def _encoder_config(backbone: str, mod: ModalitySpec) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(encoder_source(backbone, mod))


def expected_shape(mod: ModalitySpec, enc_conf: Any) -> tuple[int, ...]:
    """Shape of ONE example of ``mod`` (no batch axis)."""
    if mod.input == "embeds":
        return (mod.seq_len, mod.feature_dim or int(enc_conf.hidden_size))
    if mod.input == "input_ids":
        return (mod.seq_len,)
    size = enc_conf.image_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (int(enc_conf.num_channels), int(h), int(w))


def request_model(cfg: WanderConfig) -> type[BaseModel]:
    """``{"inputs": {modality: nested list}}`` with extra keys forbidden at both levels."""
    path = local_copy(cfg.backbone)
    spec = read_spec(path)
    fields: dict[str, Any] = {}
    for i, mod in enumerate(spec.modalities):
        shape = " x ".join(map(str, expected_shape(mod, _encoder_config(path, mod))))
        typ: Any = {"embeds": list[list[float]], "input_ids": list[int],
                    "pixel_values": list[list[list[float]]]}[mod.input]
        # python names are positional so a modality called e.g. "json" cannot shadow a BaseModel
        # attribute; the JSON key (alias) is the modality name
        fields[f"modality_{i}"] = (typ, Field(..., alias=mod.name, description=f"{mod.input}: {shape}"))
    inputs = create_model("WanderInputs", __config__=ConfigDict(extra="forbid"), **fields)
    return create_model("WanderRequest", __config__=ConfigDict(extra="forbid"),
                        inputs=(inputs, Field(..., description="one example: every backbone modality")))


def response_model(head: str) -> type[BaseModel]:
    return RESPONSES[head]


def _shape_of(value: Any, depth: int) -> tuple[int, ...] | None:
    """Shape of a nested list of the given depth, or None when ragged."""
    if depth == 1:
        return (len(value),)
    inner = {_shape_of(v, depth - 1) for v in value} if value else {(0,) * (depth - 1)}
    if len(inner) != 1 or None in inner:
        return None
    return (len(value), *inner.pop())


def _fmt(shape: tuple[int, ...]) -> str:
    return " x ".join(map(str, shape))


def _to_array(mod: ModalitySpec, value: Any, want: tuple[int, ...], vocab: int | None) -> np.ndarray:
    field = f"inputs.{mod.name}"
    got = _shape_of(value, len(want))
    if got is None:
        raise ServeInputError(field, f"ragged nested lists; expected a rectangular {_fmt(want)} array")
    if got != want:
        raise ServeInputError(field, f"expected shape {_fmt(want)} ({mod.input}), got {_fmt(got)}")
    if mod.input == "input_ids":
        arr = np.asarray(value, dtype=np.int64)
        if vocab is not None and (arr.min() < 0 or arr.max() >= vocab):
            raise ServeInputError(field, f"token ids must be in 0..{vocab - 1}, got min {arr.min()} max {arr.max()}")
        return arr
    arr = np.asarray(value, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ServeInputError(field, "values must be finite (no NaN or Infinity)")
    return arr


def _spec_shapes(model: nn.Module) -> list[tuple[ModalitySpec, tuple[int, ...], int | None]]:
    """(modality, example shape, vocab size or None) from the live model's encoders."""
    spec: BackboneSpec = model.spec
    out = []
    for mod in spec.modalities:
        conf = model.encoders[mod.name].config
        vocab = int(conf.vocab_size) if mod.input == "input_ids" else None
        out.append((mod, expected_shape(mod, conf), vocab))
    return out


@torch.no_grad()
def serve_predict(model: nn.Module, requests: list[BaseModel]) -> list[BaseModel]:
    """N validated requests -> N responses; one forward pass over the stacked batch."""
    if not requests:
        return []
    shapes = _spec_shapes(model)
    columns: dict[str, list[np.ndarray]] = {mod.name: [] for mod, _, _ in shapes}
    for req in requests:
        inputs = req.inputs
        by_alias = {f.alias: getattr(inputs, name) for name, f in type(inputs).model_fields.items()}
        for mod, want, vocab in shapes:
            if mod.name not in by_alias:
                raise ServeInputError(f"inputs.{mod.name}", "missing: the model needs every backbone modality "
                                                            f"({', '.join(m.name for m, _, _ in shapes)})")
            columns[mod.name].append(_to_array(mod, by_alias[mod.name], want, vocab))
    device = next(model.parameters()).device
    batch = {n: torch.from_numpy(np.stack(v)).to(device) for n, v in columns.items()}  # (B, *example shape)
    out = model(batch)
    kind = model.head_kind
    for name, t in out.items():
        bad = ~torch.isfinite(t.float().reshape(len(requests), -1)).all(dim=1) if t.dim() else None
        if bad is not None and bool(bad.any()):
            # huge but finite inputs can overflow; JSON cannot carry NaN/Infinity back
            raise ServeInputError("inputs", f"the model output {name!r} is not finite for this input; "
                                            "scale the features to the range the model was trained on")
    if kind == "classification":
        probs = torch.softmax(out["logits"].float(), dim=-1).cpu().numpy()  # (B, C)
        return [ClassificationResponse(label=int(p.argmax()), probabilities=p.tolist()) for p in probs]
    if kind == "multilabel":
        probs = torch.sigmoid(out["logits"].float()).cpu().numpy()  # (B, K)
        return [MultiLabelResponse(labels=(p > 0.5).astype(int).tolist(), probabilities=p.tolist()) for p in probs]
    if kind == "regression":
        return [RegressionResponse(score=float(s)) for s in out["pred"].float().cpu().numpy()]  # (B,)
    video = out["video_emb"].float().cpu().numpy()  # (B, E)
    text = out["text_emb"].float().cpu().numpy()    # (B, E)
    return [RetrievalResponse(video_embedding=v.tolist(), text_embedding=t.tolist()) for v, t in zip(video, text)]


def adapter_key(cfg: WanderConfig) -> str | None:
    """Models share the frozen encoders unless the method rewrites or trains them.

    ``lora`` injects low-rank layers into the encoders and ``full`` trains them, so their
    encoders are specific to one checkpoint; every other method leaves them untouched.
    """
    if cfg.method in ("lora", "full"):
        return None
    return f"wander-backbone:{cfg.backbone}"
