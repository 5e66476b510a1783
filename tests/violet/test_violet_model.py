"""VIOLET model: [video, CLS, text] through one BERT encoder, heads, losses, ablations, downstream.

Tiny and offline: a WordPiece tokenizer trained here, a random 32-wide 2-layer BERT saved with
``save_pretrained`` into a temporary folder, 64 px frames with 32 px patches (a 2 x 2 grid).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from polymodal.models.violet import masking
from polymodal.models.violet.config import PRESETS, VioletConfig, tiny
from polymodal.models.violet.model import (Violet, combine_losses, derangement, masked_head_loss, mlm_loss, mvm_loss,
                                           vtm_loss, vtm_pairs)
from polymodal.text import train_tokenizer

CAPTIONS = ["a red square moves left", "a blue circle moves right", "the green triangle goes up",
            "a yellow star falls down slowly", "two shapes cross the frame", "nothing moves at all"]
S, T, B = 64, 4, 3


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> str:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    path = str(tmp_path_factory.mktemp("tiny-bert"))
    train_tokenizer(CAPTIONS * 4, path, vocab_size=120)
    vocab = len(AutoTokenizer.from_pretrained(path, local_files_only=True))
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                               vocab_size=vocab, max_position_embeddings=64)).save_pretrained(path)
    return path


def make(bert_dir: str, seed: int = 0, **overrides) -> Violet:
    torch.manual_seed(seed)
    return Violet(VioletConfig(bert=bert_dir, **{**tiny(), **overrides})).eval()


def text(model: Violet, captions=CAPTIONS[:B], length: int | None = None):
    enc = model.tokenizer(list(captions), padding="max_length" if length else True, max_length=length,
                          return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def frames(n: int = B, t: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, t, 3, S, S, generator=torch.Generator().manual_seed(seed))


def encoder_input(model: Violet, *args) -> torch.Tensor:
    """The hidden states handed to BERT's encoder during ``model(*args)``."""
    seen = []
    hook = model.encoder.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
    try:
        model(*args)
    finally:
        hook.remove()
    return seen[0]


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_validate(preset):
    cfg = VioletConfig(bert="unused", **PRESETS[preset]())
    assert cfg.image_size % cfg.patch_size == 0 and cfg.frames <= cfg.max_frames


def test_config_reports_every_error_at_once():
    with pytest.raises(ValueError) as err:
        VioletConfig(bert="x", visual="swin", image_size=65, swin_dim=30, swin_heads=4, head="oeqa", frames=9,
                     max_frames=8)
    message = str(err.value)
    for part in ("patch_size", "swin_heads", "max_frames", "num_answers"):
        assert part in message
    with pytest.raises(ValueError, match="video_encoder 'mean'"):
        VioletConfig(bert="x", video_encoder="mean")
    with pytest.raises(ValueError, match="unknown|extra"):
        VioletConfig(bert="x", not_a_key=1)


def test_missing_bert_folder_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="save_pretrained folder"):
        Violet(VioletConfig(bert=str(tmp_path / "nope"), **tiny()))


# ----------------------------------------------------------------------------- trunk


def test_real_backbone_layout_feeds_the_cross_modal_encoder(bert_dir):
    """A reduced torchvision swin3d_t (width 4, 4 stages of one block) as the backbone: its last
    stage's 2 x 2 tokens per 64-px frame, 8 x 4 wide, projected to BERT's width with p_v added."""
    model = make(bert_dir, visual="swin3d_t", swin3d_embed_dim=4, swin3d_depths=(1, 1, 1, 1),
                 swin3d_heads=(1, 1, 2, 2))
    assert model.video_proj.in_features == model.cfg.visual_dim == 32
    ids, mask = text(model)
    out = model(frames(), ids, mask)
    assert out["video"].shape == (B, T * 2 * 2, model.width)
    assert "features.6.0.attn.relative_position_bias_table" in dict(model.video_encoder.swin.named_parameters())


def test_output_shapes(bert_dir):
    model = make(bert_dir)
    ids, mask = text(model)
    out = model(frames(), ids, mask)
    Nv, D = T * 2 * 2, model.width
    assert out["video"].shape == (B, Nv, D)
    assert out["cls"].shape == (B, D)
    assert out["text"].shape == (B, ids.shape[1], D)
    assert torch.equal(out["cls"], out["text"][:, 0])
    assert model.vtm_logits(out["cls"]).shape == (B, 2)
    assert model.mlm_logits(out["text"]).shape == (B, ids.shape[1], len(model.tokenizer))
    assert model.mvm_logits(out["video"]).shape == (B, Nv, 64)
    assert "attentions" not in out


def test_encoder_sees_video_then_cls_then_text(bert_dir):
    model = make(bert_dir)
    ids, mask = text(model)
    x = frames()
    seq = encoder_input(model, x, ids, mask)
    Nv = T * 4
    # the independent recipe for the video: LayerNorm(Linear(Swin grid) + p_s + p_t), flattened in (t, h, w) order
    grid = model.video_proj(model.video_encoder(x))  # (B, T, H', W', D)
    video = model.video_norm(grid + model.video_pos_spatial + model.video_pos_temporal[:, :T]).flatten(1, 3)
    words = model.embeddings.word_embeddings.weight
    emb = model.embeddings  # the independent recipe: LayerNorm(word + position + segment 0)
    expected_text = emb.LayerNorm(words[ids] + emb.position_embeddings.weight[:ids.shape[1]]
                                  + emb.token_type_embeddings.weight[0])
    assert seq.shape == (B, Nv + ids.shape[1], model.width)
    assert (ids[:, 0] == model.tokenizer.cls_token_id).all()
    torch.testing.assert_close(seq[:, :Nv], video)
    torch.testing.assert_close(seq[:, Nv], expected_text[:, 0])  # [CLS] embedding with p_x at 0
    torch.testing.assert_close(seq[:, Nv:], expected_text)


def test_one_encoder_video_and_text_attend_to_each_other(bert_dir):
    model = make(bert_dir)
    ids, mask = text(model)
    x = frames()
    base = model(x, ids, mask)
    other_ids = ids.clone()
    other_ids[:, 1] = model.tokenizer.mask_token_id
    assert not torch.allclose(model(x, other_ids, mask)["video"], base["video"], atol=1e-5)
    assert not torch.allclose(model(frames(seed=7), ids, mask)["text"], base["text"], atol=1e-5)


def test_text_padding_is_masked(bert_dir):
    model = make(bert_dir)
    ids, mask = text(model)
    L = ids.shape[1]
    long_ids, long_mask = text(model, length=L + 5)
    assert torch.equal(long_ids[:, :L], ids) and long_mask[:, L:].sum() == 0
    x = frames()
    short, padded = model(x, ids, mask, output_attentions=True), model(x, long_ids, long_mask, output_attentions=True)
    torch.testing.assert_close(padded["video"], short["video"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded["cls"], short["cls"], atol=1e-5, rtol=1e-5)
    real = mask.bool()
    torch.testing.assert_close(padded["text"][:, :L][real], short["text"][real], atol=1e-5, rtol=1e-5)
    Nv = short["video"].shape[1]
    keys = torch.cat([torch.ones(B, Nv), long_mask], dim=1).bool()  # (B, N)
    for b in range(B):
        assert padded["attentions"][:, b, :, :, ~keys[b]].max() == 0  # no query looks at padding


def test_attention_probs_for_attended_masking(bert_dir):
    model = make(bert_dir)
    ids, mask = text(model)
    probs, video_slice, text_slice = model.attention_probs(frames(), ids, mask)
    N = T * 4 + ids.shape[1]
    assert probs.shape == (2, B, 4, N, N)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, B, 4, N))
    assert (video_slice.start, video_slice.stop, text_slice.stop) == (0, T * 4, N)
    assert model.bert_config._attn_implementation == "sdpa"  # eager only while recording
    video_scores, text_scores = masking.cross_attention_scores(probs, video_slice, text_slice)
    assert video_scores.shape == (B, T * 4) and text_scores.shape == (B, ids.shape[1])


def test_image_is_a_one_frame_video(bert_dir):
    model = make(bert_dir)
    ids, mask = text(model)
    out = model(frames(t=1), ids, mask)
    assert out["video"].shape == (B, 4, model.width)


@pytest.mark.parametrize("encoder, tokens", [("swin", T * 4), ("mean", 4), ("concat", T * 4)])
def test_video_encoder_ablations(bert_dir, encoder, tokens):
    model = make(bert_dir, video_encoder=encoder, use_mvm=encoder != "mean")
    ids, mask = text(model)
    x = frames()
    out = model(x, ids, mask)
    assert out["video"].shape == (B, tokens, model.width)
    assert model.video_encoder.num_tokens(T) == tokens
    order = torch.tensor([2, 0, 3, 1])
    shuffled = model(x[:, order], ids, mask)
    if encoder == "mean":  # averaging over time forgets the order
        torch.testing.assert_close(shuffled["video"], out["video"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(shuffled["cls"], out["cls"], atol=1e-5, rtol=1e-5)
    else:  # the cross-modal p_t (and the Swin's own for swin) carries the order: frame k's tokens are not just moved
        moved_back = torch.empty_like(shuffled["video"]).view(B, T, 4, -1)
        moved_back[:, order] = shuffled["video"].view(B, T, 4, -1)
        assert not torch.allclose(moved_back.flatten(1, 2), out["video"], atol=1e-4)
        assert not torch.equal(shuffled["cls"], out["cls"])


def test_frame_encoders_have_no_temporal_attention(bert_dir):
    model = make(bert_dir, video_encoder="concat")
    x = frames()
    y = x.clone()
    y[:, 0] = torch.randn(B, 3, S, S)
    before, after = (model.video_encoder(v).view(B, T, 4, -1) for v in (x, y))
    torch.testing.assert_close(after[:, 1:], before[:, 1:])  # other frames untouched
    swin = make(bert_dir)
    before, after = (swin.video_encoder(v).view(B, T, 4, -1) for v in (x, y))
    assert not torch.allclose(after[:, 1], before[:, 1])  # Video Swin mixes frames 0 and 1


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("n", [2, 3, 8])
def test_derangement_and_vtm_pairs(n):
    g = torch.Generator().manual_seed(n)
    for _ in range(20):
        d = derangement(n, g)
        assert sorted(d.tolist()) == list(range(n)) and (d != torch.arange(n)).all()
    videos, texts, labels = vtm_pairs(n, g)
    assert videos.shape == texts.shape == labels.shape == (2 * n,)
    assert torch.equal(videos[:n], texts[:n]) and (labels[:n] == 1).all()  # positives: own text
    assert (videos[n:] != texts[n:]).all() and (labels[n:] == 0).all()  # negatives: another sample's text
    assert torch.equal(videos[n:], torch.arange(n))  # one negative per video
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, g)


def test_vtm_loss_matches_a_by_hand_cross_entropy(bert_dir):
    logits, labels = torch.randn(6, 2), torch.tensor([1, 1, 1, 0, 0, 0])
    p = logits.exp() / logits.exp().sum(1, keepdim=True)
    torch.testing.assert_close(vtm_loss(logits, labels), -p[torch.arange(6), labels].log().mean())

    model = make(bert_dir)
    ids, mask = text(model)
    x = frames()
    loss = model.vtm_step(x, ids, mask, torch.Generator().manual_seed(3))
    videos, texts, labels = vtm_pairs(B, torch.Generator().manual_seed(3))
    by_hand = []
    for v, t, y in zip(videos.tolist(), texts.tolist(), labels.tolist()):  # pair by pair, unbatched
        cls = model(x[v:v + 1], ids[t:t + 1], mask[t:t + 1])["cls"]
        by_hand.append(-model.vtm_logits(cls).log_softmax(-1)[0, y])
    torch.testing.assert_close(loss, torch.stack(by_hand).mean(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loss_fn, shape", [(mlm_loss, (2, 5)), (mvm_loss, (2, 3, 2, 2))])
def test_masked_losses_cover_masked_positions_only(loss_fn, shape):
    g = torch.Generator().manual_seed(0)
    K = 11
    labels = torch.randint(0, K, shape, generator=g)
    chosen = torch.rand(shape, generator=g) < 0.4
    chosen.view(-1)[0] = True
    labels = labels.masked_fill(~chosen, masking.IGNORE)
    # MLM logits follow the labels' shape; MVM logits are per video token, (B, T*H*W, K)
    logits = torch.randn(*shape, K, generator=g)
    if loss_fn is mvm_loss:
        logits = logits.flatten(1, -2)
    flat_labels, flat_logits = labels.flatten(), logits.reshape(-1, K)
    keep = flat_labels != masking.IGNORE
    expected = F.cross_entropy(flat_logits[keep], flat_labels[keep])
    torch.testing.assert_close(loss_fn(logits, labels), expected)
    nothing = torch.full_like(labels, masking.IGNORE)
    assert loss_fn(logits, nothing).item() == 0.0  # no masked position: zero, not NaN


def test_combine_losses_follows_switches_and_weights():
    losses = {"vtm": torch.tensor(1.0), "mlm": torch.tensor(2.0), "mvm": torch.tensor(3.0)}
    cfg = VioletConfig(bert="x", vtm_weight=0.5, mlm_weight=2.0, mvm_weight=10.0)
    assert combine_losses(losses, cfg).item() == pytest.approx(0.5 + 4.0 + 30.0)
    cfg = VioletConfig(bert="x", use_mvm=False)
    assert combine_losses(losses, cfg).item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="switched-on"):
        combine_losses({}, cfg)


def masked_batch(model: Violet, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids, mask = text(model)
    x = frames()
    tok = model.tokenizer
    masked_ids, mlm_labels = masking.mlm_mask(ids, mask, mask_token_id=model.mask_token_id, vocab_size=len(tok),
                                              special_ids=tok.all_special_ids, generator=g, prob=0.3)
    video_mask = masking.blockwise_video_mask(B, T, 2, 2, generator=g, min_area=1)
    codes = torch.randint(0, 64, (B, T, 2, 2), generator=g)
    return dict(frames=x, input_ids=ids, attention_mask=mask, masked_ids=masked_ids, mlm_labels=mlm_labels,
                masked_frames=masking.apply_video_mask(x, video_mask, 32),
                mvm_labels=masking.mvm_labels(codes, video_mask))


def test_pretrain_losses_need_their_labels(bert_dir):
    model = make(bert_dir)
    batch = masked_batch(model)
    del batch["mvm_labels"]
    with pytest.raises(ValueError, match="mvm_labels"):
        model.pretrain_losses(**batch, generator=torch.Generator().manual_seed(0))
    model = make(bert_dir, use_mvm=False)
    out = model.pretrain_losses(**batch, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"vtm", "mlm", "loss"}
    torch.testing.assert_close(out["loss"], out["vtm"] + out["mlm"])


def test_pretrain_heads_run_only_on_masked_positions_yet_equal_the_full_losses(bert_dir):
    model = make(bert_dir).eval()
    batch = masked_batch(model)
    out = model.pretrain_losses(**batch, generator=torch.Generator().manual_seed(0))
    states = model(batch["masked_frames"], batch["masked_ids"], batch["attention_mask"])
    torch.testing.assert_close(out["mlm"], mlm_loss(model.mlm_logits(states["text"]), batch["mlm_labels"]))
    torch.testing.assert_close(out["mvm"], mvm_loss(model.mvm_logits(states["video"]), batch["mvm_labels"]))
    nothing = torch.full_like(batch["mlm_labels"], masking.IGNORE)
    assert masked_head_loss(model.mlm_head, states["text"], nothing, "mlm").item() == 0.0


def test_gradients_reach_every_part_and_steps_lower_the_loss(bert_dir):
    model = make(bert_dir).train()
    batch = masked_batch(model)
    out = model.pretrain_losses(**batch, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"vtm", "mlm", "mvm", "loss"}
    out["loss"].backward()
    parts = {"swin patch embedding": model.video_encoder.swin.patch_embed.weight,
             "swin p_t": model.video_encoder.swin.pos_temporal,
             "swin block": model.video_encoder.swin.blocks[-1].attn.qkv.weight,
             "projection": model.video_proj.weight, "word embeddings": model.embeddings.word_embeddings.weight,
             "BERT layer": model.encoder.layer[0].attention.self.query.weight,
             "VTM head": model.vtm_head[-1].weight, "MLM head": model.mlm_head.predictions.transform.dense.weight,
             "MVM head": model.mvm_head.weight}
    for name, p in parts.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.mlm_head.predictions.decoder.weight is model.embeddings.word_embeddings.weight  # tied

    model = make(bert_dir)  # eval: no dropout, so the same batch gives the same loss
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.98), weight_decay=1e-3)
    losses = []
    for _ in range(10):
        loss = model.pretrain_losses(**batch, generator=torch.Generator().manual_seed(0))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


# ----------------------------------------------------------------------------- downstream


def test_retrieval_scores_every_text_video_pair(bert_dir):
    model = make(bert_dir, head="retrieval")
    ids, mask = text(model, CAPTIONS[:4])
    x = frames(n=3)
    scores = model.retrieval_scores(x, ids, mask, chunk=5)
    assert scores.shape == (4, 3)
    for t, v in [(0, 0), (3, 1), (2, 2)]:
        cls = model(x[v:v + 1], ids[t:t + 1], mask[t:t + 1])["cls"]
        logits = model.vtm_logits(cls)[0]
        torch.testing.assert_close(scores[t, v], logits[1] - logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.retrieval_scores(x, ids, mask, chunk=64), scores, atol=1e-5, rtol=1e-5)


def test_multiple_choice_scores_each_option(bert_dir):
    model = make(bert_dir, head="mcqa", num_options=3)
    tok = model.tokenizer
    questions = ["what moves", "which shape", "where does it go"]
    options = [["square", "circle", "star"], ["triangle", "star", "square"], ["left", "right", "up"]]
    enc = tok([q for q, opts in zip(questions, options) for _ in opts], [o for opts in options for o in opts],
              padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"].view(3, 3, -1), enc["attention_mask"].view(3, 3, -1)
    assert (ids == tok.sep_token_id).sum(-1).eq(2).all()  # [CLS] Q [SEP] A [SEP]
    x = frames()
    scores = model.mcqa_scores(x, ids, mask)
    assert scores.shape == (3, 3)
    cls = model(x[1:2], ids[1, 2:3], mask[1, 2:3])["cls"]
    logits = model.vtm_logits(cls)[0]
    torch.testing.assert_close(scores[1, 2], logits[1] - logits[0], atol=1e-5, rtol=1e-5)
    loss = F.cross_entropy(scores, torch.tensor([0, 2, 1]))
    loss.backward()
    assert torch.isfinite(loss) and model.vtm_head[0].weight.grad is not None


def test_open_ended_qa_classifies_answers(bert_dir):
    model = make(bert_dir, head="oeqa", num_answers=17)
    ids, mask = text(model)
    logits = model.oeqa_logits(frames(), ids, mask)
    assert logits.shape == (B, 17)
    F.cross_entropy(logits, torch.tensor([0, 5, 16])).backward()
    assert model.answer_head[-1].weight.grad is not None
    with pytest.raises(ValueError, match="oeqa"):
        make(bert_dir).oeqa_logits(frames(), ids, mask)
