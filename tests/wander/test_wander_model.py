"""WanderModel on a tiny random backbone: freezing, gradients, parameter counts, identity at init."""

import shutil

import pytest
import torch
from torch import nn

from polymodal.models.wander import PRESETS, WanderConfig, WanderModel, load_backbone, save_tiny_backbone
from polymodal.models.wander.adapter import HoulsbyAdapter, WanderAdapter
from polymodal.models.wander.model import closed_form_trainable_count, trainable_parameter_count

MODALITIES = [
    {"name": "text", "input": "input_ids", "seq_len": 6},
    {"name": "audio", "input": "embeds", "seq_len": 5, "feature_dim": 7},   # needs an input projection
    {"name": "video", "input": "embeds", "seq_len": 4},                     # width = hidden size
    {"name": "image", "input": "pixel_values", "seq_len": 5},               # ViT: 2x2 patches + CLS
]
METHODS = ["wander", "houlsby", "lora", "full", "none"]
HEADS = ["classification", "regression", "retrieval"]


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("backbone")
    save_tiny_backbone(path, MODALITIES, hidden=16, layers=2, heads=2, intermediate=32, seed=0)
    return str(path)


def _cfg(backbone_dir, method, head, **kw):
    values = {**PRESETS["tiny"](), "backbone": backbone_dir, "method": method, "num_classes": 3, **kw}
    if head == "retrieval":
        values.setdefault("query_modality", "text")
    return WanderConfig(**values)


def _build(backbone_dir, method, head, seed=0, **kw):
    spec, encoders = load_backbone(backbone_dir)
    torch.manual_seed(seed)
    return WanderModel(spec, encoders, _cfg(backbone_dir, method, head, **kw), head)


def _inputs(B=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"text": torch.randint(0, 100, (B, 6), generator=g),
            "audio": torch.randn(B, 5, 7, generator=g),
            "video": torch.randn(B, 4, 16, generator=g),
            "image": torch.randn(B, 3, 8, 8, generator=g)}


def _loss(out):
    return sum(v.float().square().sum() for v in out.values())


# multilabel builds the classification head with one logit per target: one method covers it
@pytest.mark.parametrize(("method", "head"), [(m, h) for h in HEADS for m in METHODS] + [("wander", "multilabel")])
def test_gradients_reach_only_trainable_and_counts_match(backbone_dir, method, head):
    model = _build(backbone_dir, method, head)
    out = model(_inputs())
    if head in ("classification", "multilabel"):  # multilabel: one logit per binary target
        assert out["logits"].shape == (3, 3)
    elif head == "regression":
        assert out["pred"].shape == (3,)
    else:
        assert out["video_emb"].shape == out["text_emb"].shape == (3, 32)
        assert out["logit_scale"].shape == ()
        assert torch.allclose(out["video_emb"].norm(dim=-1), torch.ones(3))
    _loss(out).backward()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None or not p.grad.any(), f"frozen {name} got a gradient"
    backbone_trainable = [n for n, p in model.encoders.named_parameters() if p.requires_grad]
    if method in ("wander", "houlsby", "none"):
        assert backbone_trainable == []
    elif method == "lora":
        assert backbone_trainable and all("lora_" in n for n in backbone_trainable)
    head_params = ([model.video_proj.weight, model.text_proj.weight] if head == "retrieval"
                   else [p for p in model.head.parameters()])
    assert any(p.grad is not None and p.grad.any() for p in head_params)
    assert model.proj["audio"].weight.grad.any()  # the input projection trains
    if method == "wander":
        assert all(a.gate.grad.abs() > 0 for a in model.wander.values())
    spec, _ = load_backbone(backbone_dir)
    assert trainable_parameter_count(model) == closed_form_trainable_count(spec, model.cfg, head)


@pytest.mark.parametrize("method", ["wander", "houlsby", "lora"])
@pytest.mark.parametrize("extra", [{"adapter_layers": [1]}, {"head_hidden": 12, "rank_mode": "paper"}])
def test_counts_match_with_options(backbone_dir, method, extra):
    model = _build(backbone_dir, method, "classification", **extra)
    spec, _ = load_backbone(backbone_dir)
    assert trainable_parameter_count(model) == closed_form_trainable_count(spec, model.cfg, "classification")


def test_sf_factors_get_gradient_once_gate_is_open(backbone_dir):
    model = _build(backbone_dir, "wander", "classification")
    with torch.no_grad():
        for a in model.wander.values():
            a.gate.fill_(0.5)
    _loss(model(_inputs())).backward()
    for a in model.wander.values():
        assert all(w.grad.any() for w in list(a.fusion.factors_h) + list(a.fusion.factors_t))
        assert all(d.weight.grad.any() for d in a.down)


@pytest.mark.parametrize("head", ["classification", "retrieval"])
def test_gate_zero_equals_frozen_backbone(backbone_dir, head):
    wander = _build(backbone_dir, "wander", head).eval()
    none = _build(backbone_dir, "none", head).eval()
    none.proj.load_state_dict(wander.proj.state_dict())
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(wander.features(x), none.features(x))
        # and the adapter really does something once its gate opens
        for a in wander.wander.values():
            a.gate.fill_(1.0)
        assert not torch.allclose(wander.features(x), none.features(x))


def test_retrieval_wander_skips_query_modality(backbone_dir):
    model = _build(backbone_dir, "wander", "retrieval")
    assert model.adapted == ["audio", "video", "image"]
    assert len(next(iter(model.wander.values())).down) == 3


def test_save_reload_gives_identical_outputs(backbone_dir, tmp_path):
    a = _build(backbone_dir, "none", "classification").eval()
    # write the loaded encoders back out as a new backbone folder and load that
    for name, enc in a.encoders.items():
        enc.save_pretrained(tmp_path / name)
    shutil.copy(f"{backbone_dir}/backbone.json", tmp_path / "backbone.json")
    b = _build(str(tmp_path), "none", "classification").eval()
    b.load_state_dict(a.state_dict())
    # same seed -> the same tiny backbone again
    save_tiny_backbone(tmp_path / "again", MODALITIES, hidden=16, layers=2, heads=2, intermediate=32, seed=0)
    c = _build(str(tmp_path / "again"), "none", "classification").eval()
    c.load_state_dict(a.state_dict())
    x = _inputs()
    with torch.no_grad():
        ya = a(x)["logits"]
        assert torch.equal(ya, b(x)["logits"])
        assert torch.equal(ya, c(x)["logits"])


def test_layerwise_run_matches_encoder_forward(backbone_dir):
    from polymodal.models.wander.backbone import finalize, layers, run_embeddings, run_layer

    _, encoders = load_backbone(backbone_dir)
    x = _inputs()
    for name, kind, kw in [("text", "input_ids", "input_ids"), ("image", "pixel_values", "pixel_values")]:
        enc = encoders[name].eval()
        h = run_embeddings(enc, kind, x[name])
        for k in range(len(layers(enc))):
            h = run_layer(enc, k, h)
        with torch.no_grad():
            assert torch.allclose(finalize(enc, h), enc(**{kw: x[name]}).last_hidden_state, atol=1e-6)


def test_input_errors_name_the_modality(backbone_dir):
    model = _build(backbone_dir, "wander", "classification")
    x = _inputs()
    with pytest.raises(ValueError, match="'video' is missing"):
        model({k: v for k, v in x.items() if k != "video"})
    with pytest.raises(ValueError, match=r"'audio' \(embeds\).*\(B, 5, 7\)"):
        model({**x, "audio": torch.randn(3, 5, 8)})
    with pytest.raises(ValueError, match=r"'text' \(input_ids\)"):
        model({**x, "text": torch.randn(3, 6)})


def test_config_errors(backbone_dir):
    with pytest.raises(ValueError, match="adapter_layers \\[5\\] out of range.*0..1"):
        _build(backbone_dir, "wander", "classification", adapter_layers=[5])
    with pytest.raises(ValueError, match="query_modality"):
        _build(backbone_dir, "wander", "retrieval", query_modality="nope")
    with pytest.raises(ValueError, match="only applies to the retrieval head"):
        _build(backbone_dir, "wander", "classification", query_modality="text")
    spec, encoders = load_backbone(backbone_dir)
    with pytest.raises(ValueError, match="head must be one of"):
        WanderModel(spec, encoders, _cfg(backbone_dir, "none", "classification"), "segmentation")
    with pytest.raises(ValueError, match=r"same hidden size; got hidden_dims=\[16, 24\]"):
        WanderAdapter([16, 24], [3, 4], 8, 2, 2, nn.GELU())


def test_houlsby_is_identity_at_init():
    ad = HoulsbyAdapter(16, 4, nn.GELU())
    h = torch.randn(2, 5, 16)
    assert torch.equal(ad(h), h)


def test_presets_validate():
    for name, preset in PRESETS.items():
        assert "backbone" not in preset()
        WanderConfig(backbone="/tmp/x", **preset())
    assert PRESETS["paper"]()["down_dim"] == 16 and PRESETS["paper"]()["rank_h"] == 8
    assert PRESETS["paper"]()["rank_t"] == 8  # the paper: R_h = R_t = 8 for every dataset
