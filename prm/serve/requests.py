"""Reading a request body into the chains the model scores, refusing bad input with the field named.

Two request shapes (the endpoints: :mod:`prm.serve.app`):

- native (``POST /v1/score``): ``{"question": str, "images": [str]?, "candidates": [{"steps": [str]}
  | {"text": str}], "aggregations": [str]?}``;
- OpenRLHF's remote reward-model protocol (``POST /v1/openrlhf``): ``{"query": [str], "prompts":
  [str]?, "labels": [...]?, "dense": bool?}``, the request body OpenRLHF's remote reward model posts
  (``{"query": queries, "prompts": prompts, "labels": labels}``: ``remote_rm_fn`` in
  ``openrlhf/utils/remote_rm_utils.py`` before 0.11, ``SingleTurnAgentExecutor._fetch_rewards_via_http``
  in ``openrlhf/utils/agent.py`` from 0.11, one query per request; each query is the prompt followed
  by the response, decoded with its special tokens).

Every problem is a :class:`RequestError` naming the field in the request's own terms
(``candidates[2].steps[0]``, ``images[1]``, ``query[3]``); the app turns it into a 4xx response
``{"error": message, "field": field}``.

Each chain then goes through the preflight's own checks (:class:`prm.preflight.RecordChecker`):
special-token text neutralised (or refused under ``special_tokens=error``) and the length policy
``too_long`` (``truncate``: the longest prefix of whole steps that fits; ``skip``: the candidate is not
scored; ``error``: the request is refused naming the candidate). What the policy did is returned per
candidate (:attr:`Candidate.too_long`).

Lengths are measured once per question (and its images), not once per candidate
(:func:`measure_problem`): the candidates of one question are tokenised together without images,
cut at their shared header (:func:`prm.evaluation.scoring.continuations_of`), and the prefix with its
images is processed once; a candidate is ``P + L`` tokens long (prefix ``P``, own tokens ``L``), the
count the collator gives the whole chain (tests/test_serve.py compares them on every family). The
candidates' token ids go on to the scorer (:attr:`Parsed.continuations`), which then does not
tokenise them again.

Images: a path under ``image_root`` (:func:`prm.data.images.check_path`: absolute, ``~`` and
root-leaving paths are refused, symbolic links included), or a base64 ``data:image/...`` URL, decoded
(at most ``limits.max_image_bytes``), checked to be an image and written once, under its SHA-256, in
the server's own temporary folder (:class:`ImageStore`), so the same image sent by two requests is
one path and their candidates share one prefix pass.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image

from prm.aggregation import REGISTRY
from prm.data.dataset import PRMCollator
from prm.data.errors import RecordError
from prm.data.images import check_path
from prm.data.records import LabelledChain
from prm.data.steps import normalize_whitespace, split_candidate
from prm.evaluation.scoring import Continuation, continuations_of
from prm.preflight import Neutralizer, RecordChecker, special_token_strings


class RequestError(ValueError):
    """A request the server refuses: ``field`` (e.g. ``candidates[2].steps``, None for the whole body),
    ``message`` and the HTTP ``status`` (422 unless said otherwise)."""

    def __init__(self, field: str | None, message: str, status: int = 422):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
        self.status = status


# --------------------------------------------------------------------------- types


def _expect(value: Any, kind: type | tuple, where: str, what: str) -> Any:
    # bool is an int in Python; no field of these requests takes a bool where a number is meant
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RequestError(where, f"expected {what}, got {type(value).__name__}")
    return value


def _string_list(
    value: Any, where: str, limit: int | None = None, what: str = "strings", key: str = ""
) -> list[str]:
    """``value`` checked as a list of strings; ``limit``: its most items, named ``key`` (the
    ``limits.*`` setting) in the 413 refusal."""
    _expect(value, list, where, f"a list of {what}")
    if limit is not None and len(value) > limit:
        raise RequestError(where, f"{len(value)} {what}, over {key or 'the limit'}={limit}", status=413)
    for position, item in enumerate(value):
        _expect(item, str, f"{where}[{position}]", "a string")
    return value


def _refuse_unknown(body: dict, known: tuple[str, ...], where: str = "") -> None:
    for key in body:
        if key not in known:
            raise RequestError(f"{where}{key}", f"unknown field; expected {', '.join(known)}")


def check_aggregations(value: Any, default: list[str], where: str = "aggregations") -> list[str]:
    """The aggregation names a request asks for (``default`` when absent); 422 for an unknown one."""
    if value is None:
        return list(default)
    names = _string_list(value, where, what="aggregation names")
    for position, name in enumerate(names):
        if name not in REGISTRY:
            raise RequestError(
                f"{where}[{position}]", f"unknown aggregation {name!r}; expected one of {', '.join(REGISTRY)}"
            )
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------- steps


def split_steps(text: str, mode: str, separator: str = "\n\n") -> list[str]:
    """``text`` cut into steps: ``candidate`` (:func:`prm.data.steps.split_candidate`: numbered lines
    or paragraphs, the ``Answer:`` line as the last step), ``paragraphs`` (blank-line separated),
    ``lines`` (non-empty lines) or ``separator`` (at ``separator``). Whitespace is normalised first
    (:func:`prm.data.steps.normalize_whitespace`); steps are stripped and empty ones dropped."""
    text = normalize_whitespace(text)
    if mode == "candidate":
        return split_candidate(text).steps
    if mode == "paragraphs":
        parts = re.split(r"\n[ \t]*(?:\n[ \t]*)+", text)
    elif mode == "lines":
        parts = text.split("\n")
    elif mode == "separator":
        parts = text.split(separator)
    else:
        raise ValueError(f"steps.split={mode!r}: expected candidate, paragraphs, lines or separator")
    return [part.strip() for part in parts if part.strip()]


def step_ends(text: str, steps: list[str]) -> list[int | None]:
    """For each step, the character offset in ``text`` just past its last character when the steps
    occur in ``text`` in order (None from the first one that does not: a step the splitter rewrote,
    e.g. a removed ``1.`` marker, cannot be located). A dense-reward caller maps these offsets to
    token positions of the response."""
    ends: list[int | None] = []
    start = 0
    for step in steps:
        found = text.find(step, start) if start is not None else -1
        if found < 0:
            ends.extend([None] * (len(steps) - len(ends)))
            break
        start = found + len(step)
        ends.append(start)
    return ends


# --------------------------------------------------------------------------- images


class ImageStore:
    """Decoded data-URL images, each written once under its SHA-256 in a private temporary folder and
    reference-counted: :meth:`add` returns the path and counts a reference, :meth:`release` drops one
    and deletes the file at zero. Thread-safe (requests are parsed in worker threads)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._folder = tempfile.TemporaryDirectory(prefix="prm-serve-images-")
        self.root = Path(self._folder.name)
        self._references: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, url: str, where: str) -> str:
        """The path of the image in data URL ``url`` (``data:image/<type>;base64,<data>``); raises
        :class:`RequestError` at ``where`` for another URL form, bad base64, an image over
        ``max_bytes`` or bytes Pillow cannot decode."""
        header, comma, payload = url.partition(",")
        if not comma or not header.startswith("data:image/") or not header.endswith(";base64"):
            raise RequestError(where, "a data URL must read data:image/<type>;base64,<data>")
        if len(payload) > 4 * (self.max_bytes // 3 + 1) + 4:
            raise RequestError(where, f"image over limits.max_image_bytes={self.max_bytes}", status=413)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as error:
            raise RequestError(where, f"not valid base64 ({error})") from None
        if len(data) > self.max_bytes:
            raise RequestError(where, f"image of {len(data)} bytes, over limits.max_image_bytes", status=413)
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / f"{digest}.img"
        with self._lock:
            if digest not in self._references:
                self.root.mkdir(mode=0o700, exist_ok=True)  # again after close(): an app started twice
                temporary = self.root / f"{digest}.{threading.get_ident()}.part"
                temporary.write_bytes(data)
                try:
                    verify_image(temporary, where)
                except RequestError:
                    temporary.unlink()
                    raise
                os.replace(temporary, path)
                self._references[digest] = 0
            self._references[digest] += 1
        return str(path)

    def release(self, paths: list[str]) -> None:
        """Drop one reference to each path :meth:`add` returned; files at zero are deleted."""
        with self._lock:
            for path in paths:
                digest = Path(path).stem
                if digest not in self._references:
                    continue
                self._references[digest] -= 1
                if self._references[digest] == 0:
                    del self._references[digest]
                    Path(path).unlink(missing_ok=True)

    @property
    def files(self) -> int:
        """Images held now (for the health endpoint and the tests: it returns to 0 between requests)."""
        with self._lock:
            return len(self._references)

    def close(self) -> None:
        """Remove the folder and what is left in it (the app's shutdown; a later :meth:`add` makes
        it again)."""
        self._folder.cleanup()


def verify_image(path: Path, where: str) -> None:
    """Open and decode ``path`` fully; :class:`RequestError` at ``where`` when Pillow cannot (the
    message leaves out the server's file path: a data URL's image sits in a private folder)."""
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for a broken file
        reason = str(error).replace(repr(str(path)), "the image").replace(str(path), "the image")
        raise RequestError(where, f"cannot decode the image ({type(error).__name__}: {reason})") from None


# --------------------------------------------------------------------------- chains


@dataclass
class Candidate:
    """One candidate of a request as scored: the chain (None when ``too_long=skip`` left it out), the
    steps as given or split, what the length policy did (None: nothing), and the chain's token ids
    cut at its question's header when the length check computed them (None for a truncated chain)."""

    chain: LabelledChain | None
    steps: list[str]
    too_long: dict[str, Any] | None = None
    continuation: Continuation | None = None


@dataclass
class Parsed:
    """A checked request: its candidates, the aggregations asked for and the temporary image paths
    to release when it is answered."""

    candidates: list[Candidate]
    aggregations: list[str]
    temporary_images: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def chains(self) -> list[LabelledChain]:
        return [c.chain for c in self.candidates if c.chain is not None]

    @property
    def continuations(self) -> list[Continuation | None]:
        """The :attr:`Candidate.continuation` of each of :attr:`chains`, in the same order."""
        return [c.continuation for c in self.candidates if c.chain is not None]


def measure_problem(collator: PRMCollator, chains: list[LabelledChain], multimodal: bool):
    """``(continuations, measured)`` of ``chains`` that share one question and one list of images:
    each chain's :class:`prm.evaluation.scoring.Continuation` and its ``(length, marker positions)``
    as :meth:`prm.preflight.RecordChecker.measure` gives them for the whole chain, from one
    text-only collation of all the chains and one collation of the prefix with its images (none
    when ``multimodal`` is False or there are no images: the prefix is then the header itself).
    ``(None, None)`` when the header check fails (the caller measures each chain whole)."""
    planned = continuations_of(collator, chains)
    if planned is None:
        return None, None
    first = chains[0]
    prefix = len(planned[0].header)
    if multimodal and first.images:
        stepless = LabelledChain(id=first.id, question=first.question, steps=[], label=1, images=first.images)
        item = {"chain": stepless, "instance": 0, "domain": 0, "images": list(first.images)}
        prefix = int(collator([item])["inputs"]["attention_mask"][0].sum())
    measured = [(prefix + len(c.ids), (prefix + c.markers).tolist()) for c in planned]
    return planned, measured


class RequestReader:
    """Turns request bodies into checked chains for one model (``backbone``) under the server's
    settings ``cfg`` (the composed ``conf/serve.yaml``, with ``max_length``, ``too_long`` and
    ``special_tokens`` resolved). ``images``: the store for data-URL images."""

    def __init__(self, backbone: Any, cfg: Any, images: ImageStore):
        self.backbone = backbone
        self.cfg = cfg
        self.limits = cfg.limits
        self.images = images
        self.image_root = Path(cfg.image_root).resolve() if cfg.image_root else None
        self.default_aggregations = list(cfg.aggregations or REGISTRY)
        self.special_strings = special_token_strings(backbone)
        # built once, shared by every request's checker (both are stateless)
        self.neutralize = Neutralizer(self.special_strings)
        self.collator = PRMCollator(backbone, max_length=None)
        self.policies = SimpleNamespace(
            max_length=cfg.max_length,
            too_long=str(cfg.too_long),
            special_tokens=str(cfg.special_tokens),
            bad_image="fix",  # images are checked here, once per request (load_image fixes geometry)
        )
        self._ids = 0
        self._lock = threading.Lock()

    def _next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    # ----------------------------------------------------------------- native
    def native(self, body: Any) -> Parsed:
        """A checked ``POST /v1/score`` body (see the module doc); raises :class:`RequestError`."""
        _expect(body, dict, None, "a JSON object")
        _refuse_unknown(body, ("question", "images", "candidates", "aggregations"))
        if "question" not in body:
            raise RequestError("question", "missing")
        question = _expect(body["question"], str, "question", "a string")
        if not question.strip():
            raise RequestError("question", "empty")
        aggregations = check_aggregations(body.get("aggregations"), self.default_aggregations)
        if "candidates" not in body:
            raise RequestError("candidates", "missing")
        raw = _expect(body["candidates"], list, "candidates", "a list of candidates")
        if not raw:
            raise RequestError("candidates", "empty: give at least one candidate")
        if len(raw) > self.limits.max_candidates:
            raise RequestError(
                "candidates",
                f"{len(raw)} candidates, over limits.max_candidates={self.limits.max_candidates}",
                413,
            )
        steps_of = [self._candidate_steps(item, f"candidates[{i}]") for i, item in enumerate(raw)]
        parsed = Parsed([], aggregations)
        try:
            images = self._images(body.get("images"), parsed)
            texts = [isinstance(item, dict) and "text" in item for item in raw]
            parsed.candidates = self._check(question, images, steps_of, "candidates[{}]", texts)
        except BaseException:
            self.images.release(parsed.temporary_images)
            raise
        return parsed

    def _candidate_steps(self, item: Any, where: str) -> list[str]:
        _expect(item, dict, where, 'an object {"steps": [...]} or {"text": "..."}')
        _refuse_unknown(item, ("steps", "text"), f"{where}.")
        if ("steps" in item) == ("text" in item):
            raise RequestError(where, 'give exactly one of "steps" (a list of strings) or "text" (a string)')
        if "steps" in item:
            steps = _string_list(
                item["steps"], f"{where}.steps", self.limits.max_steps, "steps", "limits.max_steps"
            )
        else:
            text = _expect(item["text"], str, f"{where}.text", "a string")
            steps = split_steps(text, str(self.cfg.steps.split), self.cfg.steps.separator)
            if len(steps) > self.limits.max_steps:
                raise RequestError(
                    f"{where}.text", f"{len(steps)} steps, over limits.max_steps={self.limits.max_steps}", 413
                )
        if not steps:
            raise RequestError(f"{where}.steps" if "steps" in item else f"{where}.text", "no step to score")
        for position, step in enumerate(steps):
            if not step.strip():
                raise RequestError(f"{where}.steps[{position}]", "empty step")
        return [normalize_whitespace(step) for step in steps]

    def _images(self, value: Any, parsed: Parsed) -> list[str]:
        if value is None:
            return []
        images = _string_list(value, "images", self.limits.max_images, "images", "limits.max_images")
        paths = []
        for position, raw in enumerate(images):
            where = f"images[{position}]"
            if raw.startswith("data:"):
                path = self.images.add(raw, where)
                parsed.temporary_images.append(path)
            else:
                if self.image_root is None:
                    message = "image paths are not accepted (no image_root set): send a data URL"
                    raise RequestError(where, message)
                try:
                    path = str(check_path(raw, self.image_root, "request", None, where))
                except RecordError:
                    raise RequestError(where, f"image path {raw!r} is outside the image root") from None
                if not Path(path).is_file():
                    raise RequestError(where, f"no image at {raw!r} under the image root")
                verify_image(Path(path), where)
            paths.append(path)
        if paths and not self.backbone.is_multimodal:
            message = f"the model ({self.backbone.family}) is text-only and reads no image"
            raise RequestError("images", message)
        return paths

    # ----------------------------------------------------------------- checks shared by both shapes
    def _check(
        self,
        question: str,
        images: list[str],
        steps_of: list[list[str]],
        where: str,
        texts: list[bool] | None = None,
        questions: list[str] | None = None,
    ) -> list[Candidate]:
        """Special tokens and the length policy, per candidate (``where``: the candidate's field
        pattern, e.g. ``candidates[{}]``); ``questions``: one question per candidate (OpenRLHF).
        The candidates of one question are measured together (:func:`measure_problem`)."""
        checker = RecordChecker(
            self.policies,
            self.backbone,
            "request",
            "request",
            neutralize=self.neutralize,
            collator=self.collator,
        )
        request = self._next_id()
        chains = []
        for index, steps in enumerate(steps_of):
            own_question = questions[index] if questions is not None else question
            self._special_tokens(checker, own_question, steps, where.format(index), questions is not None)
            chains.append(
                LabelledChain(
                    id=f"request{request}/{index}",
                    question=checker.neutralize(own_question),
                    steps=[checker.neutralize(step) for step in steps],
                    label=1,
                    images=images,
                )
            )
        problems: dict[str, list[int]] = {}  # one request has one list of images: the question decides
        for index, chain in enumerate(chains):
            problems.setdefault(chain.question, []).append(index)
        continuations: list[Continuation | None] = [None] * len(chains)
        measured: list[tuple[int, list[int]] | None] = [None] * len(chains)
        for members in problems.values():
            try:
                planned, sizes = measure_problem(
                    checker.collator, [chains[i] for i in members], self.backbone.is_multimodal
                )
            except ValueError:  # a chain the collator refuses: measured alone below, which names it
                planned = None
            if planned is not None:
                for position, index in enumerate(members):
                    continuations[index], measured[index] = planned[position], sizes[position]
        out = []
        for index, (steps, chain) in enumerate(zip(steps_of, chains)):
            name = where.format(index)
            before = dict(checker.report.counts)
            kept = checker.length(index, chain, "", measured[index])
            if checker.too_long:
                raise RequestError(name, f"{checker.too_long[0]} (too_long=error)", status=422)
            counted = [k for k, v in checker.report.counts.items() if v != before.get(k, 0)]
            policy = None
            if kept is None:
                reason = next(k for k in counted if k.startswith("skipped"))
                policy = {"action": "skipped", "reason": reason, "steps": len(steps)}
            elif len(kept.steps) < len(steps):
                policy = {"action": "truncated", "kept_steps": len(kept.steps), "steps": len(steps)}
            shown = steps if texts is None or texts[index] else []
            continuation = continuations[index] if kept is chain else None
            out.append(Candidate(kept, shown, policy, continuation))
        return out

    def _special_tokens(self, checker, question: str, steps: list[str], where: str, own_question: bool):
        if self.policies.special_tokens != "error":
            return
        fields = [(f"{where}.question" if own_question else "question", question)]
        fields += [(f"{where}.steps[{p}]", step) for p, step in enumerate(steps)]
        for name, value in fields:
            hits = checker.neutralize.find(value)
            if hits:
                raise RequestError(
                    name, f"contains the special token {hits[0]!r} (special_tokens=error on this server)"
                )

    # ----------------------------------------------------------------- OpenRLHF
    def openrlhf(self, body: Any) -> Parsed:
        """A checked ``POST /v1/openrlhf`` body: each query split into question and response (see
        :meth:`split_query`), the response into steps (``steps.split``); ``extra`` holds ``dense``,
        the responses and which queries have no step. Raises :class:`RequestError`."""
        settings = self.cfg.openrlhf
        _expect(body, dict, None, "a JSON object")
        _refuse_unknown(body, ("query", "prompts", "labels", "dense", "metas"))
        if "query" not in body:
            raise RequestError("query", "missing")
        queries = _string_list(
            body["query"], "query", self.limits.max_candidates, "queries", "limits.max_candidates"
        )
        if not queries:
            raise RequestError("query", "empty: give at least one query")
        prompts = body.get("prompts")
        if prompts is not None:
            _string_list(prompts, "prompts")
            if len(prompts) != len(queries):
                raise RequestError("prompts", f"{len(prompts)} prompts for {len(queries)} queries")
        labels = body.get("labels")
        if labels is not None:
            _expect(labels, list, "labels", "a list")
        dense = body.get("dense", settings.dense)
        _expect(dense, bool, "dense", "true or false")
        questions, responses, steps_of = [], [], []
        for index, query in enumerate(queries):
            question, response = self.split_query(query, prompts[index] if prompts else None, index)
            steps = split_steps(response, str(self.cfg.steps.split), self.cfg.steps.separator)
            if len(steps) > self.limits.max_steps:
                raise RequestError(
                    f"query[{index}]",
                    f"{len(steps)} steps, over limits.max_steps={self.limits.max_steps}",
                    413,
                )
            questions.append(question)
            responses.append(response)
            steps_of.append([normalize_whitespace(step) for step in steps])
        scored = [i for i, steps in enumerate(steps_of) if steps]
        checked = self._check(
            "",
            [],
            [steps_of[i] for i in scored],
            "query[{}]",
            [True] * len(scored),
            questions=[questions[i] for i in scored],
        )
        empty = {"action": "skipped", "reason": "no_step", "steps": 0}
        candidates = [Candidate(None, [], empty) for _ in queries]
        for position, index in enumerate(scored):
            candidates[index] = checked[position]
        return Parsed(
            candidates,
            [settings.aggregation],
            extra={"dense": dense, "responses": responses, "steps": steps_of},
        )

    def split_query(self, query: str, prompt: str | None, index: int) -> tuple[str, str]:
        """``(question, response)`` of one OpenRLHF query.

        With ``prompt`` (``prompts[index]``), the query must start with it (OpenRLHF sends prompt +
        response) and the response is the rest; without, the query is cut at the last occurrence of
        ``openrlhf.response_separator`` (422 when it is null or absent from the query). The question is
        the prompt stripped, or the group ``question`` of ``openrlhf.question_regex``'s first match in
        it. Trailing ``openrlhf.strip`` strings (EOS tokens) are removed from the response.
        """
        settings = self.cfg.openrlhf
        if prompt is not None:
            if not query.startswith(prompt):
                raise RequestError(f"query[{index}]", f"does not start with prompts[{index}]")
            head, response = prompt, query[len(prompt) :]
        else:
            separator = settings.response_separator
            if not separator:
                raise RequestError(
                    "prompts",
                    "missing: needed to split each query (openrlhf.response_separator is null)",
                )
            cut = query.rfind(separator)
            if cut < 0:
                raise RequestError(f"query[{index}]", f"holds no {separator!r} (openrlhf.response_separator)")
            head, response = query[:cut], query[cut + len(separator) :]
        if settings.question_regex:
            match = re.search(settings.question_regex, head, re.DOTALL)
            if match is None:
                where = f"prompts[{index}]" if prompt is not None else f"query[{index}]"
                raise RequestError(where, "openrlhf.question_regex finds no question in it")
            head = match.group("question")
        question = head.strip()
        if not question:
            raise RequestError(f"query[{index}]", "empty question")
        stripped = True
        while stripped:
            stripped = False
            response = response.rstrip()
            for suffix in settings.strip:
                if suffix and response.endswith(suffix):
                    response, stripped = response[: -len(suffix)], True
        return question, response
