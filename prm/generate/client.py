"""A small client for OpenAI-compatible chat servers (vLLM, SGLang, ...), on the standard library.

The API key is read from the environment variable named by ``api_key_env`` at each request and
never logged or stored in configs. Each request has a timeout and is retried with exponential
backoff on connection errors, timeouts, 429 and 5xx answers; ``max_concurrency`` bounds parallel
requests (``map``). Images go as ``data:`` URLs in ``image_url`` content parts, the form vLLM and
OpenAI accept.
"""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class ServerError(RuntimeError):
    pass


def image_part(path: str | Path) -> dict:
    mime = mimetypes.guess_type(str(path))[0] or "image/png"
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def user_message(text: str, images: Sequence[str | Path] = ()) -> dict:
    if not images:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [*(image_part(p) for p in images), {"type": "text", "text": text}]}


class ChatClient:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 1.0,
        max_concurrency: int = 8,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.max_concurrency = max_concurrency
        self.requests = 0

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def complete(self, messages: list[dict], n: int = 1, **sampling) -> list[str]:
        """``n`` completions of ``messages``; sampling: temperature, top_p, top_k, max_tokens, stop."""
        body = json.dumps(
            {
                "model": self.model,
                "messages": messages,
                "n": n,
                **{k: v for k, v in sampling.items() if v is not None},
            }
        ).encode()
        for attempt in range(self.retries + 1):
            self.requests += 1
            request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply = json.loads(response.read())
                return [choice["message"]["content"] or "" for choice in reply["choices"]]
            except urllib.error.HTTPError as error:
                if error.code not in RETRY_STATUS or attempt == self.retries:
                    raise ServerError(f"{self.url}: HTTP {error.code} after {attempt + 1} attempts") from None
                reason = f"HTTP {error.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
                if attempt == self.retries:
                    raise ServerError(
                        f"{self.url}: {type(error).__name__} after {attempt + 1} attempts"
                    ) from None
                reason = type(error).__name__
            delay = self.backoff * 2**attempt
            log.warning("%s: %s, retry %d/%d in %.1fs", self.url, reason, attempt + 1, self.retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def chat(self, messages: list[dict], **sampling) -> str:
        return self.complete(messages, n=1, **sampling)[0]

    def map(self, function: Callable, items: Iterable) -> list:
        """``function`` over ``items`` with at most ``max_concurrency`` requests in flight, in order."""
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(function, items))
