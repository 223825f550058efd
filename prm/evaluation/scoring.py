"""Running a PRM over chains: step scores for every chain, each chain scored once, whole or on a
shared prefix.

Whole chains (:func:`score_chains`): sorted by token length (longest first) and batched in that
order, so a batch holds chains of similar length and padding stays small (with ``packing`` there is
none); the scores come back in the input order as one list of 1-D tensors (a chain's step
probabilities), ready for any aggregation. Longest first: the largest batch runs first, so running
out of memory shows at once.

Shared prefix (:func:`score_chains_shared`, ``score_chains(prefix_sharing=True)``): the N
candidates of a best-of-N problem share everything before their first step: the user turn (question
and images) and the assistant header. Scoring each candidate whole re-encodes that prefix, images
included, N times. Here the chains are grouped by prefix, each problem's prefix runs once through the
backbone and its keys and values serve every candidate, so only the candidates' own tokens (steps and
step markers) run N times (the kernel: :mod:`prm.model.prefix_cache`). Scores equal those of whole
chains up to float rounding (``tests/test_prefix_sharing.py`` holds them to 1e-5 of their scale on
every family).

How the pieces are cut, all through :class:`prm.data.dataset.PRMCollator`, so the token ids are the
ones the whole-chain path sees:

- the *prefix* of a problem: its chain with no steps, with its images: the model inputs of the
  user turn and the assistant header (``P`` tokens, image tokens included);
- the *header*: the same without images (``H`` tokens), and the *candidates* without images. Each
  candidate's text-only token ids must start with the header's, and everything after it (``L``
  tokens: steps and markers) is its continuation. Images sit in the user turn, which special tokens
  separate from the assistant turn, so the continuation's tokens are the same with or without the
  images; the check on the header catches any tokenisation that merges across the boundary.

Continuation batches are length-sorted too: the problems' rows are taken in windows of at least
:data:`SORT_WINDOW` batches (whole problems), and each window's rows are sorted by length, longest
first, before they are cut into batches, so a batch holds continuations of similar length from
several problems (each on its own cached prefix) instead of one problem's short and long candidates
padded to the longest (best-of-N candidates differ in length: on the service benchmark's GRPO groups
43% of the padded tokens were padding, 0.2% after sorting). A window bounds the prefix caches held
at once to its problems'.

A caller that has already tokenised the chains this way (the service does, for its length check:
:mod:`prm.serve.requests`) passes each chain's :class:`Continuation` (``score_chains(continuations=
...)``) and the text-only collation is not repeated.

Chains fall back to whole-chain scoring when no other chain has the same question and images, when
the header check fails, or when the backbone's cache is not a plain full-attention cache
(sliding-window layers). The counts are logged and returned in :class:`SharingReport`.

Packing (``data.packing``) and prefix sharing combine as far as they can: the chains scored whole
(the fallback above) are packed; the continuations are not, because each row attends to its own
problem's cached prefix, and a packed row (several chains end to end, no attention mask) has one
sequence of keys and values for all of them (their padding stays small: rows are sorted by length
before batching, see above). The log line of every call says so when ``packing`` is on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from prm.data.dataset import ChainDataset, PRMCollator, chain_lengths
from prm.data.records import LabelledChain
from prm.device import autocast, to_device
from prm.model.prefix_cache import CachedPrefix, continuation_inputs, encode_prefixes, has_sliding_layers

log = logging.getLogger(__name__)


SORT_WINDOW = 8  # continuation batches per length-sorted window of problems (module doc)


@contextmanager
def eval_mode(module: torch.nn.Module):
    """``module`` in eval mode for the block, each submodule's own mode restored after it. Only the
    modules in training mode are switched (none, usually: a recursive ``eval()`` / ``train()`` pair
    costs a few milliseconds on a large model, as much as a short chain's forward pass on a GPU)."""
    training = [m for m in module.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


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
    continuations: Sequence[Continuation | None] | None = None,
) -> list[torch.Tensor]:
    """Step probabilities of every chain, in the order given: ``len(chains)`` tensors of shape
    ``[steps of that chain]``. ``packing``: batches without padding (same scores up to float noise).
    Raises ValueError (from the collator) for a chain over ``max_length`` tokens.

    ``prefix_sharing``: encode the question and images that chains share (the candidates of one
    best-of-N problem) once, see :func:`score_chains_shared`; same scores up to float rounding.
    With both, the chains scored whole are packed and the continuations of a shared prefix are not
    (one logged line says how many ran each way; the module doc says why). ``continuations``: with
    ``prefix_sharing``, each chain's :class:`Continuation` where the caller has it (None where it has
    not), so that its text is not tokenised again; the scores are the same.
    """
    if prefix_sharing:
        return score_chains_shared(
            prm,
            chains,
            batch_size,
            max_length,
            device,
            precision,
            progress,
            packing=packing,
            continuations=continuations,
        )
    return score_whole_chains(prm, chains, batch_size, max_length, device, precision, progress, packing)


@torch.no_grad()
def score_whole_chains(
    prm,
    chains: Sequence,
    batch_size: int = 16,
    max_length: int | None = None,
    device="cpu",
    precision: str = "fp32",
    progress: bool = False,
    packing: bool = False,
) -> list[torch.Tensor]:
    """:func:`score_chains` without prefix sharing: every chain runs whole, in length-sorted batches."""
    with eval_mode(prm):
        return _score_whole(prm, chains, batch_size, max_length, device, precision, progress, packing)


def _score_whole(
    prm, chains, batch_size, max_length, device, precision, progress, packing
) -> list[torch.Tensor]:
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
    if order is None:
        return sorted_scores
    result: list[torch.Tensor] = [torch.empty(0)] * len(chains)
    for position, index in enumerate(order):
        result[index] = sorted_scores[position]
    return result


# ---------------------------------------------------------------------------------------------------
# Shared prefixes


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
    """One shared prefix: a chain of the problem, and the prefix's cache once encoded."""

    chain: object  # a chain of the problem (question and images are what matter)
    header_length: int  # H: text-only header tokens at the start of every candidate's token ids
    rows_left: int  # candidates not yet scored; the cache is dropped at 0
    prefix: CachedPrefix | None = None


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
    continuations: Sequence[Continuation | None] | None = None,
) -> list[torch.Tensor]:
    """Step probabilities of every chain, in the order given, sharing each problem's prefix.

    Same contract as :func:`score_chains`: ``chains`` are ``LabelledChain`` /
    ``StepChain`` records; the result holds one 1-D float32 tensor of step probabilities per chain
    (``[steps]``, in [0, 1]). Chains with the same question and images (the candidates of one
    best-of-N problem, e.g. from :func:`prm.data.dataset.flatten_candidates`) share one prefix pass;
    the rest are scored one by one. ``batch_size`` bounds the candidates per continuation pass.
    ``report``, when given, is filled with the counts of shared and unshared chains. ``packing``: the
    chains scored whole are packed (:class:`prm.data.dataset.PRMCollator`); continuations on a shared
    prefix never are (see the module doc), and the log line says which chains ran which way.
    ``continuations``: ``len(chains)`` entries, each chain's :class:`Continuation` (from
    :func:`continuations_of`) or None; a problem whose chains all have one, with the same header, is
    not collated again.

    Raises ``ValueError`` when a chain is longer than ``max_length`` tokens (prefix included), as
    the unshared path does.
    """
    report = report if report is not None else SharingReport()
    collator = PRMCollator(prm.backbone)
    with eval_mode(prm):
        if continuations is not None and len(continuations) != len(chains):
            raise ValueError(f"{len(continuations)} continuations for {len(chains)} chains")
        result = _score_shared(
            prm,
            chains,
            collator,
            batch_size,
            max_length,
            device,
            precision,
            progress,
            report,
            packing,
            continuations,
        )
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


def _score_shared(
    prm, chains, collator, batch_size, max_length, device, precision, progress, report, packing, given
):
    backbone = prm.backbone

    groups: dict[tuple, list[int]] = {}
    for index, chain in enumerate(chains):
        groups.setdefault(prefix_key(chain, backbone.is_multimodal), []).append(index)
    if has_sliding_layers(prm.model):
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
        known = [given[i] for i in members] if given is not None else None
        planned = _plan_problem(collator, [chains[i] for i in members], members, len(problems), known)
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
    batches = sorted_batches(rows, batch_size)
    for batch in tqdm(batches, desc="score (shared prefix)", disable=not progress, dynamic_ncols=True):
        with autocast(device, precision):
            pending = {
                row.problem: problems[row.problem] for row in batch if problems[row.problem].prefix is None
            }
            if pending:
                _encode_prefixes(prm, collator, list(pending.values()), device)
            for row in batch:
                length = problems[row.problem].prefix.length + len(row.ids)
                if max_length is not None and length > max_length:
                    raise ValueError(
                        f"chain {chains[row.index].id!r} is {length} tokens long, "
                        f"over max_length={max_length}; raise data.max_length or shorten the chain"
                    )
            probs = _score_continuations(prm, problems, batch, device)
        for row, row_probs in zip(batch, probs):
            result[row.index] = row_probs
            problem = problems[row.problem]
            problem.rows_left -= 1
            if problem.rows_left == 0:
                problem.prefix = None
    if unshared:
        scores = score_whole_chains(
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


@dataclass
class Continuation:
    """One chain's text-only token ids cut at its problem's header (:func:`continuations_of`).

    ``header``: ``[H]`` the ids of the chain with no steps and no images (user turn and assistant
    header); ``ids``: ``[L]`` the ids after it (steps and step markers); ``markers``: ``[steps]`` the
    step-marker positions within ``ids``. With the problem's prefix encoded with its images (``P``
    tokens), the whole chain is ``P + L`` tokens long and its markers sit at ``P + markers``.
    """

    header: torch.Tensor
    ids: torch.Tensor
    markers: torch.Tensor


def continuations_of(collator: PRMCollator, chains: Sequence) -> list[Continuation] | None:
    """The :class:`Continuation` of each of ``chains`` (one problem: the same question; images are
    not read) from one text-only collation whose row 0 is the header (the first chain without
    steps). None when a chain's token ids do not start with the header's (a tokenisation merging
    across the boundary): such chains are scored, and measured, whole."""
    items = [_item(chains[0], images=False, steps=False)] + [_item(chain, images=False) for chain in chains]
    text = collator(items)
    ids, mask = text["inputs"]["input_ids"], text["inputs"]["attention_mask"]
    header = ids[0][mask[0].bool()]
    size = len(header)
    out = []
    for row, chain in enumerate(chains, start=1):
        real = mask[row].nonzero().flatten()  # one block: right padding, or left (InternVL's processor)
        first, end = int(real[0]), int(real[-1]) + 1
        if end - first < size or not torch.equal(ids[row, first : first + size], header):
            return None
        markers = text["marker_positions"][row, : len(chain.steps)] - first - size
        out.append(Continuation(header=header, ids=ids[row, first + size : end].clone(), markers=markers))
    return out


def _plan_problem(
    collator: PRMCollator,
    chains: list,
    indices: list[int],
    problem_index: int,
    known: list[Continuation | None] | None = None,
):
    """The problem's header length and its candidates' continuations, or None if the header check
    fails. ``known``: the chains' continuations where the caller has them, used when every chain has
    one and their headers agree; otherwise the chains are collated here."""
    reuse = (
        known is not None
        and all(c is not None for c in known)
        and all(torch.equal(c.header, known[0].header) for c in known[1:])
    )
    planned = known if reuse else continuations_of(collator, chains)
    if planned is None:
        return None
    rows = [
        _Row(index=index, problem=problem_index, ids=c.ids, markers=c.markers)
        for index, c in zip(indices, planned, strict=True)
    ]
    rows.sort(key=lambda r: len(r.ids))
    return _Problem(chain=chains[0], header_length=len(planned[0].header), rows_left=len(rows)), rows


def sorted_batches(rows: list, batch_size: int, window: int = SORT_WINDOW) -> list[list]:
    """``rows`` (each with ``problem`` and ``ids``, one problem's rows together) cut into batches of
    ``batch_size``: in windows of whole problems holding at least ``window * batch_size`` rows, each
    window's rows sorted by continuation length, longest first (ties keep their order)."""
    windows: list[list] = []
    for row in rows:
        starts_problem = not windows or windows[-1][-1].problem != row.problem
        if not windows or (starts_problem and len(windows[-1]) >= window * batch_size):
            windows.append([])
        windows[-1].append(row)
    batches = []
    for rows_of_window in windows:
        ordered = sorted(rows_of_window, key=lambda r: -len(r.ids))
        batches += [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    return batches


def _encode_prefixes(prm, collator: PRMCollator, pending: list[_Problem], device) -> None:
    """Encode the prefixes (user turn with images + assistant header) of ``pending`` in one pass."""
    items = [_item(problem.chain, images=True, steps=False) for problem in pending]
    inputs = to_device(collator(items), device)["inputs"]
    # nothing is scored in a prefix: where it can, its last layer gives keys and values only
    prefixes = encode_prefixes(prm.backbone.spec, prm.model.model, inputs, prm.sparse_last_layer)
    for problem, prefix in zip(pending, prefixes, strict=True):
        problem.prefix = prefix


def _score_continuations(prm, problems: list[_Problem], rows: list[_Row], device) -> list[torch.Tensor]:
    """Step probabilities of each row: its continuation run on its problem's cached prefix."""
    scored = [row for row in rows if len(row.markers)]
    out = {id(row): torch.empty(0) for row in rows}
    if not scored:
        return [out[id(row)] for row in rows]
    pad_id = prm.backbone.tokenizer.pad_token_id or 0
    prefixes = [problems[row.problem].prefix for row in scored]
    inputs = continuation_inputs(prefixes, [row.ids for row in scored], pad_id, device)
    max_steps = max(len(row.markers) for row in scored)
    markers = torch.zeros(len(scored), max_steps, dtype=torch.long)
    for b, row in enumerate(scored):
        markers[b, : len(row.markers)] = row.markers
    # the rows continue the cached prefixes (the last layer at the markers only where it can)
    at_markers = prm.hidden_at_markers({"inputs": inputs, "marker_positions": markers.to(device)})
    probs = torch.sigmoid(prm.step_logits(at_markers)).float().cpu()
    for b, row in enumerate(scored):
        out[id(row)] = probs[b, : len(row.markers)]
    return [out[id(row)] for row in rows]
