"""The HTTP service of one PRM (FastAPI): :func:`create_app`.

Endpoints (request and response shapes in README "Serving a PRM"):

- ``POST /v1/score``: a question, optional images, candidates as steps or text -> per-step scores
  and chain scores under the requested aggregations, and what the ``too_long`` policy did;
- ``POST /v1/openrlhf``: OpenRLHF's remote reward-model protocol, ``{"query": [...], "prompts":
  [...], "labels": [...]}`` -> ``{"rewards": [...], "scores": [...], "extra_logs": {...}}``, with
  ``"step_rewards"`` and ``"step_ends"`` when dense rewards are asked for;
- ``GET /health`` and ``GET /v1/metadata``.

Every request is read with a bounded body (``limits.max_body_bytes``: 413), parsed and checked in a
worker thread (:mod:`prm.serve.requests`: a 4xx naming the field), then its chains wait for the
batch worker (:mod:`prm.serve.batching`) for at most ``request_timeout_s`` (504) or until the client
disconnects; either way the request leaves the queue. The step probabilities are those of
:func:`prm.evaluation.scoring.score_chains` (``prefix_sharing=True``, the model's precision,
``batch_size`` chains per pass) and the chain scores those of :mod:`prm.aggregation`, computed in
float64 as best-of-N does (:mod:`prm.evaluation.best_of_n`). Non-finite chain scores (``sum_logprob``
of a step scored exactly 0) are returned as ``null``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from prm.aggregation import REGISTRY, Aggregation, pad_ragged
from prm.evaluation.scoring import score_chains
from prm.serve.batching import BatchScorer, QueueFull
from prm.serve.requests import ImageStore, Parsed, RequestError, RequestReader, step_ends

log = logging.getLogger("prm.serve")


def error_response(status: int, message: str, field: str | None = None) -> JSONResponse:
    """``{"error": message, "field": field}`` with HTTP ``status``."""
    return JSONResponse({"error": message, "field": field}, status_code=status)


def chain_scores(steps: list[torch.Tensor], names: list[str]) -> list[dict[str, float | None]]:
    """``{name: chain score}`` per chain, each aggregation of ``names`` over the float64 step scores
    (:class:`prm.aggregation.Aggregation`); a non-finite value becomes None (JSON has no inf)."""
    if not steps:
        return []
    scores, mask = pad_ragged(steps, torch.float64)
    values = {name: Aggregation(name)(scores, mask).tolist() for name in names}
    return [
        {name: (v[row] if math.isfinite(v[row]) else None) for name, v in values.items()}
        for row in range(len(steps))
    ]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (RequestError, 413) as soon as it passes ``limit`` bytes, whatever
    Content-Length says."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(None, f"body of {declared} bytes, over limits.max_body_bytes={limit}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(None, f"body over limits.max_body_bytes={limit}", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def wait_for_scores(request: Request, future: asyncio.Future, timeout: float) -> list[torch.Tensor]:
    """The scores ``future`` resolves to; cancelled (leaving the queue) when ``timeout`` seconds pass
    (RequestError 504) or the client disconnects (RequestError 499, never seen by that client)."""

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({future, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if future in done:
        return future.result()
    future.cancel()
    if watcher in done:
        raise RequestError(None, "the client disconnected", 499)
    raise RequestError(None, f"not scored within request_timeout_s={timeout}", 504)


def create_app(prm, cfg, device="cpu", source: str = "") -> FastAPI:
    """The service of ``prm`` (a :class:`prm.model.prm.ProcessRewardModel`, already on ``device``)
    under ``cfg`` (the composed ``conf/serve.yaml`` with ``max_length``, ``too_long`` and
    ``special_tokens`` resolved, see :func:`prm.serve.__main__.resolve_policies`). ``source``: what
    the metadata names as the model (its checkpoint or path). The batch worker runs between the
    app's startup and shutdown (FastAPI lifespan)."""
    backbone = prm.backbone
    images = ImageStore(cfg.limits.max_image_bytes)
    reader = RequestReader(backbone, cfg, images)

    def score_fn(items: list) -> list[torch.Tensor]:
        """Step scores of ``(chain, continuation)`` pairs: the continuations the length check
        computed spare the scorer a second tokenisation (:func:`score_chains`' ``continuations``)."""
        chains = [chain for chain, _ in items]
        return score_chains(
            prm,
            chains,
            cfg.batch_size,
            cfg.max_length,
            device,
            str(cfg.precision),
            prefix_sharing=True,
            continuations=[continuation for _, continuation in items],
        )

    scorer = BatchScorer(score_fn, cfg.batch_window_ms / 1000.0, cfg.max_batch, cfg.limits.max_queued_chains)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await scorer.start()
        log.info("serving %s (%s, prompt=%s)", source or backbone.family, prm.head, backbone.prompt.name)
        try:
            yield
        finally:
            await scorer.stop()
            images.close()  # the private image folder, here: uvicorn ends a SIGTERM'd process by the signal

    app = FastAPI(title="prm-suite PRM service", lifespan=lifespan)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        """An unknown path or method gets the service's error shape, not FastAPI's ``{"detail"}``."""
        return error_response(error.status_code, f"{error.detail}: {request.method} {request.url.path}")

    app.state.scorer = scorer
    app.state.images = images
    app.state.reader = reader
    metadata = {
        "model": source,
        "family": backbone.family,
        "model_type": backbone.model_type,
        "multimodal": backbone.is_multimodal,
        "head": str(prm.head),
        "prompt": backbone.prompt.name,
        "label_words": list(backbone.label_words),
        "step_marker": backbone.step_marker,
        "max_length": cfg.max_length,
        "too_long": str(cfg.too_long),
        "special_tokens": str(cfg.special_tokens),
        "precision": str(cfg.precision),
        "aggregations": list(REGISTRY),
        "default_aggregations": reader.default_aggregations,
        "probability_aggregations": [name for name, spec in REGISTRY.items() if spec.probability],
        "step_split": str(cfg.steps.split),
        "images": "paths under image_root and data URLs" if cfg.image_root else "data URLs only",
        "openrlhf": {
            "aggregation": cfg.openrlhf.aggregation,
            "dense": cfg.openrlhf.dense,
            "question_regex": cfg.openrlhf.question_regex,
            "response_separator": cfg.openrlhf.response_separator,
            "strip": list(cfg.openrlhf.strip),
            "skipped_reward": cfg.openrlhf.skipped_reward,
        },
        "limits": {key: cfg.limits[key] for key in cfg.limits},
        "batch_window_ms": cfg.batch_window_ms,
        "max_batch": cfg.max_batch,
        "batch_size": cfg.batch_size,
        "request_timeout_s": cfg.request_timeout_s,
    }

    def refused(request: Request) -> JSONResponse | None:
        """A 401 response when ``api_key`` is set and the request does not carry it, else None."""
        key = cfg.api_key
        given = request.headers.get("authorization", "")
        if key and not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            message = "missing or wrong API key (Authorization: Bearer <key>)"
            return error_response(401, message, "Authorization")
        return None

    async def handle(request: Request, parse, respond) -> JSONResponse:
        denied = refused(request)
        if denied is not None:
            return denied
        parsed: Parsed | None = None
        try:
            body = await read_body(request, cfg.limits.max_body_bytes)
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise RequestError(None, f"malformed JSON: {error}", 400) from None
            except RecursionError:
                raise RequestError(None, "malformed JSON: nested too deeply", 400) from None
            parsed = await run_in_threadpool(parse, payload)
            chains = parsed.chains
            scores: list[torch.Tensor] = []
            if chains:
                try:
                    future = scorer.submit(list(zip(chains, parsed.continuations)))
                except QueueFull as error:
                    raise RequestError(None, f"busy: {error}; retry later", 503) from None
                scores = await wait_for_scores(request, future, cfg.request_timeout_s)
            return JSONResponse(respond(parsed, scores))
        except RequestError as error:
            return error_response(error.status, error.message, error.field)
        finally:
            if parsed is not None:
                images.release(parsed.temporary_images)

    def native_response(parsed: Parsed, scores: list[torch.Tensor]) -> dict[str, Any]:
        aggregated = iter(chain_scores(scores, parsed.aggregations))
        steps = iter(scores)
        out = []
        for candidate in parsed.candidates:
            item: dict[str, Any] = {"step_scores": None, "scores": None, "too_long": candidate.too_long}
            if candidate.chain is not None:
                item["step_scores"] = next(steps).tolist()
                item["scores"] = next(aggregated)
            if candidate.steps:
                item["steps"] = candidate.steps  # the steps a text candidate was split into
            out.append(item)
        return {"candidates": out, "aggregations": parsed.aggregations}

    def openrlhf_response(parsed: Parsed, scores: list[torch.Tensor]) -> dict[str, Any]:
        name = parsed.aggregations[0]
        fallback = float(cfg.openrlhf.skipped_reward)
        aggregated = iter(chain_scores(scores, [name]))
        steps = iter(scores)
        rewards, step_rewards, scored_steps, skipped, truncated = [], [], [], [], []
        for candidate in parsed.candidates:
            if candidate.chain is None:
                rewards.append(fallback)
                step_rewards.append([])
                scored_steps.append(0)
            else:
                value = next(aggregated)[name]
                rewards.append(value if value is not None else fallback)
                step_rewards.append(next(steps).tolist())
                scored_steps.append(len(candidate.chain.steps))
            action = (candidate.too_long or {}).get("action")
            skipped.append(1.0 if candidate.chain is None else 0.0)
            truncated.append(1.0 if action == "truncated" else 0.0)
        result: dict[str, Any] = {
            "rewards": rewards,
            "scores": rewards,
            "extra_logs": {"prm_steps": scored_steps, "prm_skipped": skipped, "prm_truncated": truncated},
        }
        if parsed.extra["dense"]:
            result["step_rewards"] = step_rewards
            pieces = zip(parsed.extra["responses"], parsed.extra["steps"], step_rewards)
            result["step_ends"] = [step_ends(text, steps[: len(dense)]) for text, steps, dense in pieces]
        return result

    @app.post("/v1/score")
    async def score(request: Request) -> JSONResponse:
        return await handle(request, reader.native, native_response)

    @app.post("/v1/openrlhf")
    async def openrlhf(request: Request) -> JSONResponse:
        return await handle(request, reader.openrlhf, openrlhf_response)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        stats = scorer.stats
        return {
            "status": "ok",
            "queued_chains": scorer.queued_chains,
            "batches": stats.batches,
            "requests": stats.requests,
            "chains": stats.chains,
            "dropped": stats.dropped,
            "temporary_images": images.files,
        }

    @app.get("/v1/metadata")
    async def get_metadata(request: Request):
        return refused(request) or metadata

    return app
