"""Self-supervised pre-training of Wander's stacked-transformer backbone (``wander.pretrain``).

Why: the Wander paper fine-tunes adapters on a backbone pre-trained beforehand (for CMU-MOSI and
IEMOCAP a stack of transformer layers, pre-trained on unlabelled video); its code (zrguo/Wander,
``run/mosi_run.py --pretrained_model``; its README: "You need a pre-trained multimodal model first")
loads that model, but no pre-training code or objective could be found in it (the paper's full text
was not readable here), so the objective below is chosen from the literature. This task trains such
a backbone here, on the shards ``polymodal data import --format mmsa`` writes (CMU-MOSEI / MOSI feature sequences; their
``label`` column is ignored), and writes it as a backbone folder that ``wander.classification`` /
``wander.regression`` load with ``model.backbone=<run>/backbone``.

The model is the backbone itself: one BERT encoder per ``embeds`` modality (built from
``modalities`` and the size fields, or started from an existing backbone folder), each modality
projected to its encoder width by a linear input projection when its feature width differs,
run without attention mask exactly as :class:`~polymodal.models.wander.model.WanderModel` runs
it. Only pre-training heads (mask vector, reconstruction and embedding layers) are added; they are
dropped on export.

Objective, per batch (weights ``mfm_weight``, ``nce_weight``)::

    loss = mfm_weight * mean_m MFM_m + nce_weight * NCE

* **Masked frame modelling** (MFM), per modality m: ``mask_ratio`` (15 %) of the time steps of
  every row are picked at random (``round(ratio * l_m)``, at least one), their projected inputs
  replaced by a learned mask vector, and the encoder's outputs at those steps regress the original
  feature vectors through a linear head; ``MFM_m`` is the mean squared error over the masked
  frames (mean over features). The 15 % and the mask token follow BERT's masked language model
  (Devlin et al. 2019) as carried to feature frames by UniVL's masked frame model (Luo et al. 2020,
  arXiv 2002.06353) and, for CMU-MOSEI's text/audio/vision features, by Khare et al. 2020
  ("Self-supervised learning with cross-modal transformers for emotion recognition", arXiv
  2011.10652). With ``target_norm: frame`` each target frame is standardised over its features
  first (MAE's normalised-pixel target, He et al. 2022), so modalities of different scales weigh
  alike in the mean over modalities, and predicting the frame's own mean scores exactly 1.0:
  ``mfm_mse < 1`` means the context was used.
* **Cross-modal contrastive alignment** (NCE): the pooled output of each modality (first token,
  or the mean; ``pooling``) is projected to ``embed_dim`` and L2-normalised; for every ordered pair
  of modalities (a, b) each row's a-embedding must pick its own row's b-embedding among the batch
  (InfoNCE with temperature ``temperature``, 0.07), averaged over the pairs. This is VATT's
  multimodal contrastive pre-training of modality-specific transformers on HowTo100M (Akbari et
  al. 2021, arXiv 2104.11178), i-Code's cross-modality contrastive loss (Yang et al. 2022) and
  CLIP's symmetric loss (Radford et al. 2021) for M modalities. It makes the pooled token, which
  Wander's heads read, carry what the modalities share.

Both terms are computed in one forward pass on the masked inputs. Evaluation masks with a fixed
seed, so held-out metrics of two checkpoints are comparable: ``loss`` (the weighted objective on
each evaluation batch, averaged over rows; the primary metric, lower is better), ``mfm_mse`` (mean
over modalities), ``mfm_<m>`` and ``nce``.

Export (:func:`export_backbone`): ``backbone.json`` (every modality ``input: embeds`` with its
``seq_len`` and ``feature_dim``), one ``save_pretrained`` BERT folder per modality and, where a
projection exists, ``<m>_projection.safetensors`` named by the modality's ``projection`` field.
:meth:`PretrainTask.fit <polymodal.models.wander.task.PretrainTask.fit>` writes it from the best
checkpoint to ``<run>/backbone``.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from polymodal.config import StrictModel

from .backbone import (BackboneSpec, ModalitySpec, finalize, hidden_size, init_input_projections, layers,
                       load_backbone, run_embeddings, run_layer, spec_json)

#: seed of the masks drawn during evaluation (held-out metrics must not depend on the RNG state)
EVAL_MASK_SEED = 0


# =========================================================================== config


class PretrainModality(StrictModel):
    """One ``embeds`` modality of a backbone built from scratch."""

    name: str = Field(..., pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="column of this modality in the data")
    seq_len: int = Field(..., ge=1, description="time steps per row (MMSA aligned_50: 50)")
    feature_dim: int = Field(..., ge=1, description="feature width (CMU-MOSEI: text 768, audio 74, vision 35)")


class PretrainConfig(StrictModel):
    """The ``model:`` section of a ``wander.pretrain`` run."""

    backbone: str | None = Field(
        ..., description="backbone folder (or URI) to start from: its architecture and weights; "
                         "null: build new encoders from `modalities` and the size fields")
    modalities: list[PretrainModality] | None = Field(
        None, description="with backbone: null, the modalities to build encoders for (one BERT each)")
    hidden_size: int = Field(32, ge=1, description="encoder width D (new encoders only)")
    num_layers: int = Field(2, ge=1, description="transformer layers per encoder (new encoders only)")
    num_heads: int = Field(2, ge=1, description="attention heads; must divide hidden_size (new encoders only)")
    intermediate_size: int = Field(64, ge=1, description="feed-forward width (new encoders only)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="encoder dropout (new encoders only; kept on export)")
    mask_ratio: float = Field(0.15, gt=0.0, lt=1.0, description="share of time steps masked per modality and row")
    mfm_weight: float = Field(1.0, ge=0.0, description="weight of masked frame modelling")
    nce_weight: float = Field(1.0, ge=0.0, description="weight of cross-modal InfoNCE (needs >= 2 modalities)")
    temperature: float = Field(0.07, gt=0.0, description="InfoNCE temperature")
    embed_dim: int = Field(64, ge=1, description="width of the contrastive embedding")
    pooling: Literal["first", "mean"] = Field("first", description="pooled token for InfoNCE (Wander's heads "
                                                                  "read the first token by default)")
    target_norm: Literal["frame", "none"] = Field(
        "frame", description="frame: standardise each target frame over its features; none: raw features")

    @model_validator(mode="after")
    def _check(self) -> "PretrainConfig":
        if (self.backbone is None) == (self.modalities is None):
            raise ValueError("set exactly one of backbone (a folder to start from) and modalities (build new "
                             "encoders); got " + ("both" if self.backbone is not None else "neither"))
        if self.modalities is not None:
            names = [m.name for m in self.modalities]
            if not names or len(set(names)) != len(names):
                raise ValueError(f"modalities need unique names, got {names}")
            if self.hidden_size % self.num_heads:
                raise ValueError(f"num_heads {self.num_heads} must divide hidden_size {self.hidden_size}")
        if self.mfm_weight == 0 and self.nce_weight == 0:
            raise ValueError("mfm_weight and nce_weight are both 0: nothing to train; set one above 0")
        return self


def tiny() -> dict[str, Any]:
    """Small encoders for tests and smoke runs (no dropout: repeatable)."""
    return {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "dropout": 0.0,
            "embed_dim": 32}


def paper() -> dict[str, Any]:
    """Encoders the size of the Wander MOSI model (a copy of zrguo/Wander ``run/mosi_run.py``:
    ``proj_dim`` 40, ``num_heads`` 8; 5 layers, MulT's default ``nlevels``; feed-forward 4x the
    width, as in MulT);
    masking and temperature as in BERT/UniVL (15 %) and VATT/CLIP (0.07)."""
    return {"hidden_size": 40, "num_layers": 5, "num_heads": 8, "intermediate_size": 160, "dropout": 0.1,
            "mask_ratio": 0.15, "temperature": 0.07, "embed_dim": 40}


PRESETS = {"tiny": tiny, "paper": paper}


# =========================================================================== model


def _new_encoder(cfg: PretrainConfig, seq_len: int) -> nn.Module:
    """A random BERT encoder of the configured size, reading ``inputs_embeds``."""
    from transformers import BertConfig, BertModel

    conf = BertConfig(vocab_size=2,  # inputs are feature vectors: the word embeddings stay unused
                      hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                      num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                      hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
                      max_position_embeddings=max(64, seq_len), attn_implementation="eager")
    return BertModel(conf, add_pooling_layer=False)


def build_backbone(cfg: PretrainConfig, path: str | None = None
                   ) -> tuple[BackboneSpec, nn.ModuleDict, str | None]:
    """(spec, encoders, local folder the spec came from or None) for ``cfg``.

    ``path``: local copy of ``cfg.backbone`` (None builds new encoders from ``cfg.modalities``).
    Every modality must be an ``embeds`` input: the objective reconstructs feature vectors.
    """
    if path is None:
        mods = cfg.modalities or []
        spec = BackboneSpec(modalities=[ModalitySpec(name=m.name, input="embeds", seq_len=m.seq_len,
                                                     feature_dim=m.feature_dim, encoder=m.name) for m in mods])
        encoders = nn.ModuleDict({m.name: _new_encoder(cfg, m.seq_len) for m in mods})
        return spec, encoders, None
    spec, encoders = load_backbone(path)
    bad = [f"{m.name!r} ({m.input})" for m in spec.modalities if m.input != "embeds"]
    if bad:
        raise ValueError(f"{Path(path) / 'backbone.json'}: wander.pretrain trains embeds modalities only (masked "
                         f"frame modelling reconstructs feature vectors), but {', '.join(bad)} are not; "
                         "use a backbone whose modalities are all `input: embeds`")
    return spec, encoders, path


class WanderPretrainModel(nn.Module):
    """The backbone plus pre-training heads; see the module docstring.

    ``forward(inputs, mask_seed=None)``: ``inputs[m]`` (B, l_m, F_m) float features per modality
    (other keys, e.g. ``label``, are ignored); ``mask_seed`` fixes the masks (evaluation). Returns
    per-row tensors: ``sse_<m>`` (B,) summed per-frame MSE over the masked frames, ``count_<m>``
    (B,) masked frames, and ``nce`` (B,) the row's InfoNCE averaged over ordered modality pairs.
    """

    def __init__(self, spec: BackboneSpec, encoders: nn.ModuleDict, cfg: PretrainConfig,
                 folder: str | None = None):
        super().__init__()
        self.spec, self.cfg, self.encoders = spec, cfg, encoders
        names = spec.names()
        if cfg.nce_weight > 0 and len(names) < 2:
            raise ValueError(f"nce_weight > 0 needs at least two modalities, the backbone has {names}; "
                             "set nce_weight: 0")
        self.dims = {n: hidden_size(encoders[n]) for n in names}
        self.widths = {m.name: m.feature_dim or self.dims[m.name] for m in spec.modalities}
        for mod in spec.modalities:
            max_pos = getattr(encoders[mod.name].config, "max_position_embeddings", None)
            if max_pos is not None and mod.seq_len > max_pos:
                raise ValueError(f"modality {mod.name!r}: seq_len {mod.seq_len} exceeds the encoder's "
                                 f"max_position_embeddings {max_pos}")
        # the same rule as WanderModel: a projection wherever the feature width is not the encoder's
        self.proj = nn.ModuleDict({n: nn.Linear(self.widths[n], self.dims[n]) for n in names
                                   if self.widths[n] != self.dims[n]})
        if folder is not None:
            init_input_projections(self.proj, folder, spec)
        for enc in encoders.values():
            if getattr(enc, "pooler", None) is not None:
                enc.pooler = None  # never used; it would count as trainable without gradient
            words = getattr(enc.embeddings, "word_embeddings", None)
            if words is not None:
                words.weight.requires_grad = False  # inputs are feature vectors, never token ids
        self.mask_token = nn.ParameterDict({n: nn.Parameter(0.02 * torch.randn(self.dims[n])) for n in names})
        self.recon = nn.ModuleDict({n: nn.Linear(self.dims[n], self.widths[n]) for n in names})
        self.embed = nn.ModuleDict({n: nn.Linear(self.dims[n], cfg.embed_dim) for n in names})

    def _check(self, mod: ModalitySpec, x: Tensor, batch: int | None) -> None:
        want = (mod.seq_len, self.widths[mod.name])
        if x.dim() != 3 or tuple(x.shape[1:]) != want or not x.is_floating_point():
            raise ValueError(f"modality {mod.name!r} must be a float tensor (B, {want[0]}, {want[1]}), got "
                             f"{x.dtype} {tuple(x.shape)}; the data does not match the backbone")
        if batch is not None and x.shape[0] != batch:
            raise ValueError(f"modality {mod.name!r} has batch size {x.shape[0]}, others have {batch}")

    def _mask(self, b: int, l: int, device: torch.device, gen: torch.Generator | None) -> Tensor:
        """(B, l) bool: round(ratio * l) (>= 1) random time steps per row."""
        k = max(1, round(self.cfg.mask_ratio * l))
        scores = torch.rand(b, l, device=device, generator=gen)
        idx = scores.argsort(dim=1)[:, :k]
        return torch.zeros(b, l, dtype=torch.bool, device=device).scatter_(1, idx, True)

    def _target(self, x: Tensor) -> Tensor:
        x = x.float()
        if self.cfg.target_norm == "frame":
            mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
            return (x - mean) / (var + 1e-6).sqrt()
        return x

    def forward(self, inputs: dict[str, Tensor], mask_seed: int | None = None) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        pooled: dict[str, Tensor] = {}
        batch = None
        for mod in self.spec.modalities:
            n = mod.name
            if n not in inputs:
                raise ValueError(f"input for modality {n!r} is missing; the batch has {sorted(inputs)}, "
                                 f"the backbone needs {self.spec.names()}")
            x = inputs[n]
            self._check(mod, x, batch)
            batch = x.shape[0]
            gen = None
            if mask_seed is not None:
                gen = torch.Generator(device=x.device)
                gen.manual_seed(mask_seed + 1_000 * self.spec.names().index(n))
            mask = self._mask(batch, mod.seq_len, x.device, gen)                     # (B, l)
            e = self.proj[n](x) if n in self.proj else x                             # (B, l, D)
            e = torch.where(mask[..., None], self.mask_token[n].to(e.dtype), e)
            h = run_embeddings(self.encoders[n], "embeds", e)                        # (B, l, D)
            for k in range(len(layers(self.encoders[n]))):
                h = run_layer(self.encoders[n], k, h)
            h = finalize(self.encoders[n], h)
            err = (self.recon[n](h).float() - self._target(x)).square().mean(-1)      # (B, l)
            out[f"sse_{n}"] = (err * mask).sum(1)                                     # (B,)
            out[f"count_{n}"] = mask.sum(1).float()                                   # (B,)
            pooled[n] = h[:, 0] if self.cfg.pooling == "first" else h.mean(1)         # (B, D)
        out["nce"] = self._nce(pooled) if len(pooled) > 1 else torch.zeros(batch, device=x.device)
        return out

    def _nce(self, pooled: dict[str, Tensor]) -> Tensor:
        """Per-row InfoNCE averaged over ordered modality pairs: (B,)."""
        emb = {n: F.normalize(self.embed[n](p).float(), dim=-1) for n, p in pooled.items()}  # (B, E)
        target = torch.arange(next(iter(emb.values())).shape[0], device=next(iter(emb.values())).device)
        rows = [F.cross_entropy(emb[a] @ emb[b].T / self.cfg.temperature, target, reduction="none")
                for a, b in itertools.permutations(emb, 2)]
        return torch.stack(rows).mean(0)


def objective(cfg: PretrainConfig, names: list[str], out: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(weighted loss, MFM averaged over modalities, mean NCE) of one batch's forward output."""
    mfm = torch.stack([out[f"sse_{n}"].sum() / out[f"count_{n}"].sum().clamp(min=1) for n in names]).mean()
    nce = out["nce"].mean()
    return cfg.mfm_weight * mfm + cfg.nce_weight * nce, mfm, nce


def build_model(cfg: PretrainConfig) -> WanderPretrainModel:
    """Build the pre-training model for ``cfg`` (fetching ``cfg.backbone`` when it is a URI)."""
    from polymodal.cache import local_copy

    path = local_copy(cfg.backbone) if cfg.backbone is not None else None
    spec, encoders, folder = build_backbone(cfg, path)
    return WanderPretrainModel(spec, encoders, cfg, folder)


def metrics(outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Split metrics from concatenated per-row outputs (see the module docstring)."""
    names = [k[len("sse_"):] for k in outputs if k.startswith("sse_")]
    out = {f"mfm_{n}": float(outputs[f"sse_{n}"].sum() / max(outputs[f"count_{n}"].sum(), 1.0)) for n in names}
    out["mfm_mse"] = float(np.mean([out[f"mfm_{n}"] for n in names]))
    out["nce"] = float(outputs["nce"].mean())
    out["loss"] = float(outputs["loss"].mean())
    return out


# =========================================================================== export


def export_backbone(model: WanderPretrainModel, path: str | os.PathLike) -> BackboneSpec:
    """Write ``model``'s backbone as a folder :func:`~polymodal.models.wander.backbone.load_backbone`
    reads: ``backbone.json``, one BERT folder per modality (with a fresh pooler, which the loader
    drops, so loading reports no missing weights) and ``<m>_projection.safetensors`` where the
    modality has an input projection. Returns the written spec."""
    from safetensors.torch import save_file
    from transformers import AutoModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    mods = []
    for mod in model.spec.modalities:
        n = mod.name
        enc = model.encoders[n]
        full = AutoModel.from_config(enc.config)  # the same architecture, pooler included
        missing, unexpected = full.load_state_dict(enc.state_dict(), strict=False)
        if unexpected or any(not k.startswith("pooler.") for k in missing):
            raise RuntimeError(f"encoder {n!r} does not match its own config: missing {missing}, "
                               f"unexpected {unexpected}")
        full.save_pretrained(path / n)
        projection = None
        if n in model.proj:
            projection = f"{n}_projection.safetensors"
            layer = model.proj[n]
            save_file({"weight": layer.weight.detach().float().cpu().contiguous(),
                       "bias": layer.bias.detach().float().cpu().contiguous()}, str(path / projection))
        mods.append(ModalitySpec(name=n, input="embeds", seq_len=mod.seq_len, feature_dim=model.widths[n],
                                 encoder=n, projection=projection))
    spec = BackboneSpec(modalities=mods)
    (path / "backbone.json").write_text(spec_json(spec))  # last: a folder without it is not a backbone
    return spec


def export_run_backbone(task: Any, cfg: Any, which: str = "best") -> str:
    """Export the run's ``best`` (or ``latest``) checkpoint's backbone to ``<run>/backbone``; return its URI."""
    from polymodal import runs, storage

    _, model = task.load_checkpoint(runs.find_checkpoint(cfg, which), cfg.storage)
    uri = storage.join(cfg.run_uri, "backbone")
    with tempfile.TemporaryDirectory(prefix="polymodal-backbone-") as tmp:
        export_backbone(model, tmp)
        storage.upload_dir(tmp, uri, cfg.storage, last=("backbone.json",))
    return uri


# =========================================================================== synthetic data

#: modality -> feature width of the synthetic data (MOSEI-like: different widths, none the encoder's)
SYNTH_WIDTHS = {"text": 24, "audio": 12, "vision": 16}
SYNTH_SEQ_LEN = 8
#: size k of the latent all modalities of a row share
SYNTH_LATENT = 4
SYNTH_NOISE = 0.3
SYNTH_ROWS = {"train": 2048, "val": 512, "test": 512}
_SPLIT_STREAM = {"train": 1, "val": 2, "test": 3}


def synth_directions(seed: int, widths: dict[str, int] = SYNTH_WIDTHS, k: int = SYNTH_LATENT
                     ) -> dict[str, np.ndarray]:
    """Modality -> ``A_m`` (F_m, k) with orthonormal columns, fixed by ``seed``."""
    rng = np.random.default_rng([seed, 0])
    out = {}
    for name, width in widths.items():
        q, r = np.linalg.qr(rng.standard_normal((width, k)))
        out[name] = q * np.sign(np.diag(r))[None, :]
    return out


def sample_pretrain(rng: np.random.Generator, n: int, directions: dict[str, np.ndarray], *,
                    seq_len: int = SYNTH_SEQ_LEN, noise: float = SYNTH_NOISE
                    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``n`` rows whose modalities share one latent.

    Row i draws ``s_i ~ N(0, I_k)``; every time step t of modality m is
    ``x_{m,t} = A_m s_i + noise * eps``, eps ~ N(0, I). So a masked frame is predictable from the
    row's other frames (their mean estimates ``A_m s_i``; a frame's own noise is not), and the
    modalities of a row agree on ``s_i`` while rows differ (InfoNCE is learnable). ``label`` =
    ``[s_i0 > 0]`` (int64) gives a downstream classification target that lives in the shared latent.

    Returns (arrays: modality -> float32 (n, seq_len, F_m) and ``label``; latents s (n, k)).
    """
    k = next(iter(directions.values())).shape[1]
    s = rng.standard_normal((n, k))
    arrays = {}
    for name, a in directions.items():
        x = noise * rng.standard_normal((n, seq_len, a.shape[0]))
        x += (s @ a.T)[:, None, :]
        arrays[name] = x.astype(np.float32)
    arrays["label"] = (s[:, 0] > 0).astype(np.int64)
    return arrays, s


def write_pretrain_synthetic(out_uri: str, *, seed: int = 0, scale: float = 1.0, opts: Any = None,
                             progress: bool | str = True) -> dict[str, str]:
    """Write ``train``/``val``/``test`` shards of :func:`sample_pretrain` rows (MMSA-like: float32
    ``[seq_len, F_m]`` columns ``text``, ``audio``, ``vision`` plus ``label``) and a random tiny
    backbone for them (``backbone/``: BERT hidden 32, projections random) to start from.

    ``scale`` multiplies 2048 / 512 / 512 rows (at least 64 each). Returns ``{split: uri,
    "backbone": uri}``.
    """
    from polymodal import storage
    from polymodal.shards import ColumnSpec, ShardWriter

    from .backbone import save_tiny_backbone
    from .data import feature_spec

    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    out = {split: storage.join(out_uri, split) for split in SYNTH_ROWS}
    out["backbone"] = storage.join(out_uri, "backbone")
    with tempfile.TemporaryDirectory(prefix="polymodal-synth-") as tmp:
        save_tiny_backbone(tmp, [{"name": n, "input": "embeds", "seq_len": SYNTH_SEQ_LEN, "feature_dim": w}
                                 for n, w in SYNTH_WIDTHS.items()], hidden=32, seed=seed)
        storage.upload_dir(tmp, out["backbone"], opts)
    directions = synth_directions(seed)
    columns = {n: feature_spec([SYNTH_SEQ_LEN, w]) for n, w in SYNTH_WIDTHS.items()}
    columns["label"] = ColumnSpec(dtype="int64", shape=[])
    meta = {"modalities": list(SYNTH_WIDTHS), "seed": seed, "num_classes": 2,
            "planted": f"x_m,t = A_m s + {SYNTH_NOISE} eps, s ~ N(0, I_{SYNTH_LATENT}) shared by the "
                       "modalities of a row; label = [s_0 > 0]"}
    for split, rows in SYNTH_ROWS.items():
        n = max(64, int(round(rows * scale)))
        rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
        with ShardWriter(out[split], task="wander.pretrain", split=split, columns=columns, meta=meta,
                         opts=opts, progress=progress) as writer:
            for start in range(0, n, 1024):
                arrays, _ = sample_pretrain(rng, min(1024, n - start), directions)
                writer.write(arrays)
    return out

