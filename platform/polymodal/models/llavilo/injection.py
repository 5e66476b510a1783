"""Video injection into the top N layers of a frozen LLaMA with zero-initialised gated attention.

LLaViLo (Ma et al., ICCV-W 2023) feeds projected video tokens into the top ``N`` decoder layers
of a frozen LLaMA the way LLaMA-Adapter (Zhang et al., 2023) feeds its adaption prompts: each
injected layer ``n`` gets a prefix ``[P_n; A_n]`` (video tokens ``P_n`` and ``J`` learnable
per-layer anchor embeddings ``A_n``), whose keys and values come from the layer's own frozen
``k_proj``/``v_proj`` without rotary embedding. Every query ``q`` then gets

    out(q) = attn_stock(q)  +  g_h * softmax_prefix(q . k_prefix^T * scaling) . v_prefix

with a separate softmax over the prefix and one gate ``g_h`` per head initialised to zero, so
at initialisation the model is the frozen LLaMA bit for bit. The gate multiplies as is
(LLaMA-Adapter's code applies ``tanh`` first; the two agree to first order around 0).

No LLaMA code is forked. Three transformers extension points carry everything:

* **Attention function.** ``gated_prefix_attention`` is registered under ``ATTN_IMPLEMENTATION``
  in ``transformers.AttentionInterface`` (and ``sdpa``'s mask builder under the same name in
  ``AttentionMaskInterface``, so padding masks are built exactly as for ``sdpa``), and the model
  is switched to it with ``set_attn_implementation``. Without the extra keyword arguments below it
  *is* ``sdpa_attention_forward``; the original tokens always go through that function, which is
  why they stay bit-identical to the unmodified model.
* **Keyword arguments.** ``LlamaDecoderLayer`` forwards ``**kwargs`` to ``LlamaAttention``, which
  forwards them to the attention function. A forward pre-hook on each injected decoder layer
  adds ``llavilo_prefix`` (the prefix tokens and the gate) and ``llavilo_anchor_visible`` to the
  layer's kwargs. Because they travel as arguments of the layer's ``forward``, activation
  checkpointing stores them and the backward recomputation sees the same prefix; the per-call
  inputs only need to live in a ``ContextVar`` while the hooks run (one forward at a time per
  context, which is enough for one model instance per process or thread).
* **Hidden-state length.** The pre-hook of the *first* injected layer appends ``J`` learnable
  anchor *query* tokens to the hidden states, and every injected layer's pre-hook extends the
  rotary ``position_embeddings`` for them.

Positions. Text tokens are numbered from their row's first real token (``position_ids`` from the
attention mask), so left and right padding give them the same rotary positions. The anchors of a
row sit right after the text they may read: positions ``n .. n+J-1`` with ``n`` the row's count
of anchor-visible tokens (real and not hidden). In training the input is ``prompt + target +
padding`` with the target hidden, at inference the prompt alone; either way ``n`` is the prompt's
length, so the anchors get the positions at test time that they were trained on, whatever the
batch's caption lengths and padding.

Anchors, two roles. The set-prediction head of LLaViLo needs *outputs* for its queries, and the
timestamp tokens of the caption target must be hidden from those queries. So the anchors are
(a) ``J`` query tokens that join the sequence after the text at the first injected layer and
produce hidden states (returned as ``anchor_states``, one ``(B, J, hidden)`` per injected layer
and the final normed one), and (b) the per-layer prefix embeddings ``A_n`` that sit next to the
video tokens in the gated prefix. Anchor queries attend to the text (minus padding and minus the
positions the caller hides with ``hide_from_anchors``), causally to each other, and to the gated
prefix. Hiding is direct, per key: a visible text token that comes after a hidden one has read it
(causal LM), so to keep the anchors blind to the timestamps hide every position from the first
timestamp token on (the caption target is a suffix, so that is the natural mask). Text queries
never see the anchors (they come later in the causal order), so adding anchors does not change
the logits of the text.

No backward through the frozen lower layers. Video tokens and anchors enter only at layer
``L - N``, and every LLaMA parameter is frozen, so nothing below that layer requires grad and
autograd records no graph (and keeps no activations) there. As a guard against hooks that make
input embeddings require grad (``activation_checkpointing_enable`` installs one; we remove it),
the hidden states are also detached where they enter the first injected layer. This is what
LLaMA-Adapter gets by running its lower layers under ``torch.no_grad()``.

Limits: training-style full-sequence forwards only (no KV cache, so no incremental decoding
with the prefix); bit-identity of the text logits with anchors present relies on matrix
multiplies giving each row the same result whatever the number of rows (true for the CPU
kernels the tests use; on GPU the injected layers may differ in the last bits when ``J > 0``).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_IMPLEMENTATION = "llavilo_gated_prefix"
_PREFIX_KW = "llavilo_prefix"
_ANCHOR_KW = "llavilo_anchor_visible"


# ----------------------------------------------------------------------------- attention function


def _prefix_attention(module: nn.Module, query: Tensor, prefix: Tensor, gate: Tensor,
                      prefix_mask: Tensor | None, scaling: float) -> Tensor:
    """Gated attention of every query over the prefix, with its own softmax.

    query (B, H, T, D); prefix (B, Lp, hidden); gate (H,); prefix_mask (B, Lp) bool, True = keep.
    Returns (B, T, H, D), to be added to the stock attention output.
    """
    bsz, n_prefix, _ = prefix.shape
    head_dim = query.shape[-1]
    prefix = prefix.to(query.dtype)
    # The layer's own frozen projections, no rotary: the prefix has no position (LLaMA-Adapter).
    k = module.k_proj(prefix).view(bsz, n_prefix, -1, head_dim).transpose(1, 2)  # (B, Hkv, Lp, D)
    v = module.v_proj(prefix).view(bsz, n_prefix, -1, head_dim).transpose(1, 2)
    groups = getattr(module, "num_key_value_groups", 1)
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)  # (B, H, Lp, D)
    scores = torch.matmul(query, k.transpose(-1, -2)).float() * scaling  # (B, H, T, Lp)
    if prefix_mask is not None:
        scores = scores.masked_fill(~prefix_mask[:, None, None, :], float("-inf"))
    probs = scores.softmax(dim=-1)  # in float32, as LLaMA-Adapter
    probs = probs * gate.float().view(1, -1, 1, 1)
    out = torch.matmul(probs.to(v.dtype), v)  # (B, H, T, D)
    return out.transpose(1, 2)


def _anchor_attention(query: Tensor, key: Tensor, value: Tensor, visible: Tensor, groups: int,
                      scaling: float, dropout: float) -> Tensor:
    """Attention of the ``J`` anchor queries over text + anchors.

    query (B, H, J, D); key/value (B, Hkv, T+J, D); visible (B, T) bool, True = the anchors may
    read that text position. Anchors see each other causally. Returns (B, J, H, D).
    """
    n_anchor = query.shape[2]
    bsz, n_text = visible.shape
    causal = torch.ones(n_anchor, n_anchor, dtype=torch.bool, device=query.device).tril()
    mask = torch.cat([visible[:, None, :].expand(bsz, n_anchor, n_text),
                      causal.expand(bsz, n_anchor, n_anchor)], dim=-1)[:, None]  # (B, 1, J, T+J)
    out = F.scaled_dot_product_attention(
        query, repeat_kv(key, groups), repeat_kv(value, groups),
        attn_mask=mask, dropout_p=dropout, scale=scaling,
    )
    return out.transpose(1, 2)


def gated_prefix_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """``AttentionInterface`` function: stock ``sdpa`` attention plus the LLaViLo extras.

    query (B, H, T', D), key/value (B, Hkv, T', D), where ``T' = T + J`` in injected layers that
    carry anchor queries (the last ``J`` rows). Extra keyword arguments, set by the pre-hooks of
    ``InjectedLlama``:

    * ``llavilo_prefix``: ``(prefix (B, Lp, hidden), gate (H,), prefix_mask (B, Lp) | None)``;
    * ``llavilo_anchor_visible``: (B, T) bool, the text positions the anchor queries may read.

    Returns ``(attn_output (B, T', H, D), None)``.
    """
    prefix = kwargs.pop(_PREFIX_KW, None)
    visible = kwargs.pop(_ANCHOR_KW, None)
    if prefix is None and visible is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    n_text = query.shape[2] if visible is None else visible.shape[1]
    if key.shape[2] != query.shape[2]:
        raise ValueError(
            f"{ATTN_IMPLEMENTATION} supports full-sequence forwards only: got {query.shape[2]} "
            f"queries against {key.shape[2]} keys (a KV cache?). Call with use_cache=False."
        )
    # The original tokens: exactly the call the unmodified model makes.
    out, _ = sdpa_attention_forward(
        module, query[:, :, :n_text], key[:, :, :n_text], value[:, :, :n_text], attention_mask,
        dropout=dropout, scaling=scaling, **kwargs,
    )  # (B, T, H, D)
    if query.shape[2] > n_text:
        anchor_out = _anchor_attention(
            query[:, :, n_text:], key, value, visible,
            getattr(module, "num_key_value_groups", 1), scaling, dropout,
        )
        out = torch.cat([out, anchor_out.to(out.dtype)], dim=1)  # (B, T+J, H, D)
    if prefix is not None:
        tokens, gate, prefix_mask = prefix
        out = out + _prefix_attention(module, query, tokens, gate, prefix_mask, scaling).to(out.dtype)
    return out, None


def register_attention() -> None:
    """Register ``gated_prefix_attention`` (and ``sdpa``'s mask builder) under ``ATTN_IMPLEMENTATION``.

    Idempotent; it only touches transformers' global registries.
    """
    AttentionInterface.register(ATTN_IMPLEMENTATION, gated_prefix_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


# ----------------------------------------------------------------------------- modules


class GatedPrefix(nn.Module):
    """Learnable part of one injected layer: the per-head gate and the anchor prefix ``A_n``.

    Parameters
    ----------
    hidden_size, num_heads : int
        Of the LLM.
    num_anchors : int
        ``J``, the number of anchor embeddings in the prefix (may be 0).
    init_std : float
        Std of the anchors' normal init; small, as the prefix keys are not normed.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_anchors: int, init_std: float = 0.02):
        super().__init__()
        # Zero gates make the injected layer the frozen one at init (LLaMA-Adapter's zero-init).
        self.gate = nn.Parameter(torch.zeros(num_heads))
        self.anchors = nn.Parameter(torch.randn(num_anchors, hidden_size) * init_std)

    def forward(self, video_tokens: Tensor, video_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Prefix ``[P_n; A_n]``: video_tokens (B, Lv, hidden) -> (B, Lv + J, hidden), the gate
        (H,) and the prefix keep-mask (B, Lv + J) (None when ``video_mask`` is None).

        A module call, and the gate comes back as a fresh tensor, so DeepSpeed ZeRO-3 (which
        gathers a module's parameters only around its ``forward``) sees every use."""
        bsz = video_tokens.shape[0]
        anchors = self.anchors.to(video_tokens.dtype).expand(bsz, -1, -1)
        tokens = torch.cat([video_tokens, anchors], dim=1)
        gate = self.gate.clone()
        if video_mask is None:
            return tokens, gate, None
        keep = torch.ones(bsz, anchors.shape[1], dtype=torch.bool, device=video_mask.device)
        return tokens, gate, torch.cat([video_mask.bool(), keep], dim=1)


class AnchorQueries(nn.Module):
    """The ``J`` learnable anchor query tokens (``weight`` (J, hidden)), expanded per batch.

    Its own module so that DeepSpeed ZeRO-3, which gathers parameters around module forwards
    and re-gathers them for the module's backward, handles it like any layer."""

    def __init__(self, num_anchors: int, hidden_size: int, init_std: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_anchors, hidden_size) * init_std)

    def forward(self, batch_size: int) -> Tensor:
        return self.weight.expand(batch_size, -1, -1).clone()  # (B, J, hidden)


@dataclass
class InjectedLlamaOutput:
    """Output of ``InjectedLlama.forward``.

    logits : (B, T, vocab), text positions only.
    loss : scalar causal-LM loss when ``labels`` were given, else None.
    anchor_states : (B, J, hidden) after the final norm, or None (``J = 0`` or not requested).
    layer_anchor_states : one (B, J, hidden) per injected layer, bottom to top (residual stream,
        before the final norm), for auxiliary losses; empty if not requested.
    """

    logits: Tensor
    loss: Tensor | None = None
    anchor_states: Tensor | None = None
    layer_anchor_states: list[Tensor] = field(default_factory=list)


@dataclass
class _CallState:
    video_tokens: list[Tensor]  # one (B, Lv, hidden) per injected layer
    video_mask: Tensor | None  # (B, Lv) bool
    anchor_visible: Tensor | None  # (B, T) bool
    anchor_cos_sin: tuple[Tensor, Tensor] | None  # rotary of each row's anchor positions, (B, J, D) each
    anchor_queries: Tensor | None  # (B, J, hidden), made in forward (where ZeRO-3 has the parameter)
    record: bool
    n_text: int
    layer_anchor_states: list[Tensor] = field(default_factory=list)


_CALL: ContextVar[_CallState | None] = ContextVar("llavilo_injection_call", default=None)


def text_positions(attention_mask: Tensor) -> Tensor:
    """(B, T) rotary positions of the text: real tokens count from 0 at their row's first real
    token, so a left-padded row numbers its tokens as a right-padded one does; padding keeps its
    index (it is never attended). A right-padded batch gets ``arange(T)``, the stock positions."""
    mask = attention_mask.bool()
    index = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, mask.long().cumsum(1) - 1, index)


def anchor_positions(anchor_visible: Tensor, num_anchors: int) -> Tensor:
    """(B, J) positions of the anchor queries: right after the text they may read,
    ``n_b .. n_b + J - 1`` with ``n_b`` the row's count of visible tokens (the prompt, whatever
    target or padding follows it)."""
    start = anchor_visible.long().sum(1, keepdim=True)  # (B, 1)
    return start + torch.arange(num_anchors, device=anchor_visible.device)[None]


def _decoder_layers(llm: PreTrainedModel) -> nn.ModuleList:
    layers = getattr(getattr(llm, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"expected a LlamaForCausalLM-style model with `.model.layers`, got {type(llm).__name__}"
        )
    return layers


class InjectedLlama(nn.Module):
    """A frozen causal LLaMA with video tokens injected into its top ``top_n`` layers.

    Parameters
    ----------
    llm : LlamaForCausalLM
        Frozen in place (``requires_grad=False``) and switched to ``ATTN_IMPLEMENTATION``.
    top_n : int
        Number of injected layers, ``1 <= top_n <= num_hidden_layers``; layers with
        ``layer_idx >= L - top_n`` get a prefix.
    num_anchors : int
        ``J``: anchor query tokens appended after the text (their outputs feed the moment head)
        and anchor embeddings per injected layer in the prefix. 0 disables both.
    gradient_checkpointing : bool
        Recompute the injected layers in the backward (non-reentrant ``torch.utils.checkpoint``).
    anchor_init_std : float
        Std of the normal init of the anchor queries and prefix anchors.
    """

    def __init__(self, llm: PreTrainedModel, top_n: int, num_anchors: int,
                 gradient_checkpointing: bool = False, anchor_init_std: float = 0.02):
        super().__init__()
        layers = _decoder_layers(llm)
        cfg = llm.config
        n_layers = len(layers)
        if not 1 <= top_n <= n_layers:
            raise ValueError(f"top_n must be in [1, {n_layers}] for this {n_layers}-layer model, got {top_n}")
        if num_anchors < 0:
            raise ValueError(f"num_anchors must be >= 0, got {num_anchors}")
        self.llm = llm
        for p in llm.parameters():
            p.requires_grad_(False)
        register_attention()
        llm.set_attn_implementation(ATTN_IMPLEMENTATION)
        if llm.config._attn_implementation != ATTN_IMPLEMENTATION:
            raise RuntimeError(
                f"could not switch {type(llm).__name__} to attention {ATTN_IMPLEMENTATION!r} "
                f"(it has {llm.config._attn_implementation!r}); the model must use AttentionInterface"
            )

        self.top_n, self.num_anchors = top_n, num_anchors
        self.first_injected = n_layers - top_n
        self.hidden_size = cfg.hidden_size
        self.prefixes = nn.ModuleList(
            GatedPrefix(cfg.hidden_size, cfg.num_attention_heads, num_anchors, anchor_init_std)
            for _ in range(top_n)
        )
        self.anchor_queries = AnchorQueries(num_anchors, cfg.hidden_size, anchor_init_std)

        self._hooks = []
        for i, layer in enumerate(layers[self.first_injected:]):
            self._hooks.append(layer.register_forward_pre_hook(self._make_pre_hook(i), with_kwargs=True))
            self._hooks.append(layer.register_forward_hook(self._make_post_hook()))

        if gradient_checkpointing:
            llm.activation_checkpointing_enable({"use_reentrant": False})
            # That call makes the input embeddings require grad (for reentrant checkpointing):
            # it would make autograd record the frozen lower layers for nothing.
            llm.disable_input_require_grads()
            for layer in layers[: self.first_injected]:
                layer.gradient_checkpointing = False  # no backward there, nothing to recompute

    # -- hooks ---------------------------------------------------------------------------------

    def _make_pre_hook(self, slot: int):
        def pre_hook(layer: nn.Module, args: tuple, kwargs: dict):
            state = _CALL.get()
            if state is None:  # called outside InjectedLlama.forward: stock layer
                return None
            if args:
                hidden, rest = args[0], args[1:]
            else:
                hidden, rest = kwargs.pop("hidden_states"), ()
            if slot == 0:
                # The boundary: backward stops here even if something upstream requires grad.
                hidden = hidden.detach()
                if state.anchor_queries is not None:
                    hidden = torch.cat([hidden, state.anchor_queries.to(hidden.dtype)], dim=1)  # (B, T+J, hidden)
            if state.anchor_cos_sin is not None:
                cos, sin = kwargs["position_embeddings"]  # (1 or B, T, D)
                a_cos, a_sin = state.anchor_cos_sin  # (B, J, D): per-row anchor positions
                bsz = a_cos.shape[0]
                kwargs["position_embeddings"] = (
                    torch.cat([cos.expand(bsz, -1, -1), a_cos.to(cos.dtype)], dim=1),
                    torch.cat([sin.expand(bsz, -1, -1), a_sin.to(sin.dtype)], dim=1),
                )
                kwargs[_ANCHOR_KW] = state.anchor_visible
            kwargs[_PREFIX_KW] = self.prefixes[slot](state.video_tokens[slot], state.video_mask)
            return (hidden, *rest), kwargs

        return pre_hook

    def _make_post_hook(self):
        def post_hook(layer: nn.Module, args: tuple, output):
            state = _CALL.get()
            if state is not None and state.record and self.num_anchors:
                hidden = output[0] if isinstance(output, tuple) else output
                state.layer_anchor_states.append(hidden[:, state.n_text:])

        return post_hook

    # -- forward -------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        video_tokens: Tensor | list[Tensor],
        labels: Tensor | None = None,
        output_anchor_states: bool = True,
        video_mask: Tensor | None = None,
        hide_from_anchors: Tensor | None = None,
    ) -> InjectedLlamaOutput:
        """Run the LLM with the video injected.

        Parameters
        ----------
        input_ids : (B, T) long
        attention_mask : (B, T) {0, 1} padding mask or None.
        video_tokens : (B, Lv, hidden), shared by all injected layers, or a list of ``top_n``
            such tensors (bottom to top). Already projected to the LLM width; since the prefix
            keys are not normed, bring them to the scale of normed hidden states (e.g. end the
            projector with a LayerNorm, as LLaMA-Adapter V2 does).
        labels : (B, T) long, -100 = ignored; the usual shifted causal-LM loss.
        output_anchor_states : return the anchor hidden states.
        video_mask : (B, Lv) bool, True = real clip, for padded videos.
        hide_from_anchors : (B, T) bool, True = the anchor queries may not read this token (e.g.
            the timestamp tokens of the caption target, a suffix of the real tokens). The anchors
            take the positions after the tokens they may read (:func:`anchor_positions`).
        """
        bsz, n_text = input_ids.shape
        if isinstance(video_tokens, Tensor):
            video_tokens = [video_tokens] * self.top_n
        if len(video_tokens) != self.top_n:
            raise ValueError(f"expected {self.top_n} per-layer video tensors, got {len(video_tokens)}")
        for v in video_tokens:
            if v.ndim != 3 or v.shape[0] != bsz or v.shape[2] != self.hidden_size:
                raise ValueError(
                    f"video_tokens must be (B={bsz}, Lv, hidden={self.hidden_size}), got {tuple(v.shape)}"
                )
        for name, m in (("hide_from_anchors", hide_from_anchors), ("attention_mask", attention_mask)):
            if m is not None and tuple(m.shape) != (bsz, n_text):
                raise ValueError(f"{name} must be (B, T) = {(bsz, n_text)}, got {tuple(m.shape)}")

        position_ids = text_positions(attention_mask) if attention_mask is not None else None
        anchor_visible, anchor_cos_sin, anchor_queries = None, None, None
        if self.num_anchors:
            anchor_queries = self.anchor_queries(bsz)
            anchor_visible = torch.ones(bsz, n_text, dtype=torch.bool, device=input_ids.device)
            if attention_mask is not None:
                anchor_visible &= attention_mask.bool()
            if hide_from_anchors is not None:
                anchor_visible &= ~hide_from_anchors.bool()
            positions = anchor_positions(anchor_visible, self.num_anchors)  # (B, J)
            like = self.llm.model.embed_tokens.weight  # rotary reads only its dtype and device
            anchor_cos_sin = self.llm.model.rotary_emb(like, positions)  # (B, J, D) each

        state = _CallState(
            video_tokens=list(video_tokens), video_mask=video_mask, anchor_visible=anchor_visible,
            anchor_cos_sin=anchor_cos_sin, anchor_queries=anchor_queries, record=output_anchor_states, n_text=n_text,
        )
        token = _CALL.set(state)
        try:
            out = self.llm.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 use_cache=False)
        finally:
            _CALL.reset(token)

        hidden = out.last_hidden_state  # (B, T+J, hidden)
        logits = self.llm.lm_head(hidden[:, :n_text])  # (B, T, vocab)
        loss = None
        if labels is not None:
            loss = self.llm.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1])
        anchors = hidden[:, n_text:] if output_anchor_states and self.num_anchors else None
        return InjectedLlamaOutput(logits, loss, anchors, state.layer_anchor_states)

    def remove_hooks(self) -> None:
        """Detach from the LLM's layers (the LLM still uses ``ATTN_IMPLEMENTATION``, which
        is plain ``sdpa`` outside ``InjectedLlama.forward``)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []


# ----------------------------------------------------------------------------- accounting


def trainable_share(model: nn.Module) -> tuple[int, int, float]:
    """(trainable parameter count, total count, trainable percent); shared tensors counted once."""
    total = trainable = 0
    for p in model.parameters():  # parameters() already deduplicates tied weights
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total, 100.0 * trainable / max(total, 1)


def format_trainable_share(model: nn.Module) -> str:
    """``"trainable params: 1,234 || all params: 56,789 || trainable%: 2.1731"`` (PEFT's wording)."""
    trainable, total, pct = trainable_share(model)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {pct:.4f}"
