"""The last decoder layer computed at the score positions only.

A PRM reads the last layer's hidden state at one position per step (the step marker, or the token
that predicts a reply); every other position of the last layer's output is thrown away. Yet the
last layer's queries, attention output, output projection and MLP at those positions are most of
that layer's forward and backward cost. Only its keys and values are needed at every position,
because each score position attends to all earlier tokens of its chain.

:func:`hidden_at_positions` runs the base model up to the input of its last decoder layer (the
layer's own forward-pre hook captures its inputs: the hidden states, the attention mask and the
rotary embeddings exactly as the model built them, then stops the forward), and then computes the
last layer itself:

- RMSNorm of every position, then keys and values at every position;
- queries at the score positions only, with their own rotary angles;
- attention of those queries over all keys under the rows of the model's own mask: the causal
  mask, the block-diagonal mask of a packed batch, or the padding mask. Where the model passed no
  mask (sdpa with no padding), a causal mask for the score positions is built here (bidirectional
  variants, ``config.is_causal=False``, keep the full layer);
- output projection, residual, post-attention RMSNorm, MLP and residual at the score positions;
- the model's final norm.

Attention runs through the same kernel family as the model's (``torch`` sdpa for ``sdpa``, the
model's own ``eager_attention_forward`` for ``eager``, which keeps second derivatives available to
the Neumann and CG hypergradients), so scores and gradients agree with the full layer to float
rounding (``tests/test_last_layer.py`` pins both). One caveat from torch itself: under eager
attention a score position whose whole mask row is masked (a left-padded pad token) gets a different
gradient; the collator pads on the right and never scores a pad.

With L layers the saving is at most about 1/L of a step: a quarter of a 4-layer model, a thirtieth
of SmolLM2-135M's 30 layers. Under gradient checkpointing the sparse last layer is not
recomputed: it keeps its normed inputs, keys and values at every position for the backward pass.

It applies to the decoders whose family says their layers are the Llama layer
(:class:`prm.model.families.DecoderLayout`: ``llama_like`` lists the decoder model types, ``stack``
the attribute of the base model holding the decoder): the pre-norm layer ``input_layernorm ->
self_attn -> post_attention_layernorm -> mlp``, rotary positions ``x cos + rotate_half(x) sin``,
Qwen3's per-head q/k norms, under the ``sdpa`` or ``eager`` attention. That covers Llama, SmolLM,
Mistral, Qwen2/2.5, Qwen3 and the language models of Qwen2-VL and Qwen2.5-VL (M-RoPE: transformers
folds the temporal, height and width sections into one cos/sin pair per position before the layers,
and the hook captures that pair) and InternVL. The base model runs whole up to the last layer,
vision encoder included. :func:`supports` says whether a model qualifies; every other model (a
family without ``llama_like``, other attention kernels, a compiled model or last layer, parameters
partitioned by DeepSpeed ZeRO-3) keeps the full last layer. ``prm.last_layer=full`` turns it off.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from prm.model.families import DecoderLayout, family_of_model

ATTENTION = ("sdpa", "eager")


class _LastLayerInputs(Exception):
    """Raised by the capture hook to stop the base model at its last layer; carries its inputs."""

    def __init__(self, args: tuple, kwargs: dict):
        super().__init__("last layer reached")
        self.args = args
        self.kwargs = kwargs


def decoder_layout(base: nn.Module) -> DecoderLayout:
    """The decoder layout of ``base``'s family (:func:`prm.model.families.family_of_model`); the
    default layout (no Llama layers) for a model no family takes."""
    spec = family_of_model(base)
    return spec.decoder if spec is not None else DecoderLayout()


def text_model(base: nn.Module) -> nn.Module:
    """The decoder stack of ``base`` (the module holding ``layers`` and ``norm``): the attribute its
    family's :class:`prm.model.families.DecoderLayout` names (``language_model`` for the multimodal
    families), else ``base`` itself."""
    inner = base
    for name in filter(None, decoder_layout(base).stack.split(".")):
        inner = getattr(inner, name, None)
    return inner if isinstance(inner, nn.Module) and hasattr(inner, "layers") else base


def supports(base: nn.Module) -> bool:
    """Whether ``base`` (a base model: embeddings, ``layers``, ``norm``; or a multimodal one whose
    decoder stack is such a model) can run its last decoder layer at the score positions only: a
    decoder its family lists as ``llama_like``, under sdpa or eager attention, not compiled."""
    llama_like = decoder_layout(base).llama_like
    text = text_model(base)
    config = getattr(text, "config", None)
    if config is None or not hasattr(text, "norm") or not getattr(text, "layers", None):
        return False
    if getattr(config, "model_type", None) not in llama_like or not getattr(config, "is_causal", True):
        return False  # a bidirectional variant attends to later tokens: the causal rows would be wrong
    if getattr(config, "_attn_implementation", None) not in ATTENTION:
        return False
    if any(getattr(m, "_compiled_call_impl", None) is not None for m in (base, text)):
        return False  # nn.Module.compile: keep one graph
    layer = last(base)
    if getattr(layer, "_compiled_call_impl", None) is not None:
        return False  # the sparse path runs the layer's projections one by one, not its forward
    if any(hasattr(p, "ds_id") for p in layer.parameters()):
        return False  # DeepSpeed ZeRO-3 partitions: its gather/release hooks expect whole forwards
    attention = getattr(layer, "self_attn", None)
    needed = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "num_key_value_groups")
    modeling = sys.modules[type(attention).__module__] if attention is not None else None
    return (
        attention is not None
        and getattr(attention, "is_causal", True)
        and all(hasattr(attention, name) for name in needed)
        and all(hasattr(layer, name) for name in ("input_layernorm", "post_attention_layernorm", "mlp"))
        and hasattr(modeling, "rotate_half")
        and hasattr(modeling, "eager_attention_forward")
    )


def last(base: nn.Module) -> nn.Module:
    """The last decoder layer the base model runs (its decoder runs ``layers[:num_hidden_layers]``)."""
    text = text_model(base)
    return text.layers[: text.config.num_hidden_layers][-1]


def hidden_at_positions(base: nn.Module, inputs: dict, flat_positions: torch.Tensor) -> torch.Tensor:
    """The base model's last hidden state (after its final norm) at the given positions.

    Args:
        base: a model for which :func:`supports` is true.
        inputs: the keyword inputs of ``base`` (``input_ids``, and ``attention_mask`` or packed
            ``position_ids``; a multimodal model's image inputs), rows ``[rows, length]``.
        flat_positions: indices into the flattened rows ``rows * length``, non-negative (any shape
            with at least one element; repeats allowed).

    Returns:
        ``[*flat_positions.shape, hidden]``, equal to ``base(**inputs).last_hidden_state`` flattened
        over its rows and indexed by ``flat_positions``, up to float rounding.
    """
    if flat_positions.numel() == 0 or bool((flat_positions < 0).any()):
        raise ValueError("hidden_at_positions: flat_positions must be non-empty and non-negative")
    layer = last(base)
    args, kwargs = _inputs_of_last_layer(base, layer, {"use_cache": False, **inputs})
    hidden = args[0] if args else kwargs["hidden_states"]
    rows, length, size = hidden.shape
    unique, inverse = torch.unique(flat_positions.reshape(-1), return_inverse=True)
    row_of = torch.div(unique, length, rounding_mode="floor")
    col_of = unique - row_of * length
    counts = torch.bincount(row_of, minlength=rows)
    slot = torch.arange(len(unique), device=unique.device) - (counts.cumsum(0) - counts)[row_of]
    width = int(counts.max())
    # [rows, width] query columns per row; unused slots repeat column 0 and are discarded below.
    columns = torch.zeros(rows, width, dtype=torch.long, device=unique.device)
    columns[row_of, slot] = col_of
    past = None
    cache = kwargs.get("past_key_values")
    if cache is not None:  # a cached prefix: the last layer's entry still holds only the prefix
        entry = cache.layers[layer.self_attn.layer_idx]
        if entry.keys is not None and entry.keys.numel():
            past = (entry.keys, entry.values)
    out = _last_layer(
        layer, hidden, columns, kwargs.get("attention_mask"), kwargs["position_embeddings"], past
    )
    out = text_model(base).norm(out)
    picked = out[row_of, slot][inverse]
    return picked.reshape(*flat_positions.shape, size)


def _inputs_of_last_layer(base: nn.Module, layer: nn.Module, inputs: dict) -> tuple[tuple, dict]:
    """Run ``base(**inputs)`` up to ``layer`` (its last decoder layer) and return that layer's call
    arguments: positional and keyword (hidden states, mask, rotary angles, cache)."""

    def capture(module, args, kwargs):
        raise _LastLayerInputs(args, kwargs)

    handle = layer.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        base(**inputs)
    except _LastLayerInputs as reached:
        return reached.args, reached.kwargs
    finally:
        handle.remove()
    raise RuntimeError(f"{type(base).__name__}: the last decoder layer never ran")  # pragma: no cover


def prefix_cache(base: nn.Module, inputs: dict):
    """The key/value cache of a prefix that nothing is scored in (best-of-N prefix sharing): every
    layer but the last runs whole; the last one computes only its keys and values, which are all a
    continuation needs from it.

    Args:
        base: a model for which :func:`supports` is true.
        inputs: keyword inputs of ``base`` for the prefix rows (``use_cache`` is set here).

    Returns:
        The model's cache (``transformers.Cache``), equal to ``base(**inputs, use_cache=True)
        .past_key_values`` up to float rounding.
    """
    layer = last(base)
    args, kwargs = _inputs_of_last_layer(base, layer, {**inputs, "use_cache": True})
    hidden = args[0] if args else kwargs["hidden_states"]
    key, value = _keys_values(layer, layer.input_layernorm(hidden), kwargs["position_embeddings"])
    cache = kwargs["past_key_values"]
    cache.update(key, value, layer.self_attn.layer_idx)
    return cache


def _keys_values(layer, normed, position_embeddings) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention's keys (rotated) and values at every position: ``[rows, kv_heads, length, head_dim]``."""
    attention = layer.self_attn
    modeling = sys.modules[type(attention).__module__]
    rows, length, _ = normed.shape
    key = attention.k_proj(normed).view(rows, length, -1, attention.head_dim)
    value = attention.v_proj(normed).view(rows, length, -1, attention.head_dim).transpose(1, 2)
    if hasattr(attention, "k_norm"):  # Qwen3: RMSNorm over each head's dimensions
        key = attention.k_norm(key)
    key = key.transpose(1, 2)
    cos, sin = (part.expand(rows, -1, -1).unsqueeze(1) for part in position_embeddings)
    return key * cos + modeling.rotate_half(key) * sin, value


def _last_layer(layer, hidden, columns, mask, position_embeddings, past=None) -> torch.Tensor:
    """One pre-norm decoder layer with queries at ``columns`` ``[rows, width]``: ``[rows, width, hidden]``.

    ``past``: the layer's cached keys and values of a prefix (``[rows, kv_heads, prefix, head_dim]``
    each, already rotated), which the new tokens follow; their keys and values are put in front of
    the new ones (the cache itself is not updated)."""
    attention = layer.self_attn
    modeling = sys.modules[type(attention).__module__]
    rows, length, size = hidden.shape
    head_dim = attention.head_dim

    def at_columns(tensor):  # [rows, length, ...] -> [rows, width, ...]
        index = columns.view(rows, -1, *([1] * (tensor.dim() - 2))).expand(-1, -1, *tensor.shape[2:])
        return tensor.gather(1, index)

    normed = layer.input_layernorm(hidden)
    query = attention.q_proj(at_columns(normed)).view(rows, columns.shape[1], -1, head_dim)
    if hasattr(attention, "q_norm"):  # Qwen3: RMSNorm over each head's dimensions
        query = attention.q_norm(query)
    query = query.transpose(1, 2)  # [rows, heads, width, head_dim]
    cos, sin = (part.expand(rows, -1, -1) for part in position_embeddings)  # [rows, length, head_dim]
    cos_q, sin_q = at_columns(cos).unsqueeze(1), at_columns(sin).unsqueeze(1)
    query = query * cos_q + modeling.rotate_half(query) * sin_q
    key, value = _keys_values(layer, normed, position_embeddings)
    offset = 0
    if past is not None:
        offset = past[0].shape[2]
        key = torch.cat([past[0].to(key.dtype), key], dim=2)
        value = torch.cat([past[1].to(value.dtype), value], dim=2)
    total = offset + length  # keys: the cached prefix, then this pass's tokens
    queries_at = columns + offset  # each query's column among the keys
    if mask is None:  # the model relied on sdpa's causal flag: the causal rows of the score positions
        keys = torch.arange(total, device=hidden.device)
        mask = (keys.view(1, 1, total) <= queries_at.unsqueeze(-1)).unsqueeze(1)  # [rows, 1, width, total]
    else:  # [rows or 1, 1, length, total] (bool, or additive floats under eager): its query rows
        mask = mask[:, :, :, :total].expand(rows, -1, -1, -1)
        mask = mask.gather(2, columns.view(rows, 1, -1, 1).expand(-1, mask.shape[1], -1, total))
    window = getattr(attention, "sliding_window", None)
    if window is not None:
        keys = torch.arange(total, device=hidden.device)
        near = (queries_at.unsqueeze(-1) - keys.view(1, 1, total) < window).unsqueeze(1)
        mask = (
            mask & near if mask.dtype == torch.bool else mask.masked_fill(~near, torch.finfo(mask.dtype).min)
        )
    dropout = getattr(attention, "attention_dropout", 0.0) if attention.training else 0.0
    if attention.config._attn_implementation == "eager":
        # the model's own eager attention (fp32 softmax; differentiable twice, which the Neumann and
        # CG hypergradients need); it takes an additive mask
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(query.dtype).min
            )
        attended, _ = modeling.eager_attention_forward(
            attention, query, key, value, mask.to(query.dtype), scaling=attention.scaling, dropout=dropout
        )  # [rows, width, heads, head_dim]
    else:
        if mask.dtype != torch.bool:
            mask = mask.to(query.dtype)
        attended = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=mask,
            dropout_p=dropout,
            scale=attention.scaling,
            enable_gqa=query.shape[1] != key.shape[1],
        ).transpose(1, 2)
    attended = attended.reshape(rows, columns.shape[1], -1)
    out = at_columns(hidden) + attention.o_proj(attended)
    return out + layer.mlp(layer.post_attention_layernorm(out))
