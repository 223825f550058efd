"""The process reward model: a backbone plus a step head, scoring every step in one forward pass.

The backbone's base model (no language-model head) runs once per chain; the hidden states at the
score positions the collator found (``batch["marker_positions"]``) are then scored. Which positions
depends on the backbone's prompt format (:mod:`prm.model.prompts`): the step markers
(``prompt=marker``), or under ``prompt=conversation`` the token just before each teacher-forced
reply, whose next-token distribution is the model's answer for that step, so the token head reads
P(+) exactly where the reply is predicted. The heads:

- ``token`` head: the hidden state is projected onto the language-model head rows of the two label
  tokens only, and the step score is P(+) renormalised over (+, -), i.e. sigmoid(l+ - l-), computed
  as one projection onto the difference of the two rows. Full vocabulary logits are never
  materialised (with a 151k vocabulary they dominate time and memory).
  Loss: cross-entropy against the soft target [p, 1 - p], i.e. binary cross-entropy on l+ - l-.
- ``value`` head: a linear layer on the hidden state, sigmoid, MSE to the Monte Carlo value
  (DreamPRM's objective, without its one-forward-pass-per-prefix cost).

**Precision.** The heads, their sigmoid and every loss and aggregation on their output run in
float32 even when the backbone runs under bf16 autocast (:meth:`ProcessRewardModel.step_logits`):
bf16 label logits near 20 are 0.125 apart, which would quantise the scores.

Losses are returned per example (the mean over the chain's labelled steps), so the upper level of a
bi-level run can weight each instance; a chain with no labelled step has loss 0 and ``has_label``
False. Padding never changes a chain's result: sequences are right-padded and the markers are
gathered by position. A packed batch (``batch["packed"]``, see :func:`prm.data.dataset.pack_inputs`)
lays chains end to end in rows with per-chain positions and a block-diagonal causal mask; its markers
are indices into the flattened rows.

``last_layer="scores"`` (the default) computes the last decoder layer at the score positions only
where the backbone allows it (:mod:`prm.model.last_layer`: Llama-family decoders,
the language models of Qwen2-VL, Qwen2.5-VL and InternVL included); the scores
are those of the full layer up to float rounding. ``"full"`` always runs the whole layer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prm.config import Head, LastLayer, check_choice
from prm.model import last_layer as last_layer_at_scores
from prm.model.backbones import Backbone

log = logging.getLogger(__name__)


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` promoted to float32 or wider: bf16 / fp16 -> float32, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


@dataclass
class StepScores:
    """Per-step outputs of one batch: ``[chains, max_steps]`` each."""

    logits: torch.Tensor  # log-odds of a correct step, float32
    mask: torch.Tensor  # True where the chain has that step
    hidden: torch.Tensor | None = None  # detached score-position hidden states [chains, max_steps, hidden]

    @property
    def probs(self) -> torch.Tensor:
        """P(correct step) = sigmoid(logits), ``[chains, max_steps]``, in the logits' dtype (at least
        float32), autocast off."""
        with torch.autocast(device_type=self.logits.device.type, enabled=False):
            return torch.sigmoid(self.logits.to(at_least_float32(self.logits.dtype)))


class ProcessRewardModel(nn.Module):
    """Backbone + step head. ``forward(batch)`` gives :class:`StepScores`; ``losses`` per example.

    Args:
        backbone: the loaded backbone.
        head: ``token`` or ``value`` (see the module docstring).
        last_layer: ``scores`` (the last decoder layer at the score positions only, where the
            backbone supports it) or ``full``.

    Raises:
        ConfigError (a ValueError): an unknown head or last-layer mode (a caller or a checkpoint's
            config.yaml that no schema checked); the vocabularies are :class:`prm.config.Head` and
            :class:`prm.config.LastLayer`.
    """

    def __init__(self, backbone: Backbone, head: str = Head.token, last_layer: str = LastLayer.scores):
        super().__init__()
        check_choice("prm.head", head, Head)
        check_choice("prm.last_layer", last_layer, LastLayer)
        self.backbone = backbone
        self.model = backbone.model
        self.head = head
        self.last_layer = last_layer
        if last_layer == "scores":
            log.info(
                "last decoder layer: %s",
                "at the score positions only"
                if self.sparse_last_layer
                else "at every token (this backbone needs the full layer)",
            )
        self.value_head = nn.Linear(self.hidden_size, 1) if head == "value" else None
        self.register_buffer("label_ids", torch.tensor(backbone.label_token_ids), persistent=False)

    @property
    def hidden_size(self) -> int:
        config = self.model.config
        return getattr(config, "text_config", config).hidden_size

    @property
    def sparse_last_layer(self) -> bool:
        """Whether the last decoder layer runs at the score positions only: ``last_layer="scores"``
        and a backbone :func:`prm.model.last_layer.supports` (checked per call: compilation and
        ZeRO-3 wrap the model after the PRM is built)."""
        return self.last_layer == "scores" and last_layer_at_scores.supports(self.model.model)

    def hidden_at_markers(self, batch: dict) -> torch.Tensor:
        """Hidden states of the last layer at each step's score position (its marker, or the token
        that predicts its reply): ``[chains, max_steps, hidden]``. ``batch["inputs"]`` may carry a
        cached prefix (``past_key_values``, best-of-N prefix sharing) that the rows continue."""
        base = self.model.model
        if self.sparse_last_layer:
            positions = batch["marker_positions"]
            if not batch.get("packed"):  # [chains, steps] within each row -> into the flattened rows
                length = batch["inputs"]["input_ids"].shape[1]
                rows = torch.arange(positions.shape[0], device=positions.device).unsqueeze(1)
                positions = rows * length + positions
            return last_layer_at_scores.hidden_at_positions(base, batch["inputs"], positions)
        outputs = base(**batch["inputs"], use_cache=False)
        hidden = outputs.last_hidden_state
        if batch.get("packed"):  # rows [rows, length, hidden]; markers index the flattened rows
            return hidden.reshape(-1, hidden.shape[-1])[batch["marker_positions"]]
        index = batch["marker_positions"].unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return hidden.gather(1, index)

    def forward(self, batch: dict) -> StepScores:
        hidden = self.hidden_at_markers(batch)
        # the hidden states go out detached: an instance net may read them (features: [hidden])
        return StepScores(logits=self.step_logits(hidden), mask=batch["step_mask"], hidden=hidden.detach())

    def step_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Log-odds of a correct step from score-position hidden states: ``[..., hidden]`` -> ``[...]``.

        The head always runs in float32 (float64 when the hidden states or the head's weights are
        float64) with autocast off, whatever the precision of the backbone that produced ``hidden``
        (``train.precision=bf16`` / evaluate ``precision=bf16`` run the backbone under bf16
        autocast, and DeepSpeed's bf16 keeps the weights themselves in bf16):

        - ``token``: ``hidden @ (w+ - w-)``, where ``w+``, ``w-`` are the LM-head rows of the two
          label words. It equals l+ - l- (the difference of the two label logits), but without
          rounding l+ and l- first: in bf16 (8 significant bits, spacing 0.125 between 16 and 32)
          two logits near 20 leave their difference a multiple of 0.125, so the scores of a whole
          test set collapse to a handful of values.
        - ``value``: the linear value head.

        Gradients flow to ``hidden`` (so to the backbone) and to the LM-head rows / value head; the
        casts are part of the graph. Returns float32.
        """
        if self.head == "token":
            weight = self.model.get_output_embeddings().weight[self.label_ids]  # [2, hidden]
        else:
            weight = self.value_head.weight  # [1, hidden]
        dtype = at_least_float32(torch.promote_types(hidden.dtype, weight.dtype))
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            features, weight = hidden.to(dtype), weight.to(dtype)
            if self.head == "token":
                logits = features @ (weight[0] - weight[1])
            else:
                logits = F.linear(features, weight, self.value_head.bias.to(dtype)).squeeze(-1)
            return logits.float()

    def losses(self, scores: StepScores, step_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example loss ``[chains]`` (mean over labelled steps; float32 or wider, autocast off) and
        whether each chain had a label. ``step_labels``: ``[chains, max_steps]``, NaN where a step is
        unlabelled."""
        dtype = at_least_float32(torch.promote_types(scores.logits.dtype, step_labels.dtype))
        with torch.autocast(device_type=scores.logits.device.type, enabled=False):
            logits = scores.logits.to(dtype)
            labelled = scores.mask & ~torch.isnan(step_labels)
            targets = torch.nan_to_num(step_labels.to(dtype), nan=0.0)
            if self.head == "token":
                per_step = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
            else:
                per_step = (torch.sigmoid(logits) - targets) ** 2
            per_step = torch.where(labelled, per_step, torch.zeros_like(per_step))
            counts = labelled.sum(-1)
            return per_step.sum(-1) / counts.clamp(min=1), counts > 0

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        return (
            {}
            if self.value_head is None
            else {f"value_head.{k}": v for k, v in self.value_head.state_dict().items()}
        )

    def load_head_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a saved value head; an empty state (a plain backbone checkpoint) keeps the fresh head."""
        if self.value_head is not None and state:
            self.value_head.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items()})
