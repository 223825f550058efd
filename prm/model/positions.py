"""Rotary position ids of a padded batch, keyed on the family's ``rope`` kind.

One function serves both users of explicit positions: packing (:func:`prm.data.dataset.pack_inputs`
moves each chain's positions into its packed row) and the shared-prefix kernel
(:mod:`prm.model.prefix_cache` continues a prefix at the position after its last one).

- ``rope="default"`` (Qwen2, Llama, InternVL's Qwen2, ...): ``0, 1, ...`` over each row's real
  tokens, whichever side the row is padded on.
- ``rope="mrope"`` (Qwen2-VL, Qwen2.5-VL): with images, the model's own ``get_rope_index`` gives
  the 3-D (temporal, height, width) positions, in which an image advances the position by its grid
  side rather than its token count (Qwen2-VL report, Wang et al. 2024, section 2.1). Without images
  the three rows would all equal the 1-D positions, which the models accept as 1-D positions.
"""

from __future__ import annotations

import torch

from prm.model.families import FamilySpec

# the inputs get_rope_index reads (the processor's image grid and token types), besides the ids and mask
_ROPE_INDEX_INPUTS = ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts")


def position_ids(spec: FamilySpec, model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Position ids of the padded rows ``inputs`` (``input_ids`` and ``attention_mask`` ``[rows,
    length]``, padded on either side, plus a multimodal processor's image inputs).

    Args:
        spec: the backbone's family; its ``rope`` picks the kind of positions.
        model: the backbone's ``PreTrainedModel`` or its base model (``get_rope_index`` is read from
            the base model of an ``mrope`` family).

    Returns:
        ``[rows, length]`` (``default`` rope, or ``mrope`` without images): each real token's index
        among its row's real tokens, 0 at padding before them and the last index at padding after;
        or ``[3, rows, length]`` (``mrope`` with images): the model's temporal, height and width
        positions. Raises ValueError for an ``mrope`` family whose base model has no
        ``get_rope_index``.
    """
    mask = inputs["attention_mask"]
    if spec.rope == "mrope" and inputs.get("image_grid_thw") is not None:
        base = getattr(model, "model", model)
        if not hasattr(base, "get_rope_index"):
            raise ValueError(
                f"family {spec.name!r} has rope='mrope' but {type(base).__name__} has no get_rope_index"
            )
        extra = {key: inputs[key] for key in _ROPE_INDEX_INPUTS if key in inputs}
        positions, _ = base.get_rope_index(inputs["input_ids"], attention_mask=mask, **extra)
        return positions.long()
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def next_position(positions: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[rows]``: the position after each row's largest real one, where a continuation of the row
    starts (its real-token count for 1-D positions; more for M-RoPE positions with images, ``P`` plus
    the model's "rope delta"). ``positions``: ``[rows, length]`` or ``[3, rows, length]``."""
    stacked = positions if positions.dim() == 3 else positions.unsqueeze(0)
    real = attention_mask.bool().unsqueeze(0)
    return stacked.masked_fill(~real, -1).amax(dim=(0, 2)) + 1
