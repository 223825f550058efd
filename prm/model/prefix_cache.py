"""The shared-prefix kernel: encode prefixes once, then continue many rows from their key/value cache.

Best-of-N candidates share everything before their first step (the user turn with the question and
images, and the assistant header). :func:`encode_prefixes` runs a batch of such prefixes through
the base model with ``use_cache=True`` and keeps each one's keys and values (its real tokens only),
its length and the position its continuations start at; :func:`continuation_inputs` builds the
model inputs of a batch of continuations, each row on its own prefix's cache. The inputs of both are
collated tensors (:class:`prm.data.dataset.PRMCollator` makes them in :mod:`prm.evaluation.scoring`,
which groups chains into prefixes and continuations and falls back to whole chains).

Positions: a continuation token ``j`` sits at ``start + j``, where ``start`` is the position after
the prefix's last one (:func:`prm.model.positions.next_position`): ``P`` for plain rotary models,
the prefix's largest M-RoPE position + 1 for the ``mrope`` families, whose image tokens advance the
position by the image's grid side rather than its token count. The positions are always passed
explicitly: the model's automatic path fails with a cache and a 2-D mask and would keep a stale rope
delta from another batch.

Batching: the prefixes of a continuation batch differ in length, so each row's cached prefix is
left-padded to the longest one (masked out in the attention mask) and continuations are
right-padded; causal attention means padding never changes a real token's result. A fresh cache is
assembled for every batch from the stored prefix tensors (the cache grows in place during a forward
pass, so a cache is never reused).

Only a plain full-attention cache can be cut and stacked this way: :func:`has_sliding_layers` tells
the caller to score whole chains instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from prm.model import last_layer as last_layer_at_scores
from prm.model.families import FamilySpec
from prm.model.positions import next_position, position_ids


@dataclass
class CachedPrefix:
    """One encoded prefix: the keys and values of its ``P`` real tokens, every layer's in one tensor
    ``[layers, 1, kv_heads, P, head_dim]`` (``keys[layer]`` is that layer's ``[1, kv_heads, P,
    head_dim]``), and the position of the first token that continues it."""

    keys: torch.Tensor
    values: torch.Tensor
    length: int  # P: prefix tokens (image tokens included)
    start: int  # position of the first continuation token


def has_sliding_layers(model) -> bool:
    """Whether ``model``'s text decoder has sliding-window (or other not full-attention) layers,
    whose cache cannot be cut and stacked per prefix."""
    config = model.config.get_text_config(decoder=True)
    layer_types = getattr(config, "layer_types", None) or []
    return bool(getattr(config, "use_sliding_window", False)) or any(
        kind != "full_attention" for kind in layer_types
    )


def encode_prefixes(
    spec: FamilySpec, base, inputs: dict[str, torch.Tensor], last_layer_keys_only: bool = False
) -> list[CachedPrefix]:
    """Run the padded prefix rows ``inputs`` once and return one :class:`CachedPrefix` per row.

    Args:
        spec: the backbone's family (its ``rope`` kind gives the positions).
        base: the backbone's base model (``model.model``).
        inputs: collated model inputs of the prefixes (``input_ids`` and ``attention_mask`` ``[rows,
            length]``, padded on either side, and a processor's image inputs), on ``base``'s device.
        last_layer_keys_only: compute only the last layer's keys and values
            (:func:`prm.model.last_layer.prefix_cache`; nothing is scored in a prefix), for a base
            model :func:`prm.model.last_layer.supports`.
    """
    mask = inputs["attention_mask"]
    positions = position_ids(spec, base, inputs)  # [rows, T], or [3, rows, T] for M-RoPE with images
    starts = next_position(positions, mask)
    if last_layer_keys_only:
        cache = last_layer_at_scores.prefix_cache(base, {**inputs, "position_ids": positions})
    else:
        cache = base(**inputs, position_ids=positions, use_cache=True).past_key_values
    # every layer's keys (values) in one tensor [layers, rows, kv_heads, T, head_dim]: a prefix is then
    # one slice of it, and a continuation batch is stacked with one copy per row (not one per layer)
    keys = torch.stack([layer.keys for layer in cache.layers])
    values = torch.stack([layer.values for layer in cache.layers])
    real = mask.bool()
    firsts = real.int().argmax(1).tolist()  # one block of real tokens per row: right or left padding
    ends = (mask.shape[1] - real.flip(1).int().argmax(1)).tolist()
    starts = starts.tolist()
    prefixes = []
    for row, (first, end) in enumerate(zip(firsts, ends)):
        prefixes.append(
            CachedPrefix(
                keys=keys[:, row : row + 1, :, first:end],
                values=values[:, row : row + 1, :, first:end],
                length=end - first,
                start=int(starts[row]),
            )
        )
    return prefixes


def continuation_inputs(
    prefixes: Sequence[CachedPrefix], ids: Sequence[torch.Tensor], pad_token_id: int, device="cpu"
) -> dict:
    """Model inputs that continue row ``b``'s token ids ``ids[b]`` (``[L_b]``) from ``prefixes[b]``.

    Returns ``input_ids`` ``[rows, L]`` (right-padded with ``pad_token_id``), ``attention_mask``
    ``[rows, P + L]`` (each cached prefix left-padded to the longest, ``P``), ``position_ids``
    ``[rows, L]`` (``start + j``) and ``past_key_values`` (a fresh ``DynamicCache`` of the stacked
    prefixes, on the prefixes' device); a token at column ``j`` of ``input_ids`` is scored at ``j``.
    """
    rows = len(ids)
    prefix_max = max(prefix.length for prefix in prefixes)
    cont_max = max(len(row) for row in ids)
    input_ids = torch.full((rows, cont_max), pad_token_id, dtype=torch.long)
    attention = torch.zeros(rows, prefix_max + cont_max, dtype=torch.long)
    positions = torch.zeros(rows, cont_max, dtype=torch.long)
    for b, (prefix, row) in enumerate(zip(prefixes, ids, strict=True)):
        input_ids[b, : len(row)] = row
        attention[b, prefix_max - prefix.length : prefix_max + len(row)] = 1
        positions[b] = prefix.start + torch.arange(cont_max)
    stacked = []
    for part in ("keys", "values"):
        first = getattr(prefixes[0], part)  # [layers, 1, kv_heads, P, head_dim]
        both = first.new_zeros(first.shape[0], rows, first.shape[2], prefix_max, first.shape[4])
        for b, prefix in enumerate(prefixes):  # one copy per row, all layers at once
            both[:, b : b + 1, :, prefix_max - prefix.length :] = getattr(prefix, part)
        stacked.append(both)
    layers = [(stacked[0][layer], stacked[1][layer]) for layer in range(stacked[0].shape[0])]
    return dict(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        position_ids=positions.to(device),
        past_key_values=DynamicCache(ddp_cache_data=layers),
    )
