"""A small Python client of the PRM service (:mod:`prm.serve.app`), on httpx.

::

    from prm.serve.client import PRMClient

    with PRMClient("http://127.0.0.1:8000", api_key=None) as client:
        result = client.score("What is 2 + 3?", [["2 + 3 = 5.", "Answer: 5"], {"text": "Answer: 6"}])
        result["candidates"][0]["step_scores"], result["candidates"][0]["scores"]["min"]
        client.openrlhf(["<prompt><response>"], prompts=["<prompt>"])["rewards"]

A 4xx / 5xx answer raises :class:`PRMServiceError` carrying the server's ``error`` and ``field``.
"""

from __future__ import annotations

from typing import Any

import httpx


class PRMServiceError(RuntimeError):
    """The service refused a request: HTTP ``status``, the server's ``message`` and the ``field`` it
    names (None when the body as a whole was refused)."""

    def __init__(self, status: int, message: str, field: str | None):
        super().__init__(f"HTTP {status}: {message}" + (f" (field {field})" if field else ""))
        self.status = status
        self.message = message
        self.field = field


class PRMClient:
    """Client of one running service at ``url`` (``http://host:port``). ``api_key``: sent as
    ``Authorization: Bearer <key>``. ``timeout``: seconds per HTTP call. ``transport``: an httpx
    transport; None: real sockets. ``http``: a ready ``httpx.Client`` to use instead (e.g. Starlette's
    ``TestClient`` of the app, whose base URL is then its own)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 120.0,
        transport=None,
        http: httpx.Client | None = None,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if http is not None:
            http.headers.update(headers)
            self._http = http
        else:
            self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> PRMClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: Any = None) -> dict:
        response = self._http.request(method, path, json=body)
        if response.status_code >= 400:
            try:
                data = response.json()
                message, field = data.get("error", response.text), data.get("field")
            except ValueError:
                message, field = response.text, None
            raise PRMServiceError(response.status_code, message, field)
        return response.json()

    def score(
        self,
        question: str,
        candidates: list,
        images: list[str] | None = None,
        aggregations: list[str] | None = None,
    ) -> dict:
        """``POST /v1/score``. ``candidates``: each a list of steps, a string (split by the server's
        ``steps.split``), or the request's own ``{"steps": [...]}`` / ``{"text": "..."}``. ``images``:
        paths under the server's image root or ``data:image/...;base64,`` URLs. Returns the server's
        answer: ``{"candidates": [{"step_scores": [...], "scores": {name: value}, "too_long": ...}],
        "aggregations": [...]}``."""
        items = []
        for candidate in candidates:
            if isinstance(candidate, str):
                items.append({"text": candidate})
            elif isinstance(candidate, dict):
                items.append(candidate)
            else:
                items.append({"steps": list(candidate)})
        body: dict[str, Any] = {"question": question, "candidates": items}
        if images:
            body["images"] = list(images)
        if aggregations is not None:
            body["aggregations"] = list(aggregations)
        return self._call("POST", "/v1/score", body)

    def openrlhf(
        self,
        queries: list[str],
        prompts: list[str] | None = None,
        labels: list | None = None,
        dense: bool | None = None,
    ) -> dict:
        """``POST /v1/openrlhf`` with OpenRLHF's body ``{"query", "prompts", "labels"}`` (plus ``dense``
        when given): ``{"rewards": [...], "scores": [...], "extra_logs": {...}}`` and, dense,
        ``"step_rewards"`` / ``"step_ends"``."""
        body: dict[str, Any] = {"query": list(queries)}
        if prompts is not None:
            body["prompts"] = list(prompts)
        if labels is not None:
            body["labels"] = list(labels)
        if dense is not None:
            body["dense"] = dense
        return self._call("POST", "/v1/openrlhf", body)

    def health(self) -> dict:
        """``GET /health``: status and the worker's counters."""
        return self._call("GET", "/health")

    def metadata(self) -> dict:
        """``GET /v1/metadata``: model, head, prompt format, label words, max length, aggregations."""
        return self._call("GET", "/v1/metadata")
