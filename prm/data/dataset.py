"""Datasets and collation: native records -> padded model batches with step-marker positions.

A batch holds the processor's model inputs (token ids, attention mask, pixel values, ...) plus, per
chain, the positions whose hidden state scores each step (``marker_positions``: the step markers
under ``prompt=marker``, the token before each reply under ``prompt=conversation``; see
:mod:`prm.model.prompts`) and a padded ``[batch, max_steps]`` table of step labels
(NaN where a step has no label or the chain has fewer steps), the chain label for meta chains, and
the instance and domain indices the reweighting modules look up. Sequences are right-padded, so a
chain's tokens and marker positions do not depend on what else is in the batch.

With ``packing=True`` the padded batch is then packed (:func:`pack_inputs`): the chains' real tokens
are laid end to end in rows as long as the batch's longest chain, each chain's positions restart at
0 (3-D M-RoPE positions for the ``mrope`` families, Qwen2-VL / Qwen2.5-VL, computed per chain by
:func:`prm.model.positions.position_ids`), and no attention mask is passed, so transformers builds
a block-diagonal causal mask from the position resets (its packed-sequence support, which works with
the CPU ``sdpa`` and ``eager`` attention): a chain attends only to its own tokens, and its scores
equal the padded batch's up to float noise.
:func:`chain_lengths` gives the token lengths that :class:`prm.data.sampling.LengthGroupedSampler`
groups by.
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
from prm.model.families import FamilySpec
from prm.model.positions import position_ids

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


def meta_step_labels(first_error: int, steps: int) -> list[float]:
    """Step labels of a whole-chain-labelled chain whose first wrong step is known: 1 before it, 0 at
    it and after (no continuation of a wrong prefix is right: the convention of Monte Carlo step
    labels, and of the demo's training labels); every step 1 when ``first_error == -1``. What
    ``reweight.upper.loss_target=steps`` (the meta loss on steps) trains against."""
    if first_error < 0:
        return [1.0] * steps
    return [1.0] * first_error + [0.0] * (steps - first_error)


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


def chain_lengths(chains: Sequence[Chain], backbone: Backbone) -> list[int]:
    """Token count of each chain as :class:`PRMCollator` renders it: in ``backbone.prompt``'s layout
    (marker or conversation, with the same teacher-forced replies), tokenised without added special
    tokens; each image counts as its placeholder tokens before the processor expands them (images of
    one data set have similar sizes, so this orders chains like their true lengths; without images the
    counts equal the collated ones). Returns ``len(chains)`` ints. Raises ValueError naming the chain
    when the prompt cannot render it, as the collator does."""
    prompt = backbone.prompt
    texts = []
    for chain in chains:
        images = len(chain.images) if backbone.is_multimodal else 0
        labels = chain.labels if isinstance(chain, StepChain) else None
        try:
            texts.append(prompt.render(backbone, chain.question, chain.steps, images, labels).text)
        except ValueError as error:
            raise ValueError(f"chain {chain.id!r} (prompt={prompt.name}): {error}") from error
    encoded = backbone.tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [len(ids) for ids in encoded]


PER_TOKEN = ("input_ids", "mm_token_type_ids", "token_type_ids")  # [batch, length] inputs packed alike


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Chains placed into rows of ``capacity`` tokens in their order (next fit: a chain that does not
    fit the current row opens the next one). Returns the chain indices of each row. Raises ValueError
    for a chain longer than ``capacity``."""
    rows: list[list[int]] = []
    used = capacity
    for index, length in enumerate(lengths):
        if length > capacity:
            raise ValueError(f"chain {index} has {length} tokens, over the row capacity {capacity}")
        if used + length > capacity:
            rows.append([])
            used = 0
        rows[-1].append(index)
        used += length
    return rows


def pack_inputs(
    inputs: dict[str, torch.Tensor], spec: FamilySpec, model, pad_token_id: int = 0
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pack padded model inputs into as few rows as the chains fit, each as long as the longest chain.

    Chains keep their order (rows are filled by :func:`pack_rows`), so images stay in the order of
    their placeholder tokens. Every chain's positions restart at 0, and so do those of the padding at
    a row's end; with no attention mask, transformers reads the position resets as sequence
    boundaries and builds a block-diagonal causal mask (each chain attends only to itself). The
    attention cost per row never exceeds the padded batch's, and the rows hold fewer pad tokens.

    Args:
        inputs: processor / tokenizer output with ``input_ids`` and ``attention_mask`` ``[batch, length]``
            (padded on either side), plus pixel inputs that are passed through unchanged (they are already
            concatenated over the batch's images in chain order).
        spec: the backbone's family: an ``mrope`` family (Qwen2-VL, Qwen2.5-VL) gets each chain's
            M-RoPE positions as in the padded batch (:func:`prm.model.positions.position_ids`).
        model: the backbone's ``PreTrainedModel`` (its base model computes M-RoPE positions).
        pad_token_id: the token id written into a row's unused tail.

    Returns:
        The packed inputs (``input_ids`` ``[rows, longest]``, ``position_ids`` ``[rows, longest]``, or
        ``[4, rows, longest]`` for M-RoPE: the 1-D text positions first, which is how Qwen2-VL models
        take packed positions, then the temporal/height/width rows; no ``attention_mask``) and, for
        every padded position ``[batch, length]``, its index in the flattened packed rows (-1 at
        padding).
    """
    mask = inputs["attention_mask"].bool()
    lengths = mask.sum(1).tolist()
    capacity = max(lengths)
    rows = pack_rows(lengths, capacity)
    starts = torch.zeros(len(lengths), dtype=torch.long)  # flat index of each chain's first token
    positions = torch.zeros(len(rows), capacity, dtype=torch.long)
    for row, chains in enumerate(rows):
        used = 0
        for chain in chains:
            starts[chain] = row * capacity + used
            positions[row, used : used + lengths[chain]] = torch.arange(lengths[chain])
            used += lengths[chain]
        positions[row, used:] = torch.arange(capacity - used)  # the tail: a sequence of its own
    within = mask.long().cumsum(1) - 1  # a real token's position within its chain
    packed_index = torch.where(mask, starts.unsqueeze(1) + within, -1)
    destination = packed_index[mask]
    packed = {key: value for key, value in inputs.items() if key not in PER_TOKEN and key != "attention_mask"}
    for key in PER_TOKEN:
        if key in inputs:
            fill = pad_token_id if key == "input_ids" else 0
            flat = torch.full((len(rows) * capacity,), fill, dtype=inputs[key].dtype)
            flat[destination] = inputs[key][mask]
            packed[key] = flat.view(len(rows), capacity)
    if spec.rope == "mrope":
        # The 4-row layout (text positions, then temporal/height/width) is what tells the model the
        # rows are packed: 3-D positions alone would be read as M-RoPE positions with no sequence
        # boundaries (every chain would see its row's earlier ones). Without images the three M-RoPE
        # rows equal the text positions; the tail of every row continues them, a sequence of its own.
        padded = position_ids(spec, model, inputs)
        padded = padded if padded.dim() == 3 else padded.unsqueeze(0).expand(3, -1, -1)
        flat = positions.view(1, -1).repeat(3, 1)
        flat[:, destination] = padded[:, mask]
        packed["position_ids"] = torch.cat([positions.unsqueeze(0), flat.view(3, len(rows), capacity)], 0)
    else:
        packed["position_ids"] = positions
    return packed, packed_index


@dataclass
class PRMCollator:
    """Turns dataset items into one right-padded batch for ``backbone``, or a packed one (``packing``)."""

    backbone: Backbone
    max_length: int | None = None
    packing: bool = False

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
            # padded lists, made tensors here: transformers' own conversion walks the nested lists in
            # Python first (half the tokenizer call's time on a best-of-N problem's short chains)
            encoded = backbone.tokenizer(texts, padding=True, add_special_tokens=False)
            inputs = {key: torch.tensor(value, dtype=torch.long) for key, value in encoded.items()}
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
            elif chain.first_error is not None:  # a meta chain whose first wrong step is known
                for column, label in enumerate(meta_step_labels(chain.first_error, len(chain.steps))):
                    step_labels[row, column] = label
        num_tokens = int(inputs["attention_mask"].sum())
        if self.packing:
            pad = backbone.tokenizer.pad_token_id
            inputs, packed_index = pack_inputs(
                inputs, backbone.spec, backbone.model, pad if pad is not None else 0
            )
            marker_positions = torch.where(step_mask, packed_index.gather(1, marker_positions), 0)
        batch = {
            "inputs": inputs,
            "packed": self.packing,
            "num_tokens": num_tokens,
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
