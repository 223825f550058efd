"""Running a PRM over chains: step scores for every chain, each chain scored once.

Chains are sorted by token length (longest first) and batched in that order, so a batch holds chains
of similar length and padding stays small (with ``packing`` there is none); the scores come back in
the input order as one list of 1-D tensors (a chain's step probabilities), ready for any aggregation.
Longest first: the largest batch runs first, so running out of memory shows at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from prm.data.dataset import ChainDataset, PRMCollator, chain_lengths
from prm.device import autocast, to_device


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices that sort ``lengths`` longest first (ties keep the input order)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


@torch.no_grad()
def score_chains(
    prm,
    chains: Sequence,
    batch_size: int = 16,
    max_length: int | None = None,
    device="cpu",
    precision: str = "fp32",
    progress: bool = False,
    packing: bool = False,
    prefix_sharing: bool = False,
) -> list[torch.Tensor]:
    """Step probabilities of every chain, in the order given: ``len(chains)`` tensors of shape
    ``[steps of that chain]``. ``packing``: batches without padding (same scores up to float noise).
    Raises ValueError (from the collator) for a chain over ``max_length`` tokens.

    ``prefix_sharing``: encode the question and images that chains share (the candidates of one
    best-of-N problem) once, see :mod:`prm.evaluation.prefix_sharing`; same scores up to float rounding.
    With both, the chains scored whole are packed and the continuations of a shared prefix are not
    (one logged line says how many ran each way; the module doc of prefix_sharing says why).
    """
    if prefix_sharing:
        from prm.evaluation.prefix_sharing import score_chains_shared

        return score_chains_shared(
            prm, chains, batch_size, max_length, device, precision, progress, packing=packing
        )
    was_training = prm.training
    prm.eval()
    order = length_order(chain_lengths(chains, prm.backbone)) if len(chains) > batch_size else None
    dataset = ChainDataset([chains[i] for i in order] if order is not None else chains)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=PRMCollator(prm.backbone, max_length, packing),
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
    if order is None:
        return sorted_scores
    result: list[torch.Tensor] = [torch.empty(0)] * len(chains)
    for position, index in enumerate(order):
        result[index] = sorted_scores[position]
    return result
