"""The upper level's loss on the meta set (docs/methods.md#bi-level-objective), per chain.

``target="steps"``: the PRM's own per-step loss against the meta chains' step labels (1 before the
known first wrong step, 0 from it on; ``prm.data.dataset.meta_step_labels``), averaged over the chain's
labelled steps: a signal on the wrong step itself rather than on the whole chain.
``target="+"``: aggregate the step probabilities r to p = agg(r) and take (p - y)^2.
``target="both"``: score each step by the probability of the label that matches y (r when y = 1,
1 - r when y = 0), aggregate to p' and take (p' - 1)^2. DreamPRM's loss is ``+`` with log_mean.
Aggregations clamp probabilities before any log or logit, so saturated scores stay finite.
"""

from __future__ import annotations

import torch

from prm.aggregation import PROBABILITY_VALUED, Aggregation

TARGETS = ("+", "both", "steps")


def check_meta_loss(aggregation: Aggregation, target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"reweight.upper.loss_target must be one of {TARGETS}, got {target!r}")
    if target != "steps" and not aggregation.is_probability:
        raise ValueError(
            f"aggregation={aggregation.name} is not a probability, so (p - y)^2 has no meaning; "
            f"the meta loss needs one of {sorted(PROBABILITY_VALUED)}"
        )


def meta_losses(
    probs: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, aggregation: Aggregation, target: str = "+"
) -> torch.Tensor:
    """Per-chain meta loss ``[chains]`` from step probabilities ``[chains, steps]`` and 0/1 labels."""
    labels = labels.to(probs.dtype)
    if target == "+":
        return (aggregation(probs, mask) - labels) ** 2
    if target == "both":
        matching = torch.where(labels[:, None] > 0.5, probs, 1 - probs)
        return (aggregation(matching, mask) - 1) ** 2
    raise ValueError(f"unknown meta loss target {target!r}; expected one of {TARGETS}")


def step_meta_losses(prm, scores, batch: dict) -> torch.Tensor:
    """Per-chain meta loss ``[chains]`` for ``target="steps"``: ``prm.losses`` on the meta step labels.

    Raises ValueError naming a meta chain without step labels (its ``first_error`` is unknown)."""
    losses, has_label = prm.losses(scores, batch["step_labels"].to(scores.logits.device))
    if not bool(has_label.all()):
        missing = [chain for chain, ok in zip(batch["ids"], has_label.tolist()) if not ok]
        raise ValueError(
            f"reweight.upper.loss_target=steps needs the first wrong step of every meta chain; meta chain "
            f"{missing[0]!r} has no first_error (use reweight.upper.loss_target=+ on this meta set)"
        )
    return losses.float()
