"""Batching across requests: one worker scores the chains of every request that arrived within a window.

Requests put their chains on an asyncio queue (:meth:`BatchScorer.submit`). One worker task takes
the first waiting request, then keeps taking requests for up to ``window_s`` seconds or until
``max_batch`` chains are gathered (a request that would go over waits for the next call; one
request larger than ``max_batch`` runs alone), and scores all their chains in **one** call of
``score_fn`` (the app's: :func:`prm.evaluation.scoring.score_chains` with ``prefix_sharing=True``,
on (chain, token ids) pairs), run in a single model thread so the event loop keeps serving. Chains
with the same question and images, from one request or several, therefore share one prefix pass.
Each request's future gets its own slice of the scores.

A request whose future is already done when the worker reaches it (timed out or cancelled: the
client went away) is dropped without being scored, and its chains no longer count against
``max_queued`` (the backpressure limit: :class:`QueueFull` when a request would pass it). When a
scoring call fails with several requests in it, each is scored again alone, so one bad request
fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """More chains are waiting than the server's ``limits.max_queued_chains``."""


@dataclass
class _Job:
    chains: Sequence
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """What the worker did so far: scoring calls, requests and chains scored, requests dropped
    before scoring (timed out or cancelled), and the largest call (chains)."""

    batches: int = 0
    requests: int = 0
    chains: int = 0
    dropped: int = 0
    largest: int = 0


class BatchScorer:
    """The queue and worker (see the module doc). ``score_fn(chains) -> list of 1-D tensors`` in the
    order given (blocking; it runs in the one model thread). ``window_s``: how long to wait for more
    requests after the first; ``max_batch``: chains per call; ``max_queued``: chains allowed to
    wait. Start with :meth:`start` inside the running loop, stop with :meth:`stop`."""

    def __init__(
        self,
        score_fn: Callable[[list], list[torch.Tensor]],
        window_s: float,
        max_batch: int,
        max_queued: int,
    ):
        self.score_fn = score_fn
        self.window_s = window_s
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.stats = BatchStats()
        self.queued_chains = 0
        self._queue: asyncio.Queue | None = None
        self._carry: _Job | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prm-model")
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="prm-batch-worker")

    async def stop(self) -> None:
        """Finish the requests already queued, then stop the worker and the model thread."""
        if self._task is None:
            return
        await self._queue.put(None)
        await self._task
        self._task = None
        self._executor.shutdown(wait=True)

    def submit(self, chains: Sequence) -> asyncio.Future:
        """Queue ``chains`` (one request's); the future resolves to their step scores (a list of 1-D
        float32 tensors, in order). Cancel the future to withdraw the request. Raises
        :class:`QueueFull` when the chains would pass ``max_queued``, RuntimeError when not started."""
        if self._queue is None or self._task is None or self._task.done():
            raise RuntimeError("the batch worker is not running")
        if self.queued_chains + len(chains) > self.max_queued:
            waiting = f"{self.queued_chains} chains are waiting"
            raise QueueFull(f"{waiting} (limits.max_queued_chains={self.max_queued})")
        future = asyncio.get_running_loop().create_future()
        self.queued_chains += len(chains)
        self._queue.put_nowait(_Job(list(chains), future))
        return future

    def _leave(self, job: _Job) -> None:
        self.queued_chains -= len(job.chains)

    async def _next(self, timeout: float | None) -> _Job | None:
        """The next live job (None: the stop signal), waiting at most ``timeout`` s (TimeoutError)."""
        while True:
            if self._carry is not None:
                job, self._carry = self._carry, None
            elif timeout is None:
                job = await self._queue.get()
            else:
                job = await asyncio.wait_for(self._queue.get(), max(timeout, 0.0))
            if job is None:
                return None
            if job.future.done():  # timed out or cancelled while waiting: its place is freed
                self._leave(job)
                self.stats.dropped += 1
                continue
            return job

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            job = await self._next(None)
            if job is None:
                break
            jobs, total = [job], len(job.chains)
            deadline = loop.time() + self.window_s
            while total < self.max_batch:
                try:
                    more = await self._next(deadline - loop.time())
                except TimeoutError:
                    break
                if more is None:
                    stopping = True  # score what was gathered, then stop
                    break
                if total + len(more.chains) > self.max_batch:
                    self._carry = more
                    break
                jobs.append(more)
                total += len(more.chains)
            try:
                await self._score(loop, jobs)
            except Exception:  # noqa: BLE001 - the worker must survive anything a batch does
                log.exception("scoring a batch of %d requests failed", len(jobs))
            finally:
                for done in jobs:
                    self._leave(done)
        # anything still queued after the stop signal: refused, not left hanging
        while self._carry is not None or not self._queue.empty():
            job = self._carry or self._queue.get_nowait()
            self._carry = None
            if job is not None and not job.future.done():
                self._leave(job)
                job.future.set_exception(RuntimeError("the server is shutting down"))

    async def _score(self, loop, jobs: list[_Job]) -> None:
        live = [job for job in jobs if not job.future.done()]
        self.stats.dropped += len(jobs) - len(live)
        if not live:
            return
        chains = [chain for job in live for chain in job.chains]
        try:
            scores = await loop.run_in_executor(self._executor, self.score_fn, chains)
        except Exception as error:  # noqa: BLE001 - handed to the requests
            if len(live) == 1:
                if not live[0].future.done():
                    live[0].future.set_exception(error)
                return
            log.warning("a batch of %d requests failed (%s): scoring each alone", len(live), error)
            for job in live:
                await self._score(loop, [job])
            return
        self.stats.batches += 1
        self.stats.requests += len(live)
        self.stats.chains += len(chains)
        self.stats.largest = max(self.stats.largest, len(chains))
        start = 0
        for job in live:
            part = scores[start : start + len(job.chains)]
            start += len(job.chains)
            if not job.future.done():
                job.future.set_result(part)
