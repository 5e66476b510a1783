"""ChefFusion's model: what trains, the three losses against independent computations, the [IMG]
tokens, and generate() for the five task types. Tiny backbones, in process (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polymodal.models.cheffusion.backbones import load_lm, write_tiny_backbones
from polymodal.models.cheffusion.config import CheffusionConfig, tiny
from polymodal.models.cheffusion.model import ChefFusion
from polymodal.models.cheffusion.synth import sample_rows
from polymodal.text import encode_texts

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, str]:
    rows = sample_rows(np.random.default_rng(0), 64)
    return write_tiny_backbones(str(tmp_path_factory.mktemp("cf-backbones")), rows["recipe"], pretrain_steps=20)


def _model(backbones, **overrides) -> ChefFusion:
    torch.manual_seed(0)
    cfg = CheffusionConfig(**backbones, **{**tiny(), **overrides})
    lm, tok = load_lm(cfg.lm)
    return ChefFusion(cfg, lm, tok)


def _batch(n: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    rows = sample_rows(np.random.default_rng(seed), n)
    gen = torch.Generator().manual_seed(seed)
    return {"recipe_bytes": torch.from_numpy(encode_texts(rows["recipe"], max_bytes=4096)),
            "clip_image": torch.randn(n, 32, generator=gen), "sd_target": torch.randn(n, 16, 32, generator=gen)}


def test_only_w_recipe_img_rows_and_mapper_receive_gradients(backbones):
    model = _model(backbones)
    model(_batch())["loss"].backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    assert {n.split(".")[0] for n in trainable} == {"w_recipe", "img", "mapper"}
    assert "mapper.queries" in trainable and "img.input" in trainable
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("lm."))
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < n_train < sum(p.numel() for p in model.parameters())


def test_a_deepspeed_step_leaves_the_frozen_vocabulary_bit_identical(backbones, tmp_path):
    """DeepSpeed (ZeRO-2, CPU, gloo, AdamW with weight decay): the [IMG] rows, W_recipe and the
    mapper move; every frozen LM tensor, the vocabulary rows included, is bit-identical."""
    import deepspeed

    from support import deepspeed_process_group

    from polymodal.config import validate_config
    from polymodal.train.deepspeed_config import build_deepspeed_config

    model = _model(backbones)
    cfg = validate_config({"task": "cheffusion.recipes", "model": {"preset": "tiny", **backbones},
                           "data": {"train": str(tmp_path)}, "optim": {"lr": 1e-2, "weight_decay": 0.1}})
    deepspeed_process_group()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    moving = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                                      config=build_deepspeed_config(cfg, world_size=1, device_type="cpu"))
    for _ in range(2):
        loss = engine(_batch())["loss"]
        engine.backward(loss)
        engine.step()
    params = dict(engine.module.named_parameters())
    vocab = model.lm.get_input_embeddings().weight
    assert any(vocab is p for n, p in params.items() if n in frozen)
    for name, before in frozen.items():
        assert torch.equal(params[name].detach(), before), name
    for name in ("img.input", "w_recipe.weight", "mapper.queries", "mapper.proj_out.weight"):
        assert not torch.equal(params[name].detach(), moving[name]), f"{name} did not train"


def test_text_that_spells_img_tokens_stays_text(backbones):
    """The [IMG] tokens are not in the tokenizer: "[IMG1][IMG2]" in a recipe is tokenized as the
    characters it is (frozen rows), and only with_img_tokens places the trainable ones."""
    model = _model(backbones)
    assert len(model.tokenizer) == model.n_text
    ids, lengths = model.tokenize(["tomato soup [IMG1][IMG2]"], eos=False)
    row = ids[0, :int(lengths[0])].tolist()
    assert len(row) > 4 and all(i < model.n_text for i in row)
    assert "img1" in model.decode(row).replace(" ", "").lower()
    emb = model.embed(ids)
    assert torch.equal(emb[0, :int(lengths[0])], model.lm.get_input_embeddings().weight[row])
    full, _, pos = model.with_img_tokens(ids, lengths)
    assert full[0, pos[0]].tolist() == [model.vocab + j for j in range(model.cfg.m)]
    assert torch.equal(model.embed(full)[0, pos[0, 0]], model.img.input[0])


def _padded_opt(backbones, tmp_path, extra: int) -> str:
    """The fixture's OPT rebuilt with ``extra`` embedding rows more than its tokenizer has
    tokens (OPT-6.7B: 50272 rows, 50265 tokens), written by ``save_pretrained``."""
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    tok = AutoTokenizer.from_pretrained(backbones["lm"])
    config = OPTConfig.from_pretrained(backbones["lm"])
    config.vocab_size = len(tok) + extra
    torch.manual_seed(0)
    out = str(tmp_path / "opt-padded")
    OPTForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_img_ids_come_after_every_embedding_row_of_an_lm_with_more_rows_than_tokens(backbones, tmp_path):
    """An OPT whose embedding has 7 rows more than its tokenizer: the [IMG] tokens take ids
    V..V+m-1 past every row (l_p's target is V), a text spelling [IMG1] stays in the frozen rows,
    and the rows without a token are never generated even where the LM prefers them."""
    lm_dir = _padded_opt(backbones, tmp_path, extra=7)
    model = _model({**backbones, "lm": lm_dir})
    rows = model.lm.get_input_embeddings().num_embeddings
    assert (model.vocab, model.n_text) == (rows, rows - 7)
    ids, lengths = model.tokenize(["beet pie [IMG1]"], eos=False)
    assert int(ids.max()) < model.n_text
    full, _, pos = model.with_img_tokens(ids, lengths)
    assert full[0, pos[0]].tolist() == list(range(rows, rows + model.cfg.m))
    with torch.no_grad():
        logits, _ = model.img_states(ids, lengths)
        assert logits.shape[-1] == rows + model.cfg.m
        # make the LM prefer the untokenizable rows: their (tied) output rows along the hidden state
        h = model.hidden(*_embed_and_mask(model, "beet pie")).last_hidden_state[0, -1]
        weight = model.lm.get_input_embeddings().weight
        weight[model.n_text:] = 50 * h / h.norm()
        weight[model.eos] = -50 * h / h.norm()  # and no stop at once (eos is never an input here)
        assert model.n_text <= int(model.logits(h).argmax()) < rows
    new, _ = model.greedy_text(*model.tokenize(["beet pie"], eos=False), None, allow_img=False, max_new_tokens=6)
    assert new[0] and all(t < model.n_text for t in new[0])


def test_a_tokenizer_longer_than_the_embedding_is_refused(backbones):
    from polymodal.models.cheffusion.backbones import load_lm

    lm, tok = load_lm(backbones["lm"])
    tok.add_tokens(["zzextra1", "zzextra2"])
    with pytest.raises(ValueError, match="tokenizer has .* tokens, the input embedding"):
        ChefFusion(CheffusionConfig(**backbones, **tiny()), lm, tok)


def test_missing_folders_and_unknown_hub_ids_name_the_field(backbones, tmp_path):
    from polymodal.errors import PolymodalError
    from polymodal.models.cheffusion.backbones import load_clip, load_lm, load_sd

    with pytest.raises(PolymodalError, match=r"model\.lm: .*no-such-opt.* is not a folder"):
        load_lm(str(tmp_path / "no-such-opt"))
    with pytest.raises(PolymodalError, match=r"model\.clip: cannot load 'polymodal-test/no-such-clip'"):
        load_clip("polymodal-test/no-such-clip")  # HF_HUB_OFFLINE=1: not cached
    with pytest.raises(PolymodalError, match=r"model\.sd: .* is not a folder"):
        load_sd(backbones["sd"] + "/scheduler/scheduler_config.json")


def test_build_model_loads_the_lm_straight_into_its_dtype(backbones, monkeypatch):
    """``lm_dtype: bf16``: the LM is read into bf16 through meta-device init (no fp32 copy first)
    while W_recipe, the [IMG] rows and the mapper stay fp32; that mixed model (as evaluated on a
    GPU without DeepSpeed) computes finite losses and generates."""
    from polymodal import cache
    from polymodal.models.cheffusion.task import RecipeTask

    seen = []
    real = cache.pretrained_kwargs
    monkeypatch.setattr(cache, "pretrained_kwargs", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    model = RecipeTask().build_model(CheffusionConfig(**backbones, **{**tiny(), "lm_dtype": "bf16"}))
    assert seen and seen[0]["dtype"] == torch.bfloat16 and seen[0]["low_cpu_mem_usage"] is True
    assert {p.dtype for p in model.lm.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    with torch.no_grad():
        out = model(_batch(2))
    assert all(torch.isfinite(out[k]).all() for k in ("l_r", "l_p", "l_g"))
    assert isinstance(model.generate("i2t", clip_image=torch.randn(2, 32), max_new_tokens=4)[0].text, str)


def test_img_tokens_go_right_after_each_text(backbones):
    model = _model(backbones, m=3)
    v, pad = model.vocab, model.pad
    ids = torch.tensor([[5, 6, 7, pad], [5, 8, pad, pad]])
    full, mask, pos = model.with_img_tokens(ids, torch.tensor([3, 2]))
    assert full.tolist() == [[5, 6, 7, v, v + 1, v + 2, pad], [5, 8, v, v + 1, v + 2, pad, pad]]
    assert mask.tolist() == [[1] * 6 + [0], [1] * 5 + [0] * 2]
    assert pos.tolist() == [[3, 4, 5], [2, 3, 4]]


def test_recipe_loss_equals_the_lm_loss_on_the_same_embeddings(backbones):
    """l_r of each row = the causal-LM cross-entropy of transformers' own forward (its logits,
    plus the [IMG] columns: the vocabulary is V + m) on ``[W_recipe(v); bos recipe eos]`` run
    alone and unpadded, the k prefix positions and bos unlabelled."""
    model = _model(backbones)
    batch = _batch(3)
    texts = [bytes(r).rstrip(b"\0").decode() for r in batch["recipe_bytes"].numpy().astype(np.uint8)]
    ids, lengths = model.tokenize(texts, eos=True)
    with torch.no_grad():
        l_r = model.recipe_nll(batch["clip_image"], ids, lengths)
        for i in range(3):
            row = ids[i:i + 1, :int(lengths[i])]
            x = torch.cat([model.image_prefix(batch["clip_image"][i:i + 1]), model.embed(row)], dim=1)
            out = model.lm(inputs_embeds=x, output_hidden_states=True)
            logits = torch.cat([out.logits, out.hidden_states[-1] @ model.img.input.t()], dim=-1)[0]
            k = model.cfg.k
            ref = torch.nn.functional.cross_entropy(logits[k:-1], row[0, 1:])
            assert float(l_r[i]) == pytest.approx(float(ref), rel=1e-4, abs=1e-5)


def test_img_token_loss_and_mapper_input_match_a_direct_computation(backbones):
    """l_p = -log softmax(logits over vocab + [IMG])[IMG1] at the last recipe token; the mapper
    reads the LM's last hidden states at the [IMG] positions concatenated with their embeddings."""
    model = _model(backbones)
    batch = _batch(2)
    with torch.no_grad():
        out = model(batch)
        texts = [bytes(r).rstrip(b"\0").decode() for r in batch["recipe_bytes"].numpy().astype(np.uint8)]
        for i in range(2):
            ids, n = model.tokenize([texts[i]], eos=False)
            seq = torch.cat([ids[:, :int(n[0])], model.vocab + torch.arange(model.cfg.m)[None]], dim=1)
            x = model.embed(seq)
            h = model.lm.base_model(inputs_embeds=x).last_hidden_state
            t = int(n[0])
            logits = torch.cat([model.lm.lm_head(h[0, t - 1]), h[0, t - 1] @ model.img.input.t()])
            assert float(out["l_p"][i]) == pytest.approx(float(-logits.log_softmax(-1)[model.vocab]), rel=1e-4)
            pred = model.mapper(torch.cat([h[:, t:], x[:, t:]], dim=-1))
            mse = float(((pred - batch["sd_target"][i:i + 1]) ** 2).mean())
            assert float(out["l_g"][i]) == pytest.approx(mse, rel=1e-4)


def test_gen_loss_options(backbones):
    pred, target = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    diff = (pred - target).numpy() ** 2
    assert np.allclose(_model(backbones).gen_loss(pred, target).numpy(), diff.mean((1, 2)), rtol=1e-5)
    assert np.allclose(_model(backbones, gen_loss="l2").gen_loss(pred, target).numpy(), diff.sum(-1).mean(-1), rtol=1e-5)


def test_greedy_text_with_cache_equals_full_recomputation(backbones):
    """The KV-cached, left-padded batch decoder writes what argmax over a full forward of the
    growing sequence writes, row by row."""
    model = _model(backbones).eval()
    prompts = ["tomato soup", "beet pie. ingredients: beet"]
    ids, lengths = model.tokenize(prompts, eos=False)
    prefix = model.image_prefix(torch.randn(2, 32, generator=torch.Generator().manual_seed(3)))
    new, _ = model.greedy_text(ids, lengths, prefix, allow_img=False, max_new_tokens=8)
    with torch.no_grad():
        for i in range(2):
            seq = ids[i:i + 1, :int(lengths[i])]
            ref = []
            for _ in range(8):
                x = torch.cat([prefix[i:i + 1], model.embed(seq)], dim=1)
                logits = model.logits(model.lm.base_model(inputs_embeds=x).last_hidden_state[:, -1])
                logits[:, model.vocab:] = float("-inf")
                tok = int(logits.argmax(-1))
                if tok == model.eos:
                    break
                ref.append(tok)
                seq = torch.cat([seq, torch.tensor([[tok]])], dim=1)
            assert new[i] == ref


def test_generate_covers_the_five_modes(backbones):
    model = _model(backbones).eval()
    clip = torch.randn(2, 32)
    t2t = model.generate("t2t", texts=["tomato soup", "beet"], max_new_tokens=6)
    assert [g.mode for g in t2t] == ["t2t", "t2t"] and all(not g.images for g in t2t)
    i2t = model.generate("i2t", clip_image=clip, max_new_tokens=6)
    assert all(isinstance(g.text, str) and not g.img_tokens for g in i2t)
    it2t = model.generate("it2t", texts=["a quick one"] * 2, clip_image=clip, max_new_tokens=6)
    assert len(it2t) == 2
    t2i = model.generate("t2i", texts=["tomato soup. ingredients: tomato"] * 2, seeds=[0, 1], steps=2)
    for g in t2i:
        assert g.img_tokens and len(g.images) == 1 and g.images[0].size == (32, 32)
    assert not np.array_equal(np.asarray(t2i[0].images[0]), np.asarray(t2i[1].images[0]))  # other seed
    with pytest.raises(ValueError, match="non-empty text"):
        model.generate("t2i", texts=["  "])
    with pytest.raises(ValueError, match="not one of"):
        model.generate("x2y", texts=["a"])


def test_t2ti_draws_once_the_lm_writes_img1(backbones):
    """Make [IMG1] the LM's first choice (its output row along the direction of every hidden
    state): t2ti stops the text there, forces the other [IMG] tokens and draws an image."""
    model = _model(backbones).eval()
    with torch.no_grad():
        h = model.hidden(*_embed_and_mask(model, "tomato soup")).last_hidden_state[0, -1]
        model.img.input[0] = 50 * h / h.norm()
    out = model.generate("t2ti", texts=["tomato soup"], steps=2)[0]
    assert out.img_tokens and len(out.images) == 1 and out.images[0].size == (32, 32)
    assert not isinstance(out.items[-1], str)  # text (if any) comes first, then the image


def _embed_and_mask(model, text):
    ids, n = model.tokenize([text], eos=False)
    return model.embed(ids[:, :int(n[0])]), torch.ones(1, int(n[0]), dtype=torch.long)


def test_a_row_generates_the_same_alone_and_in_a_batch(backbones):
    model = _model(backbones).eval()
    texts = ["tomato soup", "beet pie. ingredients: beet, butter"]
    both = model.generate("t2i", texts=texts, seeds=[7, 8], steps=2)
    alone = model.generate("t2i", texts=texts[1:], seeds=[8], steps=2)
    assert np.abs(np.asarray(both[1].images[0], dtype=int) - np.asarray(alone[0].images[0], dtype=int)).max() <= 1
    clip = torch.randn(2, 32)
    assert model.generate("i2t", clip_image=clip, max_new_tokens=8)[1].text == \
        model.generate("i2t", clip_image=clip[1:], max_new_tokens=8)[0].text


def test_bf16_forward_and_backward_are_finite(backbones):
    """The dtype path DeepSpeed bf16 takes on GPU (model and float batch columns in bf16),
    checked on CPU: the losses are finite, accumulate in float32, and every trainable tensor gets
    a finite gradient."""
    model = _model(backbones).to(torch.bfloat16)
    batch = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in _batch().items()}
    out = model(batch)
    assert all(out[k].dtype == torch.float32 and torch.isfinite(out[k]).all() for k in ("l_r", "l_p", "l_g"))
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g.float()).all() for g in grads)


def _eval_batch(recipes: list[str], ids: list[str]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    n = len(recipes)
    return {"recipe_bytes": torch.from_numpy(encode_texts(recipes, max_bytes=4096)),
            "id_bytes": torch.from_numpy(encode_texts(ids)),
            "clip_image": torch.randn(n, 32, generator=gen), "sd_target": torch.randn(n, 16, 32, generator=gen)}


class _NoEos(torch.nn.Module):
    """An output layer whose EOS logit is -inf: the LM never stops by itself."""

    def __init__(self, head: torch.nn.Module, eos: int):
        super().__init__()
        self.head, self.eos = head, eos

    def forward(self, h):
        out = self.head(h)
        out[..., self.eos] = float("-inf")
        return out


def test_evaluation_writes_whole_recipes_and_records_the_cap(backbones, monkeypatch):
    """Unset eval_max_new_tokens: the cap is the longest reference of the batch plus EOS, not
    generate()'s max_new_tokens (8 here; evaluation used it before), so an LM that never stops
    writes that many tokens (gen_at_cap 1) and no reference is longer (ref_over_cap 0). A set
    cap is used as is and its check counts the references it cuts."""
    from polymodal.models.cheffusion.task import RecipeTask, eval_text_cap

    task = RecipeTask()
    long = "tomato soup. ingredients: " + ", ".join(["tomato", "salt", "butter", "basil"] * 3) + "."
    recipes = [long, "beet pie. ingredients: beet, butter."]
    model = _model(backbones, eval_image_share=0.0, max_new_tokens=8).eval()
    model.lm.lm_head = _NoEos(model.lm.lm_head, model.eos)
    caps = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: caps.append(k["max_new_tokens"]) or real(*a, **k))
    tokens = model.text_tokens(recipes)
    assert tokens[0] > 2 * 8 and eval_text_cap(model.cfg, np.asarray(tokens)) == tokens[0] + 1
    out = task.predict(model, _eval_batch(recipes, ["a", "b"]))
    assert caps == [tokens[0] + 1]
    assert len(model.tokenizer(str(out["generated"][0]), add_special_tokens=False).input_ids) > 2 * 8
    metrics = task.metrics(out)
    assert metrics["gen_at_cap"] == 1.0 and metrics["ref_over_cap"] == 0.0
    assert metrics["clip_sim_rows"] == 0 and "clip_sim" not in metrics

    short_cap = tokens[1] + 1  # the short reference and its EOS fit, the long one does not
    model.cfg = model.cfg.model_copy(update={"eval_max_new_tokens": short_cap})
    metrics = task.metrics(task.predict(model, _eval_batch(recipes, ["a", "b"])))
    assert caps[-1] == short_cap and metrics["ref_over_cap"] == 0.5 and metrics["gen_at_cap"] == 1.0


def test_clip_sim_scores_every_row_or_a_seeded_sample_independent_of_batching(backbones):
    """eval_image_share 1: every row gets an image and a clip_sim (clip_sim_rows = rows). Less:
    a sample chosen by (seed, row id), the same rows and images however the rows are batched,
    about the share of a split, and another sample under another seed."""
    from polymodal.models.cheffusion.task import RecipeTask, clip_sim_rows

    ids = [f"r{i:03d}" for i in range(400)]
    rows, seeds = clip_sim_rows(ids, 0.25, seed=3)
    assert 70 <= len(rows) <= 130
    assert [ids[i] for i in rows] == [ids[i] for i in clip_sim_rows(ids[:200], 0.25, 3)[0]] + \
        [ids[200 + i] for i in clip_sim_rows(ids[200:], 0.25, 3)[0]]
    assert rows != clip_sim_rows(ids, 0.25, seed=4)[0]
    assert clip_sim_rows(ids, 1.0, 3)[0] == list(range(400)) and clip_sim_rows(ids, 0.0, 3)[0] == []
    assert len(set(seeds)) == len(seeds)

    task = RecipeTask()
    rows4 = sample_rows(np.random.default_rng(2), 4)
    recipes, names = [str(r) for r in rows4["recipe"]], ["d0", "d1", "d2", "d3"]
    model = _model(backbones, eval_max_new_tokens=2, eval_image_share=1.0, eval_image_seed=1).eval()
    out = task.predict(model, _eval_batch(recipes, names))
    assert np.isfinite(out["clip_sim"]).all() and task.metrics(out)["clip_sim_rows"] == 4
    picked = clip_sim_rows(names, 0.5, 1)[0]
    assert 0 < len(picked) < 4  # this seed picks some rows, not all
    model.cfg = model.cfg.model_copy(update={"eval_image_share": 0.5})
    half = task.predict(model, _eval_batch(recipes, names))
    assert sorted(np.flatnonzero(np.isfinite(half["clip_sim"])).tolist()) == picked
    assert np.allclose(half["clip_sim"][picked], out["clip_sim"][picked], atol=2e-3)  # same row, same image
