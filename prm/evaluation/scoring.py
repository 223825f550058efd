"""Running a PRM over chains: step scores for every chain, each chain scored once.

Batches are sorted by length so padding stays small; the scores come back in the input order as one
list of 1-D tensors (a chain's step probabilities), ready for any aggregation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from prm.data.dataset import ChainDataset, PRMCollator
from prm.device import autocast, to_device


@torch.no_grad()
def score_chains(
    prm,
    chains: Sequence,
    batch_size: int = 16,
    max_length: int | None = None,
    device="cpu",
    precision: str = "fp32",
    progress: bool = False,
    prefix_sharing: bool = False,
) -> list[torch.Tensor]:
    """Step probabilities of every chain, in the order given.

    ``prefix_sharing``: encode the question and images that chains share (the candidates of one
    best-of-N problem) once, see :mod:`prm.evaluation.prefix_sharing`; same scores up to float rounding.
    """
    if prefix_sharing:
        from prm.evaluation.prefix_sharing import score_chains_shared

        return score_chains_shared(prm, chains, batch_size, max_length, device, precision, progress)
    was_training = prm.training
    prm.eval()
    order = sorted(range(len(chains)), key=lambda i: sum(len(step) for step in chains[i].steps))
    dataset = ChainDataset([chains[i] for i in order])
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=PRMCollator(prm.backbone, max_length)
    )
    sorted_scores: list[torch.Tensor] = []
    for batch in tqdm(loader, desc="score", disable=not progress, dynamic_ncols=True):
        batch = to_device(batch, device)
        with autocast(device, precision):
            scores = prm(batch)
        probs = scores.probs.float().cpu()
        lengths = scores.mask.sum(-1).cpu()
        sorted_scores.extend(probs[row, : int(lengths[row])] for row in range(len(lengths)))
    prm.train(was_training)
    result: list[torch.Tensor] = [torch.empty(0)] * len(chains)
    for position, index in enumerate(order):
        result[index] = sorted_scores[position]
    return result
