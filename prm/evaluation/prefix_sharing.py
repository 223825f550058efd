"""Best-of-N scoring with a shared prefix: the question and images of a problem are encoded once.

The N candidates of a best-of-N problem share everything before their first step: the user turn
(question and images) and the assistant header. Scoring each candidate separately re-encodes that
prefix, images included, N times. Here the prefix of each problem runs once through the backbone
with ``use_cache=True``; its keys and values then serve every candidate, and only the candidates'
own tokens (steps and step markers) run through the backbone. Scores equal those of
:meth:`prm.model.prm.ProcessRewardModel.forward` on the whole chains up to float rounding (the
tests hold them to 1e-4 on every backbone family).

How the pieces are cut, all through :class:`prm.data.dataset.PRMCollator`, so the token ids are the
ones the unshared path sees:

- the *prefix* of a problem: its chain with no steps, with its images: the model inputs of the
  user turn and the assistant header (``P`` tokens, image tokens included);
- the *header*: the same without images (``H`` tokens), and the *candidates* without images. Each
  candidate's text-only token ids must start with the header's, and everything after it (``L``
  tokens: steps and markers) is its continuation. Images sit in the user turn, which special tokens
  separate from the assistant turn, so the continuation's tokens are the same with or without the
  images; the check on the header catches any tokenisation that merges across the boundary.

Positions: a continuation token ``j`` sits at ``start + j``, where ``start`` is the position after
the prefix's last one. For plain rotary models (Qwen2, InternVL's Qwen2) that is ``P``. Qwen2-VL and
Qwen2.5-VL give image tokens 3-D (M-RoPE) positions that advance by the image's grid side rather
than its token count, so ``start`` is the prefix's largest position + 1 (``P`` plus the model's
"rope delta"), computed with the model's own ``get_rope_index``. The positions are always passed
explicitly: the model's automatic path fails with a cache and a 2-D mask and would keep a stale
delta from another batch.

Batching: continuations of several problems share one forward pass. Their prefixes differ in length,
so each row's cached prefix is left-padded to the longest one in the batch (masked out in the
attention mask) and continuations are right-padded; causal attention means padding never changes a
real token's result. A fresh cache is assembled for every batch from the stored prefix tensors (the
cache grows in place during a forward pass, so a cache is never reused).

Chains fall back to the unshared path (:func:`prm.evaluation.scoring.score_chains`) when no other
chain has the same question and images, when the header check fails, or when the backbone's cache
is not a plain full-attention cache (sliding-window layers). The counts are logged and returned in
:class:`SharingReport`.

Packing (``data.packing``) and prefix sharing combine as far as they can: the chains scored whole
(the fallback above) are packed; the continuations are not, because each row attends to its own
problem's cached prefix, and a packed row (several chains end to end, no attention mask) has one
sequence of keys and values for all of them (their padding stays small: a problem's rows are sorted
by length before batching). The log line of every call says so when ``packing`` is on.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from prm.data.dataset import PRMCollator
from prm.data.records import LabelledChain
from prm.device import autocast, to_device
from prm.evaluation.scoring import score_chains
from prm.model import last_layer as last_layer_at_scores

log = logging.getLogger(__name__)


@dataclass
class SharingReport:
    """What :func:`score_chains_shared` did: chains and problems scored with a shared prefix or not."""

    shared_chains: int = 0
    shared_problems: int = 0
    unshared_chains: int = 0
    fallback_reasons: dict[str, int] = field(default_factory=dict)  # reason -> chains

    def fallback(self, reason: str, chains: int) -> None:
        self.unshared_chains += chains
        self.fallback_reasons[reason] = self.fallback_reasons.get(reason, 0) + chains


@dataclass
class _Problem:
    """One shared prefix: the model inputs of its user turn + header, and its cache once computed."""

    chain: object  # a chain of the problem (question and images are what matter)
    header_length: int  # H: text-only header tokens at the start of every candidate's token ids
    rows_left: int  # candidates not yet scored; the cache is dropped at 0
    cache: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # per layer [1, heads, P, dim]
    length: int = 0  # P: prefix tokens (image tokens included)
    start: int = 0  # position of the first continuation token


@dataclass
class _Row:
    """One candidate: its continuation token ids and step-marker positions within them."""

    index: int  # position in the caller's list of chains
    problem: int
    ids: torch.Tensor  # [L]
    markers: torch.Tensor  # [steps], positions in ``ids``


def prefix_key(chain, multimodal: bool) -> tuple:
    """Chains with equal keys have the same prefix: the same question and (for vision models) images."""
    return (chain.question, tuple(chain.images) if multimodal else ())


def _item(chain, images: bool, steps: bool = True) -> dict:
    """A dataset item for :class:`PRMCollator` (instance and domain indices are not used here)."""
    if not steps:
        chain = LabelledChain(id=chain.id, question=chain.question, steps=[], label=0, images=chain.images)
    return {"chain": chain, "instance": 0, "domain": 0, "images": list(chain.images) if images else []}


@torch.no_grad()
def score_chains_shared(
    prm,
    chains: Sequence,
    batch_size: int = 16,
    max_length: int | None = None,
    device="cpu",
    precision: str = "fp32",
    progress: bool = False,
    report: SharingReport | None = None,
    packing: bool = False,
) -> list[torch.Tensor]:
    """Step probabilities of every chain, in the order given, sharing each problem's prefix.

    Same contract as :func:`prm.evaluation.scoring.score_chains`: ``chains`` are ``LabelledChain`` /
    ``StepChain`` records; the result holds one 1-D float32 tensor of step probabilities per chain
    (``[steps]``, in [0, 1]). Chains with the same question and images (the candidates of one
    best-of-N problem, e.g. from :func:`prm.data.dataset.flatten_candidates`) share one prefix pass;
    the rest are scored one by one. ``batch_size`` bounds the candidates per continuation pass.
    ``report``, when given, is filled with the counts of shared and unshared chains. ``packing``: the
    chains scored whole are packed (:class:`prm.data.dataset.PRMCollator`); continuations on a shared
    prefix never are (see the module doc), and the log line says which chains ran which way.

    Raises ``ValueError`` when a chain is longer than ``max_length`` tokens (prefix included), as
    the unshared path does.
    """
    report = report if report is not None else SharingReport()
    collator = PRMCollator(prm.backbone)
    was_training = prm.training
    prm.eval()
    try:
        result = _score(
            prm, chains, collator, batch_size, max_length, device, precision, progress, report, packing
        )
    finally:
        prm.train(was_training)
    packed = (
        f"; data.packing: the {report.unshared_chains} chains scored whole are packed, the "
        f"{report.shared_chains} continuations of a shared prefix run padded (each attends to its own "
        "problem's cached prefix, which a packed row cannot hold)"
        if packing
        else ""
    )
    log.info(
        "prefix sharing: %d chains of %d problems scored with a shared prefix, %d without (%s)%s",
        report.shared_chains,
        report.shared_problems,
        report.unshared_chains,
        ", ".join(f"{reason}: {n}" for reason, n in report.fallback_reasons.items()) or "none",
        packed,
    )
    return result


def _score(prm, chains, collator, batch_size, max_length, device, precision, progress, report, packing):
    backbone = prm.backbone

    groups: dict[tuple, list[int]] = {}
    for index, chain in enumerate(chains):
        groups.setdefault(prefix_key(chain, backbone.is_multimodal), []).append(index)
    if _has_sliding_layers(prm.model):
        groups, unshared = {}, list(range(len(chains)))
        report.fallback("sliding-window attention layers", len(chains))
    else:
        unshared = []

    problems: list[_Problem] = []
    rows: list[_Row] = []
    for members in groups.values():
        if len(members) < 2:
            unshared.extend(members)
            report.fallback("no other chain with the same prefix", len(members))
            continue
        planned = _plan_problem(collator, [chains[i] for i in members], members, len(problems))
        if planned is None:
            unshared.extend(members)
            report.fallback("header tokens differ from the chain's own", len(members))
            continue
        problem, problem_rows = planned
        problems.append(problem)
        rows.extend(problem_rows)
        report.shared_chains += len(members)
        report.shared_problems += 1

    result: list[torch.Tensor] = [torch.empty(0)] * len(chains)
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    for batch in tqdm(batches, desc="score (shared prefix)", disable=not progress, dynamic_ncols=True):
        with autocast(device, precision):
            pending = {
                row.problem: problems[row.problem] for row in batch if problems[row.problem].cache is None
            }
            if pending:
                _encode_prefixes(prm, collator, list(pending.values()), device)
            for row in batch:
                problem = problems[row.problem]
                if max_length is not None and problem.length + len(row.ids) > max_length:
                    raise ValueError(
                        f"chain {chains[row.index].id!r} is {problem.length + len(row.ids)} tokens long, "
                        f"over max_length={max_length}; raise data.max_length or shorten the chain"
                    )
            probs = _score_continuations(prm, problems, batch, device)
        for row, row_probs in zip(batch, probs):
            result[row.index] = row_probs
            problem = problems[row.problem]
            problem.rows_left -= 1
            if problem.rows_left == 0:
                problem.cache = None
    if unshared:
        scores = score_chains(
            prm,
            [chains[i] for i in unshared],
            batch_size,
            max_length,
            device,
            precision,
            progress=progress,
            packing=packing,
        )
        for index, scored in zip(unshared, scores):
            result[index] = scored
    return result


def _has_sliding_layers(model) -> bool:
    config = model.config.get_text_config(decoder=True)
    layer_types = getattr(config, "layer_types", None) or []
    return bool(getattr(config, "use_sliding_window", False)) or any(
        kind != "full_attention" for kind in layer_types
    )


def _plan_problem(collator: PRMCollator, chains: list, indices: list[int], problem_index: int):
    """The problem's header length and its candidates' continuations, or None if the header check fails."""
    # One collation: row 0 is the header (the first chain without steps), rows 1.. the candidates.
    items = [_item(chains[0], images=False, steps=False)] + [_item(chain, images=False) for chain in chains]
    text = collator(items)
    ids, mask = text["inputs"]["input_ids"], text["inputs"]["attention_mask"]
    header = ids[0][mask[0].bool()]
    size = len(header)
    rows = []
    for row, (index, chain) in enumerate(zip(indices, chains), start=1):
        real = mask[row].nonzero().flatten()  # one block: right padding, or left (InternVL's processor)
        first, end = int(real[0]), int(real[-1]) + 1
        if end - first < size or not torch.equal(ids[row, first : first + size], header):
            return None
        rows.append(
            _Row(
                index=index,
                problem=problem_index,
                ids=ids[row, first + size : end].clone(),
                markers=text["marker_positions"][row, : len(chain.steps)] - first - size,
            )
        )
    rows.sort(key=lambda r: len(r.ids))
    return _Problem(chain=chains[0], header_length=size, rows_left=len(rows)), rows


def _encode_prefixes(prm, collator: PRMCollator, pending: list[_Problem], device) -> None:
    """Run the prefixes (user turn with images + assistant header) of ``pending`` in one pass; keep
    each one's keys and values (its real tokens only), length and next position."""
    inputs = to_device(
        collator([_item(problem.chain, images=True, steps=False) for problem in pending]), device
    )
    inputs = inputs["inputs"]
    mask = inputs["attention_mask"]
    rope_index = getattr(prm.model.model, "get_rope_index", None)
    if rope_index is not None and inputs.get("image_grid_thw") is not None:
        accepted = inspect.signature(rope_index).parameters
        positions, _ = rope_index(**{k: v for k, v in inputs.items() if k in accepted})  # [3, B, T]
        ends = positions.masked_fill(~mask.bool().unsqueeze(0), -1).amax(dim=(0, 2)) + 1
    else:
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]: 0, 1, ... over real tokens
        ends = mask.long().sum(-1)
    base = prm.model.model
    if prm.sparse_last_layer:  # nothing is scored in a prefix: its last layer gives keys and values only
        cache = last_layer_at_scores.prefix_cache(base, {**inputs, "position_ids": positions})
    else:
        cache = base(**inputs, position_ids=positions, use_cache=True).past_key_values
    for b, problem in enumerate(pending):
        real = mask[b].nonzero().flatten()  # one block: right or left padding
        first, end = int(real[0]), int(real[-1]) + 1
        problem.cache = (
            [layer.keys[b : b + 1, :, first:end] for layer in cache.layers],
            [layer.values[b : b + 1, :, first:end] for layer in cache.layers],
        )
        problem.length = end - first
        problem.start = int(ends[b])


def _score_continuations(prm, problems: list[_Problem], rows: list[_Row], device) -> list[torch.Tensor]:
    """Step probabilities of each row: its continuation run on its problem's cached prefix."""
    scored = [row for row in rows if len(row.markers)]
    out = {id(row): torch.empty(0) for row in rows}
    if not scored:
        return [out[id(row)] for row in rows]
    prefix_max = max(problems[row.problem].length for row in scored)
    cont_max = max(len(row.ids) for row in scored)
    batch = len(scored)
    pad_id = prm.backbone.tokenizer.pad_token_id or 0
    input_ids = torch.full((batch, cont_max), pad_id, dtype=torch.long)
    attention = torch.zeros(batch, prefix_max + cont_max, dtype=torch.long)
    positions = torch.zeros(batch, cont_max, dtype=torch.long)
    for b, row in enumerate(scored):
        problem = problems[row.problem]
        input_ids[b, : len(row.ids)] = row.ids
        attention[b, prefix_max - problem.length : prefix_max + len(row.ids)] = 1
        positions[b] = problem.start + torch.arange(cont_max)
    layers = []
    for layer in range(len(problems[scored[0].problem].cache[0])):
        pair = []
        for part in (0, 1):
            first = problems[scored[0].problem].cache[part][layer]
            stacked = first.new_zeros(batch, first.shape[1], prefix_max, first.shape[3])
            for b, row in enumerate(scored):
                problem = problems[row.problem]
                stacked[b, :, prefix_max - problem.length :] = problem.cache[part][layer][0]
            pair.append(stacked)
        layers.append(tuple(pair))
    max_steps = max(len(row.markers) for row in scored)
    markers = torch.zeros(batch, max_steps, dtype=torch.long)
    for b, row in enumerate(scored):
        markers[b, : len(row.markers)] = row.markers
    inputs = dict(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        position_ids=positions.to(device),
        past_key_values=DynamicCache(ddp_cache_data=layers),
    )
    # the rows continue the cached prefixes (the last layer at the markers only where it can)
    at_markers = prm.hidden_at_markers({"inputs": inputs, "marker_positions": markers.to(device)})
    probs = torch.sigmoid(prm.step_logits(at_markers)).float().cpu()
    for b, row in enumerate(scored):
        out[id(row)] = probs[b, : len(row.markers)]
    return [out[id(row)] for row in rows]
