"""DreamPRM-1.5's instance net: a small MLP from what the PRM says about a chain to the chain's weight.

Per labelled step the net reads detached features: the PRM's renormalised probabilities of the two
label tokens (p(+), p(-): the published input), the step's label and the chain's loss (the published
net saw neither), and on request (``hidden``) the PRM's last hidden state at the step's score
position, so the net can learn what a step whose label is wrong looks like and weigh unseen chains
alike (``prm_hidden_size`` is then the width of those states; train.py passes it). Linear(features,
h) + LeakyReLU, ``layers - 1`` more hidden layers, Linear(h, 1); the mean over the chain's labelled
steps goes through the activation. Everything the net reads is detached, so the PRM cannot lower its
own loss by lowering its weight."""

from __future__ import annotations

import torch
from torch import nn

from prm.reweight.base import Reweighter, TrainingSet, warn_if_negative

FEATURES = ("probs", "label", "loss", "hidden")


class InstanceNet(Reweighter):
    needs_data_pass = True

    def __init__(
        self,
        training_set: TrainingSet,
        activation: nn.Module,
        hidden_size: int = 10,
        layers: int = 1,
        features: list[str] | tuple[str, ...] = ("probs", "label", "loss"),
        normalize: str = "none",
        prm_hidden_size: int | None = None,
    ):
        super().__init__(training_set, normalize)
        unknown = [name for name in features if name not in FEATURES]
        if unknown or not features:
            raise ValueError(
                f"instance_net features must be a non-empty subset of {FEATURES}, got {list(features)}"
            )
        if layers < 1 or hidden_size < 1:
            raise ValueError("instance_net needs layers >= 1 and hidden_size >= 1")
        warn_if_negative(activation, "reweight=instance_net")
        if "hidden" in features and not prm_hidden_size:
            raise ValueError("instance_net feature 'hidden' needs prm_hidden_size (the PRM's hidden width)")
        self.features = tuple(features)
        width = 2 * ("probs" in features) + ("label" in features) + ("loss" in features)
        width += int(prm_hidden_size or 0) * ("hidden" in features)
        blocks: list[nn.Module] = []
        for index in range(layers):
            blocks += [nn.Linear(width if index == 0 else hidden_size, hidden_size), nn.LeakyReLU(0.01)]
        self.net = nn.Sequential(*blocks, nn.Linear(hidden_size, 1))
        self.activation = activation

    def inputs(self, batch, scores, losses) -> tuple[torch.Tensor, torch.Tensor]:
        """Detached per-step features ``[chains, steps, width]`` and the mask of labelled steps."""
        labels = batch["step_labels"].to(scores.logits.device)
        labelled = scores.mask & ~torch.isnan(labels)
        parts = []
        dtype = torch.promote_types(scores.logits.dtype, torch.float32)  # float32, or wider (float64 tests)
        if "probs" in self.features:
            positive = torch.sigmoid(scores.logits.detach().to(dtype))
            parts += [positive, 1 - positive]
        if "label" in self.features:
            parts.append(torch.nan_to_num(labels, nan=0.0).to(dtype))
        if "loss" in self.features:
            parts.append(losses.detach().to(dtype)[:, None].expand_as(labels))
        stacked = torch.stack(parts, dim=-1) if parts else labels.new_zeros(*labels.shape, 0).to(dtype)
        if "hidden" in self.features:
            if scores.hidden is None:
                raise ValueError("instance_net feature 'hidden' needs the PRM's hidden states in its scores")
            stacked = torch.cat([stacked, scores.hidden.detach().to(dtype)], dim=-1)
        return stacked, labelled

    def raw_weights(self, batch, scores, losses, has_label=None):
        features, labelled = self.inputs(batch, scores, losses)
        per_step = self.net(features.to(next(self.net.parameters()).dtype)).squeeze(-1)
        mean = (per_step * labelled).sum(-1) / labelled.sum(-1).clamp(min=1)
        return self.activation(mean)
