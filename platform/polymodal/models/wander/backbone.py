"""The frozen multi-modality backbone: one Hugging Face transformer encoder per modality.

A backbone folder holds ``backbone.json`` and one ``save_pretrained`` subfolder per modality::

    backbone.json = {"modalities": [
        {"name": "text",  "input": "input_ids",    "seq_len": 50, "feature_dim": null, "encoder": "text"},
        {"name": "audio", "input": "embeds",       "seq_len": 50, "feature_dim": 74,   "encoder": "audio"},
        {"name": "image", "input": "pixel_values", "seq_len": 197, "feature_dim": null, "encoder": "vit"}]}

``encoder`` is a subfolder of the backbone folder or, if no such folder exists, a hub id. An
``embeds`` modality whose ``feature_dim`` differs from its encoder's width may name a
``projection``: a safetensors file in the folder (``weight`` (D, feature_dim), ``bias`` (D,))
holding the input projection it was pre-trained with (``wander.pretrain`` writes one); the
model's trainable input projection starts from it instead of a random init
(:func:`init_input_projections`).
Encoders are BERT-family models (``embeddings`` + ``encoder.layer``) or ViT (``embeddings`` +
``layers``). They are loaded with ``AutoModel.from_pretrained``, the same path real checkpoints
take, and run *layer by layer in lock-step* (see :func:`run_layer`) so that adapters can fuse
across modalities between layers.

Every modality is a fixed-length sequence (features are padded or cropped to ``seq_len`` when the
data set is written). An ``input_ids`` modality is masked where it holds its encoder's
``pad_token_id`` (:func:`token_mask`): pad tokens are never attended to (:func:`run_layer`), pooled
or fused. ``embeds`` and ``pixel_values`` tokens are all real. A ``pixel_values`` modality reads
images as floats in [0, 1] and normalises them with its encoder folder's image processor
(:func:`image_normalization`: ``preprocessor_config.json``'s rescale, image_mean and image_std).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from polymodal.config import StrictModel

InputKind = Literal["embeds", "input_ids", "pixel_values"]


class ModalitySpec(StrictModel):
    name: str = Field(..., pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="key of this modality in the batch")
    input: InputKind = Field(..., description="embeds: (B, l, feature_dim) floats; input_ids: (B, l) ints; "
                                              "pixel_values: (B, 3, H, W) images")
    seq_len: int = Field(..., ge=1, description="tokens seen by the encoder (ViT: patches + 1)")
    feature_dim: int | None = Field(None, ge=1, description="embeds only: input width; null = encoder hidden size")
    encoder: str = Field(..., description="subfolder of the backbone folder, or a hub id")
    projection: str | None = Field(
        None, description="embeds only: safetensors file in the backbone folder with the pre-trained input "
                          "projection (weight (D, feature_dim), bias (D,)); null = random init")

    @model_validator(mode="after")
    def _projection_needs_embeds(self) -> "ModalitySpec":
        if self.projection is not None and (self.input != "embeds" or self.feature_dim is None):
            raise ValueError(f"modality {self.name!r}: projection applies only to an embeds input with a "
                             f"feature_dim (got input {self.input!r}, feature_dim {self.feature_dim}); "
                             "remove projection")
        return self


class BackboneSpec(StrictModel):
    modalities: list[ModalitySpec] = Field(..., min_length=1)

    @field_validator("modalities")
    @classmethod
    def _unique_names(cls, mods: list[ModalitySpec]) -> list[ModalitySpec]:
        names = [m.name for m in mods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"modality names must be unique, {dup} repeat; rename them in backbone.json")
        return mods

    def names(self) -> list[str]:
        return [m.name for m in self.modalities]

    def get(self, name: str) -> ModalitySpec:
        for m in self.modalities:
            if m.name == name:
                return m
        raise ValueError(f"unknown modality {name!r}; the backbone has {self.names()}")


def read_spec(path: str | os.PathLike) -> BackboneSpec:
    """Parse ``<path>/backbone.json``."""
    file = Path(path) / "backbone.json"
    if not file.is_file():
        raise ValueError(f"backbone folder {str(path)!r} has no backbone.json; create one with save_tiny_backbone "
                         "or write it by hand (see polymodal.models.wander.backbone)")
    try:
        return BackboneSpec.model_validate(json.loads(file.read_text()))
    except (ValueError, TypeError) as exc:  # json and pydantic errors are ValueErrors
        raise ValueError(f"{file}: not a valid backbone spec: {exc}") from None


def spec_json(spec: BackboneSpec) -> str:
    """``backbone.json`` text of ``spec``; ``projection`` is written only where set."""
    mods = [{k: v for k, v in m.model_dump().items() if k != "projection" or v is not None}
            for m in spec.modalities]
    return json.dumps({"modalities": mods}, indent=2)


def encoder_source(path: str | os.PathLike, mod: ModalitySpec) -> str:
    """Local subfolder if it exists, else the string as a hub id."""
    local = Path(path) / mod.encoder
    return str(local) if local.is_dir() else mod.encoder


def load_backbone(path: str | os.PathLike) -> tuple[BackboneSpec, nn.ModuleDict]:
    """Read backbone.json and load every encoder with ``AutoModel.from_pretrained``.

    Returns the spec and a ModuleDict modality name -> encoder. Each encoder's pooler is
    dropped (set to None): the model pools itself, and an unused pooler would otherwise
    count as trainable under ``method: full`` while never receiving gradient.
    """
    from transformers import AutoModel

    spec = read_spec(path)
    encoders = nn.ModuleDict()
    for mod in spec.modalities:
        enc = AutoModel.from_pretrained(encoder_source(path, mod), attn_implementation="eager")
        layers(enc)  # fail early, with a clear message, on an unsupported architecture
        if getattr(enc, "pooler", None) is not None:
            enc.pooler = None
        encoders[mod.name] = enc
    return spec, encoders


def init_input_projections(proj: nn.ModuleDict, path: str | os.PathLike, spec: BackboneSpec) -> list[str]:
    """Copy each modality's pre-trained ``projection`` file into ``proj[name]`` (an ``nn.Linear``).

    ``proj`` holds the model's input projections (modality name -> Linear(feature_dim, D)); only
    modalities whose spec names a ``projection`` are touched. A missing or malformed file, or a
    modality that has no input projection (its feature_dim equals the encoder width), raises a
    ValueError naming the file and the backbone.json field. Returns the modalities initialised.
    """
    from safetensors.torch import load_file

    done = []
    for i, mod in enumerate(spec.modalities):
        if mod.projection is None:
            continue
        field = f"{Path(path) / 'backbone.json'}: modalities[{i}].projection"
        if mod.name not in proj:
            raise ValueError(f"{field} = {mod.projection!r}, but modality {mod.name!r} needs no input projection "
                             f"(its feature_dim {mod.feature_dim} equals the encoder width); remove the field")
        file = Path(path) / mod.projection
        if not file.is_file():
            raise ValueError(f"{field}: file {str(file)!r} does not exist; copy the whole backbone folder "
                             "(wander.pretrain writes it next to backbone.json) or remove the field")
        try:
            state = load_file(str(file))
        except Exception as exc:  # noqa: BLE001 -- safetensors raises its own error types
            raise ValueError(f"{field}: cannot read {str(file)!r}: {exc}") from None
        layer = proj[mod.name]
        want = {"weight": tuple(layer.weight.shape), "bias": tuple(layer.bias.shape)}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if got != want:
            raise ValueError(f"{field}: {str(file)!r} holds {got}, but modality {mod.name!r} "
                             f"(feature_dim {mod.feature_dim}, encoder width {want['weight'][0]}) needs {want}; "
                             "for features of another width (e.g. CMU-MOSI's audio 5 / vision 20 against "
                             "CMU-MOSEI's 74 / 35) remove the field to start this projection at random")
        with torch.no_grad():
            layer.weight.copy_(state["weight"].to(layer.weight.dtype))
            layer.bias.copy_(state["bias"].to(layer.bias.dtype))
        done.append(mod.name)
    return done


def save_tiny_backbone(path: str | os.PathLike, modalities: list[dict], hidden: int = 32, layers: int = 2,
                       heads: int = 2, intermediate: int = 64, seed: int = 0) -> BackboneSpec:
    """Write a random-init tiny backbone (for tests and smoke runs) to ``path``.

    ``modalities`` are ModalitySpec dicts; ``encoder`` defaults to the modality name. A
    ``BertModel`` is built for ``embeds`` / ``input_ids`` inputs, a ``ViTModel`` for
    ``pixel_values`` (image_size and patch_size are chosen so patches + 1 == seq_len, which
    must then be a square plus one; an optional ``image_size`` key overrides the image size).
    Dropout is 0 so outputs are deterministic. The (unused) pooler is saved like in real
    checkpoints, so loading reports no missing weights; :func:`load_backbone` drops it.
    Returns the written spec.
    """
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    specs = []
    for raw in modalities:
        raw = dict(raw)
        raw.setdefault("encoder", raw.get("name"))
        image_size = raw.pop("image_size", None)
        mod = ModalitySpec.model_validate(raw)
        common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=intermediate, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        if mod.input == "pixel_values":
            side = round((mod.seq_len - 1) ** 0.5)
            if side * side + 1 != mod.seq_len:
                raise ValueError(f"modality {mod.name!r}: a ViT sees patches + 1 tokens, so seq_len must be a "
                                 f"square plus one (e.g. 5, 17, 197), got {mod.seq_len}")
            image_size = image_size or side * 4
            if image_size % side:
                raise ValueError(f"modality {mod.name!r}: image_size {image_size} is not divisible by "
                                 f"{side} patches per side")
            model = ViTModel(ViTConfig(image_size=image_size, patch_size=image_size // side, num_channels=3,
                                       **common))
        else:
            model = BertModel(BertConfig(vocab_size=128, max_position_embeddings=max(64, mod.seq_len),
                                         **common))
        model.save_pretrained(path / mod.encoder)
        specs.append(mod)
    spec = BackboneSpec(modalities=specs)
    (path / "backbone.json").write_text(spec_json(spec))
    return spec


# --------------------------------------------------------------------------- running an encoder


def layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's transformer blocks: ``encoder.layer`` (BERT family) or ``layers`` (ViT)."""
    inner = getattr(encoder, "encoder", None)
    if inner is not None and isinstance(getattr(inner, "layer", None), nn.ModuleList):
        return inner.layer
    if isinstance(getattr(encoder, "layers", None), nn.ModuleList):
        return encoder.layers
    raise ValueError(f"unsupported encoder {type(encoder).__name__}: expected a BERT-family model "
                     "(.embeddings + .encoder.layer) or a ViT (.embeddings + .layers)")


def hidden_size(encoder: nn.Module) -> int:
    return int(encoder.config.hidden_size)


def is_vit(encoder: nn.Module) -> bool:
    return hasattr(encoder.embeddings, "patch_embeddings")


def run_embeddings(encoder: nn.Module, kind: str, x: Tensor) -> Tensor:
    """Input -> (B, l, D) hidden states at the encoder's input.

    kind ``embeds``: x (B, l, D) floats replace the word embeddings (position/type embeddings and
    LayerNorm still apply); ``input_ids``: x (B, l) ints; ``pixel_values``: x (B, C, H, W).
    """
    if kind == "pixel_values":
        if not is_vit(encoder):
            raise ValueError(f"input 'pixel_values' needs a ViT encoder, got {type(encoder).__name__}")
        return encoder.embeddings(x.to(encoder.embeddings.patch_embeddings.projection.weight.dtype))
    if is_vit(encoder):
        raise ValueError(f"a ViT encoder takes input 'pixel_values', got {kind!r}; fix backbone.json")
    if kind == "input_ids":
        return encoder.embeddings(input_ids=x)
    if kind == "embeds":
        return encoder.embeddings(inputs_embeds=x)
    raise ValueError(f"unknown input kind {kind!r}; choose one of embeds, input_ids, pixel_values")


def token_mask(encoder: nn.Module, kind: str, x: Tensor) -> Tensor | None:
    """(B, l) bool, True at real tokens, for an ``input_ids`` input whose encoder has a
    ``pad_token_id``; None (every token real) otherwise."""
    pad = getattr(encoder.config, "pad_token_id", None)
    if kind != "input_ids" or pad is None:
        return None
    return x != pad


def additive_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """(B, l) bool -> (B, 1, 1, l) additive attention mask: 0 at real keys, the dtype's minimum at pads."""
    if mask is None:
        return None
    return (~mask)[:, None, None, :].to(dtype) * torch.finfo(dtype).min


def run_layer(encoder: nn.Module, k: int, h: Tensor, mask: Tensor | None = None) -> Tensor:
    """Run block k on hidden states h (B, l, D) -> (B, l, D); ``mask`` (B, l) bool, True at real
    tokens, keeps every query from attending to pad keys (None: all tokens attend to all).

    transformers 5.x blocks return a tensor; older ones return a tuple whose first item is it.
    """
    out = layers(encoder)[k](h, additive_mask(mask, h.dtype))
    return out[0] if isinstance(out, (tuple, list)) else out


def image_normalization(path: str | os.PathLike, spec: BackboneSpec) -> dict[str, tuple[float, list[float], list[float]]]:
    """Each ``pixel_values`` modality's image processor as ``name -> (scale, mean, std)``, read with
    ``AutoImageProcessor`` from its encoder folder (or hub id): pixels in [0, 1] become
    ``(x * scale - mean) / std`` per channel, where ``scale = 255 * rescale_factor`` (1 for the
    usual 1/255; 255 if the processor does not rescale) and mean 0 / std 1 if it does not normalise.

    An encoder without a ``preprocessor_config.json`` (the tiny random backbones of tests) is left out:
    its pixels reach the ViT as they are.
    """
    from transformers import AutoImageProcessor

    out = {}
    for mod in spec.modalities:
        if mod.input != "pixel_values":
            continue
        src = encoder_source(path, mod)
        if Path(src).is_dir() and not (Path(src) / "preprocessor_config.json").is_file():
            continue
        try:
            proc = AutoImageProcessor.from_pretrained(src)
        except OSError:  # a hub id without a processor, or offline with nothing cached
            continue
        scale = 255.0 * float(proc.rescale_factor) if getattr(proc, "do_rescale", True) else 255.0
        norm = getattr(proc, "do_normalize", True)
        mean, std = (proc.image_mean, proc.image_std) if norm else (0.0, 1.0)
        mean, std = ([float(v)] * 3 if isinstance(v, (int, float)) else [float(c) for c in v] for v in (mean, std))
        out[mod.name] = (scale, mean, std)
    return out


def finalize(encoder: nn.Module, h: Tensor) -> Tensor:
    """What the encoder does after its last block: ViT's final LayerNorm; nothing for BERT."""
    norm = getattr(encoder, "layernorm", None)
    return norm(h) if isinstance(norm, nn.Module) else h
