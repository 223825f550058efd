"""A client for OpenAI-compatible chat servers (vLLM, SGLang, ...), on the official ``openai`` package.

The ``openai`` client does the HTTP work: a per-request ``timeout``, ``retries`` with its own
exponential backoff and jitter (0.5 s doubling up to 8 s, or the server's ``Retry-After``) on
connection errors, timeouts, 408, 409, 429 and 5xx answers. :meth:`ChatClient.complete_many` runs
many conversations through the async client with at most ``max_concurrency`` in flight.

The API key is read from the environment variable named by ``api_key_env`` at each request and
never logged or stored in configs; without one the client sends the placeholder ``EMPTY`` (what
vLLM expects when it runs without ``--api-key``). Images go as ``data:`` URLs in ``image_url``
content parts, the form vLLM and OpenAI accept. Sampling options the OpenAI schema lacks
(``top_k``) go in the request body as extra fields, which vLLM reads.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import mimetypes
import os
from collections.abc import Sequence
from pathlib import Path

import openai

log = logging.getLogger(__name__)
STANDARD = {"temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty", "frequency_penalty"}


class ServerError(RuntimeError):
    """The server did not answer usefully after all retries (the message names the URL and attempts)."""


def image_part(path: str | Path) -> dict:
    """An ``image_url`` content part holding the file at ``path`` as a base64 ``data:`` URL."""
    mime = mimetypes.guess_type(str(path))[0] or "image/png"
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def user_message(text: str, images: Sequence[str | Path] = ()) -> dict:
    """A user turn: plain ``text``, or the images' parts followed by a text part."""
    if not images:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [*(image_part(p) for p in images), {"type": "text", "text": text}]}


class ChatClient:
    """Chat completions from ``base_url`` (ending in ``/v1``) for ``model``.

    ``timeout`` seconds per attempt, ``retries`` retries after the first attempt, ``max_concurrency``
    conversations in flight in :meth:`complete_many`. ``requests`` counts HTTP attempts (retries
    included). Errors: :class:`ServerError` once the retries are spent or on a non-retryable answer.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        retries: int = 4,
        max_concurrency: int = 8,
    ):
        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env
        self.timeout, self.retries, self.max_concurrency = timeout, retries, max_concurrency
        self.requests = 0
        self._sync: openai.OpenAI | None = None

    def _api_key(self) -> str:
        return (os.environ.get(self.api_key_env) if self.api_key_env else None) or "EMPTY"

    def _count(self, request) -> None:
        self.requests += 1

    def _log_failure(self, response) -> None:
        if response.status_code >= 400:
            log.warning("%s: HTTP %d", self.base_url, response.status_code)

    async def _acount(self, request) -> None:
        self._count(request)

    async def _alog_failure(self, response) -> None:
        self._log_failure(response)

    def _options(self) -> dict:
        return dict(base_url=self.base_url, timeout=self.timeout, max_retries=self.retries)

    def _client(self) -> openai.OpenAI:
        if self._sync is None:
            hooks = {"request": [self._count], "response": [self._log_failure]}
            self._sync = openai.OpenAI(
                api_key=self._api_key,  # a callable: read at each request
                http_client=openai.DefaultHttpxClient(event_hooks=hooks),
                **self._options(),
            )
        return self._sync

    def _request(self, messages: list[dict], n: int, sampling: dict) -> dict:
        given = {k: v for k, v in sampling.items() if v is not None}
        extra = {k: v for k, v in given.items() if k not in STANDARD}
        return dict(
            model=self.model,
            messages=messages,
            n=n,
            extra_body=extra or None,
            **{k: v for k, v in given.items() if k in STANDARD},
        )

    def _failure(self, error: Exception) -> ServerError:
        attempts = self.retries + 1
        if isinstance(error, openai.APIStatusError):
            return ServerError(f"{self.base_url}: HTTP {error.status_code} ({type(error).__name__})")
        return ServerError(f"{self.base_url}: {type(error).__name__} after {attempts} attempts")

    @staticmethod
    def _texts(reply) -> list[str]:
        return [choice.message.content or "" for choice in sorted(reply.choices, key=lambda c: c.index)]

    def complete(self, messages: list[dict], n: int = 1, **sampling) -> list[str]:
        """``n`` completions of ``messages``; sampling: temperature, top_p, top_k, max_tokens, stop.

        Returns the ``n`` reply texts in choice order. Raises :class:`ServerError`.
        """
        try:
            reply = self._client().chat.completions.create(**self._request(messages, n, sampling))
        except openai.APIError as error:
            raise self._failure(error) from None
        return self._texts(reply)

    def chat(self, messages: list[dict], **sampling) -> str:
        """One completion of ``messages``."""
        return self.complete(messages, n=1, **sampling)[0]

    def complete_many(self, conversations: Sequence[list[dict]], n: int = 1, **sampling) -> list[list[str]]:
        """:meth:`complete` for each conversation, at most ``max_concurrency`` in flight, in order."""

        async def run() -> list[list[str]]:
            hooks = {"request": [self._acount], "response": [self._alog_failure]}
            async with openai.AsyncOpenAI(
                api_key=self._api_key(),
                http_client=openai.DefaultAsyncHttpxClient(event_hooks=hooks),
                **self._options(),
            ) as client:
                gate = asyncio.Semaphore(self.max_concurrency)

                async def one(messages: list[dict]) -> list[str]:
                    async with gate:
                        reply = await client.chat.completions.create(**self._request(messages, n, sampling))
                    return self._texts(reply)

                return list(await asyncio.gather(*(one(m) for m in conversations)))

        try:
            return asyncio.run(run())
        except openai.APIError as error:
            raise self._failure(error) from None
