"""``torch.compile`` of a PRM's backbone, one repeated block at a time (``train.compile=true``).

Regional compilation: each decoder layer and each vision block (the blocks transformers lists in
``_no_split_modules``) is compiled in place with ``nn.Module.compile``; the rest stays eager.
Parameter names, checkpoints and optimiser state stay those of the eager model (``Module.compile``
wraps ``_call_impl``, not the module), and compilation is shorter than for the whole model (on the
4-layer benchmark model on one CPU thread: 12 s of warm-up against 46 s; each layer still gets a
graph of its own, since dynamo guards on its ``layer_idx``).

The last decoder layer stays eager when the PRM computes it at the score positions only
(:mod:`prm.model.last_layer`): that path runs the layer's projections piece by piece, and the layers
before it are where the time goes.
"""

from __future__ import annotations

import logging

from torch import nn

from prm.model import last_layer as last_layer_at_scores

log = logging.getLogger(__name__)


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of ``model`` (decoder layers, vision blocks), in module order: the modules
    whose class transformers names in a ``_no_split_modules`` of ``model`` or of a model inside it
    (the blocks it keeps whole when it shards a model); a block inside another block is not listed."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    blocks: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if type(module).__name__ in names and not any(name.startswith(outer + ".") for outer, _ in blocks):
            blocks.append((name, module))
    return [block for _, block in blocks]


def compile_blocks(prm, dynamic: bool = True, **options) -> int:
    """Compile the repeated blocks of ``prm``'s backbone in place; returns how many were compiled.

    Args:
        prm: a :class:`prm.model.prm.ProcessRewardModel` (its ``model`` is the transformers model).
        dynamic: compile for varying batch shapes (chain lengths, packing), so one graph serves them.
        options: further keyword arguments of ``nn.Module.compile`` (``backend``, ``mode``).

    Raises:
        ValueError: the backbone has no repeated blocks to compile.
    """
    keep_eager = last_layer_at_scores.last(prm.model.model) if prm.sparse_last_layer else None
    blocks = repeated_blocks(prm.model)
    if not blocks:
        raise ValueError(f"train.compile: {type(prm.model).__name__} names no repeated blocks to compile")
    count = 0
    for block in blocks:
        if block is not keep_eager:
            block.compile(dynamic=dynamic, **options)
            count += 1
    checkpointing = getattr(prm.model, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(prm.model, "is_gradient_checkpointing", False)
    if checkpointing:
        log.warning(
            "train.compile with backbone.gradient_checkpointing: dynamo does not trace the "
            "checkpointed layers, so they run eagerly and compilation gains little"
        )
    log.info(
        "torch.compile: %d repeated blocks%s",
        count,
        " (the last decoder layer stays eager: it runs at the score positions only)" if keep_eager else "",
    )
    return count
