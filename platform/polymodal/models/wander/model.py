"""WanderModel: a frozen multi-encoder backbone, a parameter-efficient method, and a task head.

Data flow for one batch (M modalities, modality m has l_m tokens of width D_m)::

    inputs[m] --(input projection, embeds only;                          # (B, l_m, D_m)
                 image processor's mean/std, pixel_values only)--> embeddings_m
    mask_m = input_ids != pad_token_id (input_ids only; else all real)     # (B, l_m)
    for k in 0..max depth - 1:                                             # lock-step
        h_m = block_k^m(h_m, mask_m) for every m                           # (B, l_m, D_m)
        method wander:  [h_m] = WanderAdapter_k([h_m for fused m], masks)  # cross-modal
        method houlsby: h_m = HoulsbyAdapter_k^m(h_m)                      # per modality
    pooled_m = first token (or mean over real tokens) of final h_m          # (B, D_m)
    head(concat_m pooled_m)

``lora`` injects LoRA into each encoder's query/value projections (peft), ``full`` trains
everything, ``none`` trains only the head (and input projections): the no-fusion baseline.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.models.wander.adapter import HoulsbyAdapter, WanderAdapter
from polymodal.models.wander.backbone import (BackboneSpec, ModalitySpec, encoder_source, finalize, hidden_size,
                                              is_vit, layers, run_embeddings, run_layer, token_mask)
from polymodal.models.wander.config import WanderConfig
from polymodal.models.wander.data import HEADS, HeadKind


def _activation(encoder: nn.Module) -> nn.Module:
    """The encoder's own hidden activation as a fresh module (e.g. GELU for BERT/ViT)."""
    from transformers.activations import ACT2FN

    act = encoder.config.hidden_act
    return ACT2FN[act] if isinstance(act, str) else act


def _lora_targets(encoder: nn.Module) -> tuple[list[str], str]:
    """(query/value module names, layer-list name) for the encoder family."""
    if is_vit(encoder):
        return ["q_proj", "v_proj"], "layers"
    return ["query", "value"], "layer"


def _adapter_layers(cfg: WanderConfig, depths: dict[str, int], adapted: list[str]) -> list[int]:
    """The 0-based blocks followed by an adapter; each must exist in every adapted encoder."""
    if not adapted:
        return []
    depth = min(depths[n] for n in adapted)
    if cfg.adapter_layers is None:
        return list(range(depth))  # "every layer": every block all adapted encoders have
    bad = [k for k in cfg.adapter_layers if not -depth <= k < depth]
    if bad:
        raise ValueError(f"adapter_layers {bad} out of range: the adapted encoders ({', '.join(adapted)}) have "
                         f"{depth} layers, so allowed values are 0..{depth - 1} or -{depth}..-1 (from the last); "
                         "or use null for all layers")
    ks = [k % depth for k in cfg.adapter_layers]  # -1 -> depth - 1
    if len(set(ks)) != len(ks):
        raise ValueError(f"adapter_layers {list(cfg.adapter_layers)} name a layer twice (as {ks} of {depth}); "
                         "list each layer once")
    return sorted(ks)


def _adapted_modalities(spec: BackboneSpec, cfg: WanderConfig, head: str) -> list[str]:
    """Modalities that get adapters: all, except the retrieval query side under wander."""
    names = spec.names()
    if cfg.method == "wander" and head == "retrieval":
        return [n for n in names if n != cfg.query_modality]
    return names


def _check_head_cfg(spec: BackboneSpec, cfg: WanderConfig, head: str) -> None:
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if head == "retrieval":
        if cfg.query_modality not in spec.names():
            raise ValueError(f"retrieval needs model.query_modality set to one of {spec.names()} (the text side), "
                             f"got {cfg.query_modality!r}")
        if len(spec.modalities) < 2:
            raise ValueError("retrieval needs at least two modalities: the query and one or more on the video side")
    elif cfg.query_modality is not None:
        raise ValueError(f"query_modality={cfg.query_modality!r} only applies to the retrieval head, not {head!r}; "
                         "remove it from the model section")


class WanderModel(nn.Module):
    """See the module docstring. ``forward(inputs)`` returns

    - classification: ``{"logits": (B, num_classes)}``
    - multilabel: ``{"logits": (B, num_classes)}``, one logit per binary target
    - regression: ``{"pred": (B,)}``
    - retrieval: ``{"video_emb": (B, E), "text_emb": (B, E), "logit_scale": ()}``; embeddings are
      L2-normalised and ``logit_scale`` is the multiplicative scale exp(param) (param initialised
      to log(1/0.07), the scale clamped at 100 as in CLIP), so similarity logits are
      ``logit_scale * video_emb @ text_emb.T``.
    """

    def __init__(self, backbone_spec: BackboneSpec, encoders: nn.ModuleDict, cfg: WanderConfig, head: HeadKind,
                 image_norm: dict[str, tuple[float, list[float], list[float]]] | None = None):
        super().__init__()
        spec = backbone_spec
        _check_head_cfg(spec, cfg, head)
        names = spec.names()
        if sorted(encoders.keys()) != sorted(names):
            raise ValueError(f"encoders {sorted(encoders.keys())} do not match the backbone's modalities {names}")
        self.spec, self.cfg, self.head_kind = spec, cfg, head
        self.encoders = encoders
        self.dims = {n: hidden_size(encoders[n]) for n in names}
        self.depths = {n: len(layers(encoders[n])) for n in names}
        for mod in spec.modalities:
            if mod.input in ("embeds", "input_ids"):
                max_pos = getattr(encoders[mod.name].config, "max_position_embeddings", None)
                if max_pos is not None and mod.seq_len > max_pos:
                    raise ValueError(f"modality {mod.name!r}: seq_len {mod.seq_len} exceeds the encoder's "
                                     f"max_position_embeddings {max_pos}; shorten the sequences")

        # Trainable input projections: embeds whose width differs from the encoder's hidden size.
        self.proj = nn.ModuleDict({
            m.name: nn.Linear(m.feature_dim, self.dims[m.name]) for m in spec.modalities
            if m.input == "embeds" and m.feature_dim is not None and m.feature_dim != self.dims[m.name]})

        # Image normalisation of each pixel_values modality (its image processor's statistics):
        # pixels in [0, 1] -> (x * scale - mean) / std; buffers, so they follow the model's device.
        self.image_norm = sorted((image_norm or {}).keys())
        for name, (scale, mean, std) in (image_norm or {}).items():
            if spec.get(name).input != "pixel_values":
                raise ValueError(f"image_norm names modality {name!r}, whose input is not pixel_values")
            self.register_buffer(f"_pixel_mean_{name}", torch.tensor(mean).view(1, -1, 1, 1) / scale,
                                 persistent=False)
            self.register_buffer(f"_pixel_std_{name}", torch.tensor(std).view(1, -1, 1, 1) / scale,
                                 persistent=False)

        # Freeze the backbone (everything trains under "full").
        for p in self.encoders.parameters():
            p.requires_grad = cfg.method == "full"

        self.adapted = _adapted_modalities(spec, cfg, head)
        self.wander = nn.ModuleDict()   # str(k) -> WanderAdapter over self.adapted
        self.houlsby = nn.ModuleDict()  # str(k) -> ModuleDict(name -> HoulsbyAdapter)
        self.adapter_layers: list[int] = []
        if cfg.method == "wander":
            self.adapter_layers = _adapter_layers(cfg, self.depths, self.adapted)
            dims = [self.dims[n] for n in self.adapted]
            lens = [spec.get(n).seq_len for n in self.adapted]
            for k in self.adapter_layers:
                acts = [_activation(encoders[n]) for n in self.adapted]
                self.wander[str(k)] = WanderAdapter(dims, lens, cfg.down_dim, cfg.rank_h, cfg.rank_t, acts,
                                                    rank_mode=cfg.rank_mode, dropout=cfg.dropout,
                                                    fusion=cfg.fusion, nonlinearity=cfg.nonlinearity,
                                                    residual=cfg.residual)
        elif cfg.method == "houlsby":
            self.adapter_layers = _adapter_layers(cfg, self.depths, self.adapted)
            for k in self.adapter_layers:
                self.houlsby[str(k)] = nn.ModuleDict({
                    n: HoulsbyAdapter(self.dims[n], cfg.houlsby_dim, _activation(encoders[n]), cfg.dropout)
                    for n in self.adapted})
        elif cfg.method == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            self.adapter_layers = _adapter_layers(cfg, self.depths, self.adapted)
            for n in self.adapted:
                targets, pattern = _lora_targets(encoders[n])
                lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.dropout,
                                  target_modules=targets, layers_to_transform=self.adapter_layers,
                                  layers_pattern=pattern)
                inject_adapter_in_model(lcfg, encoders[n])
                for pname, p in encoders[n].named_parameters():
                    p.requires_grad = "lora_" in pname  # base weights stay frozen

        # Head.
        self.dropout = nn.Dropout(cfg.dropout)
        total = sum(self.dims.values())
        if head == "retrieval":
            q = cfg.query_modality
            self.video_proj = nn.Linear(total - self.dims[q], cfg.embed_dim)
            self.text_proj = nn.Linear(self.dims[q], cfg.embed_dim)
            self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))  # (1,): see WanderAdapter.gate
        else:
            out = cfg.num_classes if head in ("classification", "multilabel") else 1
            if cfg.head_hidden == 0:
                self.head = nn.Linear(total, out)
            else:
                self.head = nn.Sequential(nn.Linear(total, cfg.head_hidden), nn.GELU(), nn.Dropout(cfg.dropout),
                                          nn.Linear(cfg.head_hidden, out))

    # ------------------------------------------------------------------ encoding

    def _check_input(self, mod: ModalitySpec, x: Tensor) -> None:
        enc = self.encoders[mod.name]
        if mod.input == "embeds":
            width = mod.feature_dim or self.dims[mod.name]
            if x.dim() != 3 or x.shape[1] != mod.seq_len or x.shape[2] != width or not x.is_floating_point():
                raise ValueError(f"modality {mod.name!r} (embeds) must be a float tensor (B, {mod.seq_len}, {width}), "
                                 f"got {x.dtype} {tuple(x.shape)}")
        elif mod.input == "input_ids":
            if x.dim() != 2 or x.shape[1] != mod.seq_len or x.is_floating_point():
                raise ValueError(f"modality {mod.name!r} (input_ids) must be an int64 tensor (B, {mod.seq_len}), "
                                 f"got {x.dtype} {tuple(x.shape)}")
        else:
            ch = enc.config.num_channels
            if x.dim() != 4 or x.shape[1] != ch:
                raise ValueError(f"modality {mod.name!r} (pixel_values) must be (B, {ch}, H, W), got {tuple(x.shape)}")

    def encode(self, inputs: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
        """Final hidden states per modality, name -> (B, l_m, D_m), and each modality's token mask,
        name -> (B, l_m) bool (True at real tokens) or None (every token real)."""
        if not isinstance(inputs, dict):
            raise ValueError(f"inputs must be a dict modality name -> tensor, got {type(inputs).__name__}")
        hs: dict[str, Tensor] = {}
        masks: dict[str, Tensor | None] = {}
        batch = None
        for mod in self.spec.modalities:
            if mod.name not in inputs:
                raise ValueError(f"input for modality {mod.name!r} is missing; the batch has {sorted(inputs)}, "
                                 f"the model needs {self.spec.names()}")
            x = inputs[mod.name]
            self._check_input(mod, x)
            if batch is None:
                batch = x.shape[0]
            elif x.shape[0] != batch:
                raise ValueError(f"modality {mod.name!r} has batch size {x.shape[0]}, others have {batch}")
            masks[mod.name] = token_mask(self.encoders[mod.name], mod.input, x)
            if mod.name in self.proj:
                x = self.proj[mod.name](x)                             # (B, l, D)
            if mod.name in self.image_norm:                            # the ViT's own processor statistics
                x = (x - getattr(self, f"_pixel_mean_{mod.name}")) / getattr(self, f"_pixel_std_{mod.name}")
            h = run_embeddings(self.encoders[mod.name], mod.input, x)  # (B, l, D)
            if h.shape[1] != mod.seq_len:
                raise ValueError(f"modality {mod.name!r}: the encoder produced {h.shape[1]} tokens but backbone.json "
                                 f"says seq_len={mod.seq_len}; fix seq_len (ViT: patches + 1) or the image size")
            hs[mod.name] = h
        adapter_at = set(self.adapter_layers)
        for k in range(max(self.depths.values())):
            for n, enc in self.encoders.items():
                if k < self.depths[n]:
                    hs[n] = run_layer(enc, k, hs[n], masks[n])
            if k in adapter_at and self.cfg.method == "wander":
                fused = self.wander[str(k)]([hs[n] for n in self.adapted], [masks[n] for n in self.adapted])
                hs.update(zip(self.adapted, fused))
            elif k in adapter_at and self.cfg.method == "houlsby":
                for n, ad in self.houlsby[str(k)].items():
                    hs[n] = ad(hs[n])
        return {n: finalize(self.encoders[n], h) for n, h in hs.items()}, masks

    def pool(self, hs: dict[str, Tensor], masks: dict[str, Tensor | None] | None = None) -> dict[str, Tensor]:
        """name -> (B, D_m): first token, or the mean over the real (unpadded) tokens."""
        if self.cfg.pooling == "mean":
            out = {}
            for n, h in hs.items():
                mask = (masks or {}).get(n)
                if mask is None:
                    out[n] = h.mean(dim=1)
                else:
                    w = mask.unsqueeze(-1).to(h.dtype)                              # (B, l, 1)
                    out[n] = (h * w).sum(1) / w.sum(1).clamp(min=1)
            return out
        return {n: h[:, 0] for n, h in hs.items()}

    def features(self, inputs: dict[str, Tensor]) -> Tensor:
        """Pooled features of all modalities, concatenated in backbone order: (B, sum D_m)."""
        pooled = self.pool(*self.encode(inputs))
        return torch.cat([pooled[n] for n in self.spec.names()], dim=-1)

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        pooled = self.pool(*self.encode(inputs))
        if self.head_kind == "retrieval":
            q = self.cfg.query_modality
            video = torch.cat([pooled[n] for n in self.spec.names() if n != q], dim=-1)  # (B, sum D)
            video_emb = F.normalize(self.video_proj(self.dropout(video)), dim=-1)       # (B, E)
            text_emb = F.normalize(self.text_proj(self.dropout(pooled[q])), dim=-1)     # (B, E)
            return {"video_emb": video_emb, "text_emb": text_emb,
                    "logit_scale": self.logit_scale.exp().clamp(max=100.0).squeeze(0)}
        x = self.dropout(torch.cat([pooled[n] for n in self.spec.names()], dim=-1))  # (B, sum D)
        out = self.head(x)                                                            # (B, C) or (B, 1)
        if self.head_kind == "regression":
            return {"pred": out.squeeze(-1)}
        return {"logits": out}


# --------------------------------------------------------------------------- parameter counts


def trainable_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _full_encoder_count(conf) -> int:
    """Every parameter of a pooler-less BERT or ViT encoder, from its config alone."""
    D, N, I = conf.hidden_size, conf.num_hidden_layers, conf.intermediate_size
    ln = 2 * D
    if conf.model_type == "vit":
        qkv_bias = getattr(conf, "qkv_bias", True)
        attn = 3 * (D * D + (D if qkv_bias else 0)) + (D * D + D)
        block = 2 * ln + attn + (D * I + I) + (I * D + D)
        patches = (conf.image_size // conf.patch_size) ** 2
        emb = D + (patches + 1) * D + (conf.num_channels * conf.patch_size ** 2 * D + D)  # cls, pos, patch conv
        return emb + N * block + ln  # + final layernorm
    if conf.model_type == "bert":
        attn = 4 * (D * D + D) + ln           # q, k, v, output dense + its LayerNorm
        block = attn + (D * I + I) + (I * D + D) + ln
        emb = (conf.vocab_size + conf.max_position_embeddings + conf.type_vocab_size) * D + ln
        return emb + N * block
    raise ValueError(f"closed-form count knows model types 'bert' and 'vit', got {conf.model_type!r}")


def closed_form_trainable_count(spec: BackboneSpec, cfg: WanderConfig, head: HeadKind) -> int:
    """Trainable parameters from the hyper-parameters and encoder configs alone (no model built).

    An independent check of :func:`trainable_parameter_count`; reads each encoder's config.json
    from ``cfg.backbone``.
    """
    from transformers import AutoConfig

    _check_head_cfg(spec, cfg, head)
    confs = {m.name: AutoConfig.from_pretrained(encoder_source(cfg.backbone, m)) for m in spec.modalities}
    D = {n: c.hidden_size for n, c in confs.items()}
    depth = {n: c.num_hidden_layers for n, c in confs.items()}
    total = 0
    for m in spec.modalities:  # input projections
        if m.input == "embeds" and m.feature_dim is not None and m.feature_dim != D[m.name]:
            total += m.feature_dim * D[m.name] + D[m.name]
    if head == "retrieval":
        q, E = cfg.query_modality, cfg.embed_dim
        total += (sum(D.values()) - D[q]) * E + E + D[q] * E + E + 1
    else:
        C = cfg.num_classes if head in ("classification", "multilabel") else 1
        fin = sum(D.values())
        h = cfg.head_hidden
        total += fin * C + C if h == 0 else fin * h + h + h * C + C
    adapted = _adapted_modalities(spec, cfg, head)
    n_layers = len(_adapter_layers(cfg, depth, adapted)) if cfg.method in ("wander", "houlsby", "lora") else 0
    if cfg.method == "wander":
        d, L = cfg.down_dim, sum(spec.get(n).seq_len for n in adapted)
        Dw = D[adapted[0]]
        per = sum(Dw * d + d for _ in adapted)                                  # Down_m
        if cfg.fusion == "sequence":                                            # CP factors
            per += sum(cfg.rank_h * Dw * d + cfg.rank_t * L * spec.get(n).seq_len for n in adapted)
        elif cfg.fusion == "outer":                                             # full W_t, W_h
            per += L * math.prod(spec.get(n).seq_len for n in adapted) + Dw * d ** len(adapted)
        else:                                                                   # vector fusion factors
            per += len(adapted) * cfg.rank_h * Dw * d
        total += n_layers * (per + 1)                                           # + gate
    elif cfg.method == "houlsby":
        b = cfg.houlsby_dim
        total += n_layers * sum(D[n] * b + b + b * D[n] + D[n] for n in adapted)
    elif cfg.method == "lora":
        # query and value, each A (r, D) + B (D, r), no bias
        total += n_layers * sum(2 * 2 * cfg.lora_r * D[n] for n in adapted)
    elif cfg.method == "full":
        total += sum(_full_encoder_count(c) for c in confs.values())
    return total


#: Table 1 of the paper (UPMC-Food101 on ViT-B/16 + BERT-base): Wander's trainable parameters,
#: head included, per down-projection width d
TABLE1_TRAINABLE = {64: 3_100_000, 128: 4_900_000}


def is_vit_b16_bert_base(spec: BackboneSpec, confs: dict) -> bool:
    """Whether the backbone is Table 1's: a ViT-B/16 at 224 px (197 tokens) and a BERT-base text encoder.

    ``confs``: modality name -> the encoder's transformers config.
    """
    kinds = sorted((m.input, confs[m.name].model_type) for m in spec.modalities)
    if kinds != [("input_ids", "bert"), ("pixel_values", "vit")]:
        return False
    base = all(c.hidden_size == 768 and c.num_hidden_layers == 12 and c.intermediate_size == 3072
               for c in confs.values())
    vit = next(c for c in confs.values() if c.model_type == "vit")
    return base and vit.patch_size == 16 and vit.image_size == 224


def table1_reference(cfg: WanderConfig, path: str) -> dict[str, int] | None:
    """Table 1's count for a classification model section ``cfg`` on the backbone folder ``path``:
    the paper's Wander (``method: wander``, sequence fusion) at d = 64 or 128 with UPMC-Food101's 101
    classes on ViT-B/16 + BERT-base; None for anything else. Reads only the encoders' config.json."""
    from transformers import AutoConfig

    from polymodal.models.wander.backbone import read_spec

    if cfg.method != "wander" or cfg.fusion != "sequence" or cfg.down_dim not in TABLE1_TRAINABLE \
            or cfg.num_classes != 101:
        return None
    spec = read_spec(path)
    confs = {m.name: AutoConfig.from_pretrained(encoder_source(path, m)) for m in spec.modalities}
    if not is_vit_b16_bert_base(spec, confs):
        return None
    return {f"Table 1, UPMC-Food101, Wander d = {cfg.down_dim}": TABLE1_TRAINABLE[cfg.down_dim]}
