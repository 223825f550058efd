"""Where an evaluation's step scores come from: the local model, or a running PRM service.

A *scorer* is what evaluate.py calls on checked chains: ``scorer(chains, prefix_sharing=False)`` ->
one 1-D float32 tensor of step probabilities per chain, in order (the contract of
:func:`prm.evaluation.scoring.score_chains`). :func:`make_scorer` picks one:

- :func:`local_scorer`: :func:`score_chains` on the loaded model, with the data config's batch size,
  ``max_length`` and packing (what evaluate.py always did);
- :class:`ServiceScorer` (``server.url=http://host:port``): the step scores of a running ``python -m
  prm.serve`` (:mod:`prm.serve.app`), through :class:`prm.serve.client.PRMClient`. The chains of one
  problem (same question and images) go as one ``POST /v1/score`` request (their steps as given,
  images as data URLs, no aggregation asked for; at most the server's ``limits.max_candidates`` per
  request), several requests in flight (``server.concurrency``) so that the server batches them; the
  server shares each problem's prefix whatever ``prefix_sharing`` says. The tables are computed from
  these scores exactly as from local ones. The server's scores equal local scoring's up to float
  rounding of other batch compositions (``tests/test_serve.py``).

Checks, so that the service scores the chains the local preflight checked: the server's model must be
the evaluated one (family, head, prompt format and label words from ``GET /v1/metadata``, else
:class:`prm.errors.UserError`), and a chain the server truncated or skipped under its own
``max_length`` raises UserError naming the chain (evaluation's ``data.max_length`` then exceeds the
server's). The server normalises whitespace in steps (:func:`prm.data.steps.normalize_whitespace`);
a chain whose steps it would change is scored as changed, and counted in a logged warning.
"""

from __future__ import annotations

import base64
import logging
import mimetypes
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from prm.data.steps import normalize_whitespace
from prm.errors import UserError
from prm.evaluation.scoring import prefix_key, score_chains

log = logging.getLogger("evaluate")

Scorer = Callable[..., list[torch.Tensor]]  # (chains, prefix_sharing=False) -> step probabilities


def local_scorer(prm, data, device, precision: str) -> Scorer:
    """:func:`score_chains` on ``prm`` with ``data``'s ``eval_batch_size``, ``max_length`` and
    ``packing``, at ``precision`` on ``device``."""

    def score(chains: Sequence, prefix_sharing: bool = False) -> list[torch.Tensor]:
        return score_chains(
            prm,
            chains,
            data.eval_batch_size,
            data.max_length,
            device,
            precision,
            progress=True,
            packing=data.packing,
            prefix_sharing=prefix_sharing,
        )

    return score


def image_data_url(path: str) -> str:
    """``data:<type>;base64,<bytes of the file at path>`` (type from the suffix, else image/png)."""
    kind = mimetypes.guess_type(path)[0] or "image/png"
    return f"data:{kind};base64," + base64.b64encode(Path(path).read_bytes()).decode()


class ServiceScorer:
    """Step scores from the service at ``url`` (see the module doc). ``api_key``: sent as a bearer
    token; ``timeout``: seconds per request; ``concurrency``: requests in flight; ``http``: an
    ``httpx.Client`` to use instead of sockets (e.g. Starlette's TestClient of the app).
    :meth:`check_model` compares the served model with the local ``prm``."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 600.0,
        concurrency: int = 8,
        http: Any = None,
    ):
        from prm.serve.client import PRMClient

        self.url = url
        self.client = PRMClient(url, api_key=api_key, timeout=timeout, http=http)
        self.concurrency = concurrency
        self.metadata = self.client.metadata()
        self.per_request = int(self.metadata["limits"]["max_candidates"])

    def check_model(self, prm) -> None:
        """UserError when the served model is not ``prm``'s kind: family, head, prompt format or
        label words differ (the scores would be another model's)."""
        backbone = prm.backbone
        local = {
            "family": backbone.family,
            "head": str(prm.head),
            "prompt": backbone.prompt.name,
            "label_words": list(backbone.label_words),
        }
        served = {key: self.metadata.get(key) for key in local}
        if served != local:
            raise UserError(
                f"server.url={self.url} serves {served} ({self.metadata.get('model')}), but the evaluated "
                f"model is {local}: serve the same checkpoint, or drop server.url to score locally"
            )

    def _request(self, chains: list) -> list[torch.Tensor]:
        first = chains[0]
        images = [image_data_url(path) for path in first.images] if self.metadata["multimodal"] else None
        candidates = [{"steps": list(chain.steps)} for chain in chains]
        answer = self.client.score(first.question, candidates, images=images, aggregations=[])
        out = []
        for chain, candidate in zip(chains, answer["candidates"], strict=True):
            if candidate["too_long"] is not None or len(candidate["step_scores"]) != len(chain.steps):
                limit = self.metadata["max_length"]
                raise UserError(
                    f"chain {chain.id!r}: the server at {self.url} did not score its {len(chain.steps)} "
                    f"steps (too_long: {candidate['too_long']}; its max_length is {limit}): evaluate "
                    "with a data.max_length no larger than the server's"
                )
            out.append(torch.tensor(candidate["step_scores"], dtype=torch.float32))
        return out

    def __call__(self, chains: Sequence, prefix_sharing: bool = False) -> list[torch.Tensor]:
        """Step probabilities of ``chains`` from the service, in order (``prefix_sharing`` is the
        server's, always on). Raises :class:`prm.serve.client.PRMServiceError` for a refused request
        and UserError for a chain the server did not score whole."""
        groups: dict[tuple, list[int]] = {}
        for index, chain in enumerate(chains):
            if chain.steps:  # a chain without steps has no score; the server refuses it
                groups.setdefault(prefix_key(chain, True), []).append(index)
        parts = [
            members[start : start + self.per_request]
            for members in groups.values()
            for start in range(0, len(members), self.per_request)
        ]
        changed = [c.id for c in chains if any(normalize_whitespace(s) != s for s in c.steps)]
        if changed:
            log.warning(
                "%d chains (first %r) hold line breaks or spaces the server normalises: their steps are "
                "scored as normalised (prm.data.steps.normalize_whitespace)",
                len(changed),
                changed[0],
            )
        result: list[torch.Tensor] = [torch.empty(0)] * len(chains)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            answers = pool.map(lambda part: self._request([chains[i] for i in part]), parts)
            for part, scores in tqdm(zip(parts, answers), total=len(parts), desc=f"score ({self.url})"):
                for index, scored in zip(part, scores, strict=True):
                    result[index] = scored
        return result


def make_scorer(server, prm, data, device, precision: str) -> Scorer:
    """The scorer of an evaluation: :class:`ServiceScorer` when ``server`` (evaluate.yaml's ``server``
    node) has a ``url`` (the served model checked against ``prm``), else :func:`local_scorer`."""
    if server is None or not server.get("url"):
        return local_scorer(prm, data, device, precision)
    scorer = ServiceScorer(server.url, server.api_key, server.timeout_s, server.concurrency)
    scorer.check_model(prm)
    log.info("step scores from the service at %s (%s)", server.url, scorer.metadata.get("model"))
    return scorer
