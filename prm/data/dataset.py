"""Datasets and collation: native records -> padded model batches with step-marker positions.

A batch holds the processor's model inputs (token ids, attention mask, pixel values, ...) plus, per
chain, the positions whose hidden state scores each step (``marker_positions``: the step markers
under ``prompt=marker``, the token before each reply under ``prompt=conversation``; see
:mod:`prm.model.prompts`) and a padded ``[batch, max_steps]`` table of step labels
(NaN where a step has no label or the chain has fewer steps), the chain label for meta chains, and
the instance and domain indices the reweighting modules look up. Sequences are right-padded, so a
chain's tokens and marker positions do not depend on what else is in the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from prm.data.images import load_image
from prm.data.records import BestOfNProblem, LabelledChain, StepChain
from prm.model.backbones import Backbone

Chain = StepChain | LabelledChain


def flatten_candidates(problems: Sequence[BestOfNProblem]) -> list[LabelledChain]:
    """One LabelledChain per candidate (``meta`` keeps problem id and candidate index) for scoring."""
    chains = []
    for problem in problems:
        for index, candidate in enumerate(problem.candidates):
            chains.append(
                LabelledChain(
                    id=f"{problem.id}#{index}",
                    question=problem.question,
                    steps=candidate.steps,
                    label=int(candidate.correct),
                    images=problem.images,
                    domain=problem.domain,
                    final_answer=candidate.final_answer,
                    first_error=candidate.first_error,
                    meta={"problem": problem.id, "candidate": index},
                )
            )
    return chains


class ChainDataset(Dataset):
    """Chains with stable instance indices (their position) and domain indices (sorted names).

    Image paths are used as the readers resolved them (against the data's image root).
    """

    def __init__(self, chains: Sequence[Chain], domains: Sequence[str] | None = None):
        self.chains = list(chains)
        self.domains = (
            list(domains) if domains is not None else sorted({chain.domain for chain in self.chains})
        )
        self.domain_index = {name: index for index, name in enumerate(self.domains)}
        unknown = {chain.domain for chain in self.chains} - set(self.domain_index)
        if unknown:
            raise ValueError(f"chains of domains {sorted(unknown)} are not in the domain list {self.domains}")

    def __len__(self) -> int:
        return len(self.chains)

    def __getitem__(self, index: int) -> dict[str, Any]:
        chain = self.chains[index]
        return {
            "chain": chain,
            "instance": index,
            "domain": self.domain_index[chain.domain],
            "images": list(chain.images),
        }


@dataclass
class PRMCollator:
    """Turns dataset items into one right-padded batch for ``backbone``."""

    backbone: Backbone
    max_length: int | None = None

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        backbone = self.backbone
        prompt = backbone.prompt  # marker or conversation layout (prm/model/prompts.py)
        rendered, images = [], []
        for item in items:
            chain = item["chain"]
            if not backbone.is_multimodal and item["images"]:
                item = {**item, "images": []}  # text-only backbone: images are not read
            labels = chain.labels if isinstance(chain, StepChain) else None
            try:
                rendered.append(
                    prompt.render(backbone, chain.question, chain.steps, len(item["images"]), labels)
                )
            except ValueError as error:
                raise ValueError(f"chain {chain.id!r} (prompt={prompt.name}): {error}") from error
            images.extend(load_image(path) for path in item["images"])
        texts = [r.text for r in rendered]
        if backbone.is_multimodal:
            inputs = backbone.processor(
                text=texts,
                images=images or None,
                padding=True,
                return_tensors="pt",
                add_special_tokens=False,  # the chat template wrote them
                **backbone.processor_kwargs,
            )
        else:
            inputs = backbone.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        inputs = dict(inputs)
        input_ids = inputs["input_ids"]
        if self.max_length is not None and input_ids.shape[1] > self.max_length:
            lengths = inputs["attention_mask"].sum(1)
            worst = int(lengths.argmax())
            raise ValueError(
                f"chain {items[worst]['chain'].id!r} is {int(lengths[worst])} tokens long, over "
                f"max_length={self.max_length}; raise data.max_length or shorten the chain"
            )

        max_steps = max(len(item["chain"].steps) for item in items)
        marker_positions = torch.zeros(len(items), max(max_steps, 1), dtype=torch.long)
        step_mask = torch.zeros(len(items), max(max_steps, 1), dtype=torch.bool)
        step_labels = torch.full((len(items), max(max_steps, 1)), math.nan)
        for row, item in enumerate(items):
            chain = item["chain"]
            end = int(inputs["attention_mask"][row].nonzero().max()) + 1  # some processors pad left
            try:
                positions = prompt.score_positions(backbone, rendered[row], input_ids[row], end)
                if len(positions) != len(chain.steps):
                    raise ValueError(f"{len(positions)} score positions for {len(chain.steps)} steps")
            except ValueError as error:
                raise ValueError(f"chain {chain.id!r} (prompt={prompt.name}): {error}") from error
            marker_positions[row, : len(positions)] = torch.tensor(positions, dtype=torch.long)
            step_mask[row, : len(positions)] = True
            if isinstance(chain, StepChain):
                for column, label in enumerate(chain.labels):
                    if label is not None:
                        step_labels[row, column] = float(label)
        batch = {
            "inputs": inputs,
            "marker_positions": marker_positions,
            "step_mask": step_mask,
            "step_labels": step_labels,
            "instance": torch.tensor([item["instance"] for item in items], dtype=torch.long),
            "domain": torch.tensor([item["domain"] for item in items], dtype=torch.long),
            "ids": [item["chain"].id for item in items],
        }
        if all(isinstance(item["chain"], LabelledChain) for item in items):
            batch["chain_label"] = torch.tensor([item["chain"].label for item in items], dtype=torch.float)
        return batch
