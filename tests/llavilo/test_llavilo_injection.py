"""Gated video injection into a frozen tiny LLaMA: exactness at init, locality, gradients, anchors."""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from polymodal.models.llavilo.injection import (  # noqa: E402
    InjectedLlama,
    anchor_positions,
    format_trainable_share,
    gated_prefix_attention,
    text_positions,
    trainable_share,
)

HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB = 64, 4, 4, 2, 128
B, T, LV, J = 2, 9, 5, 3


@pytest.fixture(scope="module")
def llm_path(tmp_path_factory):
    """A seeded random LLaMA written with save_pretrained (the path real checkpoints take)."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, vocab_size=VOCAB,
        max_position_embeddings=64,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def load(path):
    return transformers.LlamaForCausalLM.from_pretrained(path).eval()


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -2:] = 0  # right padding in the second sample: the mask path, not is_causal
    video = torch.randn(B, LV, HIDDEN, generator=g)
    return ids, mask, video


def layer_outputs(llm):
    """Record every decoder layer's output hidden states; returns (store, handles)."""
    store, handles = {}, []
    for i, layer in enumerate(llm.model.layers):
        def hook(mod, args, out, i=i):
            store[i] = out[0] if isinstance(out, tuple) else out
        handles.append(layer.register_forward_hook(hook))
    return store, handles


def set_gates(model, value: float = 0.7):
    with torch.no_grad():
        for k, prefix in enumerate(model.prefixes):
            prefix.gate.copy_(value * torch.linspace(0.5, 1.5, HEADS) * (k + 1))


@pytest.mark.parametrize("top_n", [1, 2, 4])
def test_init_logits_equal_frozen_model(llm_path, top_n):
    ids, mask, video = batch()
    with torch.no_grad():
        reference = load(llm_path)(input_ids=ids, attention_mask=mask).logits
        model = InjectedLlama(load(llm_path), top_n=top_n, num_anchors=J).eval()
        out = model(ids, mask, video)
    assert out.logits.shape == (B, T, VOCAB)
    assert torch.equal(out.logits, reference)
    assert out.anchor_states.shape == (B, J, HIDDEN)
    assert len(out.layer_anchor_states) == top_n
    # Also without padding (sdpa's is_causal path, mask None).
    with torch.no_grad():
        ref2 = load(llm_path)(input_ids=ids).logits
        assert torch.equal(model(ids, None, video).logits, ref2)


@pytest.mark.parametrize("top_n", [1, 2])
def test_nonzero_gates_change_only_injected_layers(llm_path, top_n):
    ids, mask, video = batch()
    frozen = load(llm_path)
    model = InjectedLlama(load(llm_path), top_n=top_n, num_anchors=J).eval()
    set_gates(model)
    ref_store, h1 = layer_outputs(frozen)
    inj_store, h2 = layer_outputs(model.llm)
    with torch.no_grad():
        ref = frozen(input_ids=ids, attention_mask=mask).logits
        out = model(ids, mask, video)
    first = LAYERS - top_n
    for i in range(first):
        assert torch.equal(inj_store[i], ref_store[i]), f"layer {i} below the injection changed"
    assert not torch.allclose(inj_store[first][:, :T], ref_store[first], atol=1e-6)
    assert not torch.allclose(out.logits, ref, atol=1e-6)
    for h in h1 + h2:
        h.remove()


def test_gradients_reach_only_trainable_params(llm_path):
    ids, mask, video = batch()
    model = InjectedLlama(load(llm_path), top_n=2, num_anchors=J).train()
    labels = ids.masked_fill(mask == 0, -100)

    # At init the gates are zero, yet d(out)/d(gate) = softmax . v_prefix != 0.
    out = model(ids, mask, video, labels=labels)
    out.loss.backward()
    for prefix in model.prefixes:
        assert prefix.gate.grad is not None and prefix.gate.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)

    set_gates(model)
    video = video.clone().requires_grad_(True)  # stands in for the projector's output
    out = model(ids, mask, video, labels=labels)
    (out.loss + out.anchor_states.pow(2).mean()).backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert p.requires_grad, f"frozen {name} got a gradient"
        if name.startswith("llm."):
            assert p.grad is None, f"frozen LLM parameter {name} got a gradient"
    for prefix in model.prefixes:
        assert prefix.gate.grad.abs().sum() > 0
        assert prefix.anchors.grad.abs().sum() > 0
    assert model.anchor_queries.weight.grad.abs().sum() > 0
    assert video.grad.abs().sum() > 0


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lower_layers_keep_no_graph(llm_path, checkpointing):
    ids, mask, video = batch()
    model = InjectedLlama(load(llm_path), top_n=2, num_anchors=J,
                          gradient_checkpointing=checkpointing).train()
    set_gates(model)
    store, handles = layer_outputs(model.llm)
    out = model(ids, mask, video.requires_grad_(True), labels=ids)
    for i in range(LAYERS - 2):
        assert not store[i].requires_grad and store[i].grad_fn is None, f"layer {i} records a graph"
    for i in range(LAYERS - 2, LAYERS):
        assert store[i].requires_grad
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    for h in handles:
        h.remove()


def test_checkpointing_gives_same_gradients(llm_path):
    ids, mask, video = batch()
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(3)
        model = InjectedLlama(load(llm_path), top_n=2, num_anchors=J, gradient_checkpointing=ckpt).train()
        set_gates(model)
        calls = {"lower": 0, "top": 0}
        layers = model.llm.model.layers
        layers[0].self_attn.register_forward_hook(lambda *a: calls.__setitem__("lower", calls["lower"] + 1))
        layers[-1].self_attn.register_forward_hook(lambda *a: calls.__setitem__("top", calls["top"] + 1))
        model(ids, mask, video, labels=ids).loss.backward()
        # Checkpointing recomputes the injected layers in the backward, never the lower ones.
        assert calls == {"lower": 1, "top": 2 if ckpt else 1}
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6)


def test_anchor_mask_hides_timestamp_tokens(llm_path):
    ids, mask, video = batch()
    mask = torch.ones_like(mask)
    hidden = torch.zeros(B, T, dtype=torch.bool)
    # The timestamps end the caption target. Hiding is direct: a visible token placed after a
    # hidden one has read it in every layer, so only a hidden suffix keeps the anchors blind.
    hidden[:, 5:] = True
    model = InjectedLlama(load(llm_path), top_n=2, num_anchors=J).eval()
    set_gates(model)

    def anchors(token_ids):
        with torch.no_grad():
            out = model(token_ids, mask, video, hide_from_anchors=hidden)
        return out.anchor_states, out.layer_anchor_states

    base, base_layers = anchors(ids)
    perturbed = ids.clone()
    perturbed[:, 6] = (ids[:, 6] + 1) % VOCAB  # a hidden token
    same, same_layers = anchors(perturbed)
    assert torch.equal(same, base)
    assert all(torch.equal(a, b) for a, b in zip(same_layers, base_layers))
    perturbed = ids.clone()
    perturbed[:, 3] = (ids[:, 3] + 1) % VOCAB  # a visible token
    changed, _ = anchors(perturbed)
    assert not torch.allclose(changed, base, atol=1e-6)
    # A hidden token followed by visible ones leaks through them (documented behaviour).
    hidden[:, 7:] = False
    base, _ = anchors(ids)
    perturbed = ids.clone()
    perturbed[:, 6] = (ids[:, 6] + 1) % VOCAB
    leaked, _ = anchors(perturbed)
    assert not torch.allclose(leaked, base, atol=1e-6)


def test_padded_video_positions_are_ignored(llm_path):
    ids, mask, video = batch()
    model = InjectedLlama(load(llm_path), top_n=2, num_anchors=J).eval()
    set_gates(model)
    video_mask = torch.ones(B, LV, dtype=torch.bool)
    video_mask[0, -2:] = False
    other = video.clone()
    other[0, -2:] = 100.0
    with torch.no_grad():
        a = model(ids, mask, video, video_mask=video_mask).logits
        b = model(ids, mask, other, video_mask=video_mask).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_bad_arguments_are_reported(llm_path):
    with pytest.raises(ValueError, match="top_n"):
        InjectedLlama(load(llm_path), top_n=LAYERS + 1, num_anchors=J)
    model = InjectedLlama(load(llm_path), top_n=2, num_anchors=J)
    ids, mask, video = batch()
    with pytest.raises(ValueError, match="video_tokens"):
        model(ids, mask, video[..., :10])
    with pytest.raises(ValueError, match="per-layer"):
        model(ids, mask, [video] * 3)


def test_trainable_share(llm_path):
    model = InjectedLlama(load(llm_path), top_n=2, num_anchors=J)
    trainable, total, pct = trainable_share(model)
    expected = 2 * (HEADS + J * HIDDEN) + J * HIDDEN
    assert trainable == expected
    assert total == sum(p.numel() for p in model.llm.parameters()) + expected
    print(format_trainable_share(model))
    assert pct < 50.0


def test_attention_function_matches_explicit_formula(llm_path):
    """Per head and query: softmax over [text keys (causal, visible)] + g_h * softmax over the prefix,
    written as loops, against the vectorised function (prefix through the layer's own k/v, GQA)."""
    attn = load(llm_path).model.layers[1].self_attn
    g = torch.Generator().manual_seed(5)
    D, n_text, n_anchor, n_prefix = HIDDEN // HEADS, 4, 2, 3
    n = n_text + n_anchor
    q = torch.randn(1, HEADS, n, D, generator=g)
    k = torch.randn(1, KV_HEADS, n, D, generator=g)
    v = torch.randn(1, KV_HEADS, n, D, generator=g)
    prefix = torch.randn(1, n_prefix, HIDDEN, generator=g)
    gate = torch.randn(HEADS, generator=g)
    visible = torch.tensor([[True, False, True, True]])
    with torch.no_grad():
        out, _ = gated_prefix_attention(
            attn, q, k, v, None, scaling=D**-0.5,
            llavilo_prefix=(prefix, gate, None), llavilo_anchor_visible=visible,
        )
        kp = attn.k_proj(prefix)[0].view(n_prefix, KV_HEADS, D)
        vp = attn.v_proj(prefix)[0].view(n_prefix, KV_HEADS, D)
    expected = torch.zeros(1, n, HEADS, D)
    for h in range(HEADS):
        kv = h // (HEADS // KV_HEADS)
        for i in range(n):
            if i < n_text:
                keys = list(range(i + 1))
            else:
                keys = [j for j in range(n_text) if visible[0, j]] + list(range(n_text, i + 1))
            s = torch.stack([q[0, h, i] @ k[0, kv, j] / math.sqrt(D) for j in keys])
            expected[0, i, h] = s.softmax(0) @ v[0, kv, keys]
            sp = torch.stack([q[0, h, i] @ kp[j, kv] / math.sqrt(D) for j in range(n_prefix)])
            expected[0, i, h] += gate[h] * (sp.softmax(0) @ vp[:, kv])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_without_anchors(llm_path):
    ids, mask, video = batch()
    model = InjectedLlama(load(llm_path), top_n=2, num_anchors=0).eval()
    with torch.no_grad():
        reference = load(llm_path)(input_ids=ids, attention_mask=mask).logits
        out = model(ids, mask, video)
    assert torch.equal(out.logits, reference)
    assert out.anchor_states is None and out.layer_anchor_states == []


def test_anchor_positions_ignore_target_and_padding(llm_path):
    """The anchors sit right after the prompt, whatever follows it: the same prompt gives the same
    anchor states alone (inference), with a hidden caption target (training), batched beside a row
    with a longer prompt and a much longer caption, right- or left-padded. Before the fix the
    anchors took positions after the whole padded input, so each of these moved them."""
    g = torch.Generator().manual_seed(7)
    prompt = torch.randint(0, VOCAB, (5,), generator=g)
    target = torch.randint(0, VOCAB, (3,), generator=g)
    other_prompt = torch.randint(0, VOCAB, (8,), generator=g)
    other_target = torch.randint(0, VOCAB, (12,), generator=g)
    video = torch.randn(2, LV, HIDDEN, generator=g)
    model = InjectedLlama(load(llm_path), top_n=2, num_anchors=J).eval()
    set_gates(model)

    def run(rows, n_prompt, video, left=False):
        """rows: token rows; n_prompt: prompt length per row (the rest is a hidden target)."""
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        hide = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, (r, n) in enumerate(zip(rows, n_prompt)):
            start = width - len(r) if left else 0
            ids[i, start:start + len(r)], mask[i, start:start + len(r)] = r, 1
            hide[i, start + n:start + len(r)] = True
        with torch.no_grad():
            out = model(ids, mask, video, hide_from_anchors=hide)
        return out.anchor_states[0], [s[0] for s in out.layer_anchor_states]

    alone, alone_layers = run([prompt], [5], video[:1])
    cases = {
        "with its target": run([torch.cat([prompt, target])], [5], video[:1]),
        "beside a long caption": run([torch.cat([prompt, target]), torch.cat([other_prompt, other_target])],
                                     [5, 8], video),
        "left-padded": run([torch.cat([prompt, target]), torch.cat([other_prompt, other_target])],
                           [5, 8], video, left=True),
        "prompt only, padded": run([prompt, other_prompt], [5, 8], video),
    }
    for name, (states, layers) in cases.items():
        torch.testing.assert_close(states, alone, rtol=1e-5, atol=1e-5, msg=name)
        for a, b in zip(layers, alone_layers):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    # the positions themselves: text from each row's first real token, anchors after the prompt
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert text_positions(mask).tolist() == [[0, 1, 0, 1, 2], [0, 1, 2, 3, 4]]
    visible = torch.tensor([[False, False, True, True, False], [True, True, True, False, False]])
    assert anchor_positions(visible, 2).tolist() == [[2, 3], [3, 4]]
