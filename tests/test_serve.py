"""The PRM service (prm/serve): scores equal score_chains', batching across requests, bad input refused
with the field named while the server keeps serving, the OpenRLHF protocol, the client.

The service runs in-process through Starlette's TestClient (no socket); one test starts uvicorn on a
loopback port. The text model is a tiny Qwen2 PRM trained 2 steps (like tests/test_evaluation.py's
``shifted_run``) and loaded by load_model, as ``python -m prm.serve checkpoint=`` loads it; the image
model a float64 tiny Qwen2-VL PRM with sharpened weights (tests/test_prefix_sharing.py's recipe).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import io
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch
from conftest import compose_config
from fastapi.testclient import TestClient
from numerics import FLOAT64_PATHS, assert_close_at_scale, decided, sharpened_prm
from PIL import Image

import prm.evaluation.scoring as scoring
from prm.aggregation import REGISTRY, Aggregation, pad_ragged
from prm.data.dataset import PRMCollator
from prm.data.records import LabelledChain
from prm.evaluation.run import load_model
from prm.evaluation.scoring import score_chains
from prm.model.backbones import build_backbone
from prm.model.families import family_names
from prm.preflight import RecordChecker
from prm.serve.__main__ import resolve_policies
from prm.serve.app import create_app
from prm.serve.batching import BatchScorer
from prm.serve.client import PRMClient, PRMServiceError
from prm.serve.requests import measure_problem, split_steps, step_ends

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
CANDIDATES = [
    ["Tom starts with 3 apples.", "He buys 4 more, so 3 + 4 = 7.", "Answer: 7"],
    ["Tom starts with 3 apples.", "3 * 4 = 12.", "Answer: 12"],
    ["Answer: 7"],
    ["He has 4.", "Then 4 - 3 = 1.", "So 1 apple.", "Answer: 1"],
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny text-only PRM trained 2 steps on the smoke data (about 10 s); its run directory."""
    from prm.training import train

    folder = tmp_path_factory.mktemp("serve_run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRM_CACHE_DIR", str(folder / "cache"))
        overrides = ["experiment=smoke", "backbone=tiny_qwen2", "train.steps=2", "logger=none"]
        train(compose_config(*overrides), run_dir=folder / "run")
    return folder / "run"


def serve_config(*overrides: str):
    cfg = compose_config(*overrides, name="serve")
    return cfg


@pytest.fixture(scope="module")
def text_service(trained_run):
    """(prm, cfg, app) of the trained checkpoint, loaded as ``python -m prm.serve checkpoint=`` does."""
    from prm.checkpoint import resolve_checkpoint

    cfg = serve_config(f"checkpoint={trained_run}", "device=cpu", "batch_window_ms=50")
    checkpoint = resolve_checkpoint(trained_run, {})
    prm = load_model(cfg, checkpoint, "cpu", {})
    cfg, _ = resolve_policies(cfg, checkpoint)
    return prm, cfg, create_app(prm, cfg, "cpu", str(checkpoint))


@pytest.fixture
def client(text_service):
    with TestClient(text_service[2]) as test_client:
        yield test_client


def chains_of(question, steps_list, images=()):
    return [
        LabelledChain(id=str(i), question=question, steps=steps, label=1, images=list(images))
        for i, steps in enumerate(steps_list)
    ]


def expected_chain_scores(steps: list[torch.Tensor], name: str) -> list[float]:
    scores, mask = pad_ragged(steps, torch.float64)
    return Aggregation(name)(scores, mask).tolist()


# --------------------------------------------------------------------------- equality with scoring


def test_scores_equal_score_chains_exactly(text_service, client):
    prm, cfg, _ = text_service
    # the trained run's own policies came from its config.yaml (experiment=smoke)
    assert cfg.max_length is not None and str(cfg.too_long) == "truncate"
    body = {"question": QUESTION, "candidates": [{"steps": s} for s in CANDIDATES]}
    response = client.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    # one request = one scoring call on the same chains, same batch size: identical computation
    expected = score_chains(
        prm, chains_of(QUESTION, CANDIDATES), cfg.batch_size, cfg.max_length, "cpu", prefix_sharing=True
    )
    for candidate, want in zip(result["candidates"], expected, strict=True):
        assert candidate["step_scores"] == want.tolist()
        assert candidate["too_long"] is None
    for name in result["aggregations"]:
        got = [c["scores"][name] for c in result["candidates"]]
        assert got == expected_chain_scores(expected, name), name
    assert result["aggregations"] == list(REGISTRY)  # serve.yaml aggregations: null = all
    assert float(torch.cat(expected).std()) > 0  # the candidates' scores differ: equality is informative


def test_text_candidates_are_split_as_configured(text_service, client):
    prm, cfg, _ = text_service
    text = "1. Tom starts with 3 apples.\n2. He buys 4 more: 3 + 4 = 7.\nAnswer: 7"
    # split_candidate: numbered lines lose their markers, the Answer line is the last step
    steps = ["Tom starts with 3 apples.", "He buys 4 more: 3 + 4 = 7.", "Answer: 7"]
    result = client.post(
        "/v1/score", json={"question": QUESTION, "candidates": [{"text": text}], "aggregations": ["min"]}
    ).json()
    (candidate,) = result["candidates"]
    assert candidate["steps"] == steps
    (want,) = score_chains(prm, chains_of(QUESTION, [steps]), cfg.batch_size, cfg.max_length, "cpu")
    assert candidate["step_scores"] == pytest.approx(want.tolist(), abs=1e-6)
    assert list(candidate["scores"]) == ["min"]


# --------------------------------------------------------------------------- measuring once per question


@pytest.mark.parametrize("prompt", ["marker", "conversation"])
@pytest.mark.parametrize("family", family_names(tiny=True))
def test_lengths_measured_once_per_question_equal_the_whole_chains(tmp_path, family, prompt):
    """measure_problem (one text-only collation of all candidates, one of the prefix with its
    images) gives every candidate the token count and marker positions the collator gives the whole
    chain: integers, so exactly equal, on every family and both prompt formats."""
    import numpy as np

    backbone = build_backbone(family, prompt=prompt)
    rng = np.random.default_rng(0)
    images = []
    if backbone.is_multimodal:  # two images of different shapes (different token counts)
        for name, shape in (("a.png", (60, 80, 3)), ("b.png", (112, 56, 3))):
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / name)
            images.append(str(tmp_path / name))
    steps = [[f"Step {k}: {'x' * i} tiles." for k in range(i + 1)] + ["Answer: 3"] for i in range(4)]
    chains = chains_of("How many tiles are there?", steps, images)
    collator = PRMCollator(backbone)
    planned, measured = measure_problem(collator, chains, backbone.is_multimodal)
    policies = SimpleNamespace(
        max_length=None, too_long="truncate", special_tokens="neutralize", bad_image="fix"
    )
    checker = RecordChecker(policies, backbone, "request", "request")
    assert measured == [checker.measure(chain) for chain in chains]
    assert [len(c.markers) for c in planned] == [len(s) for s in steps]


def test_the_scorer_reuses_the_length_checks_tokens(text_service, monkeypatch):
    prm, cfg, app = text_service
    reader = app.state.reader
    parsed = reader.native({"question": QUESTION, "candidates": [{"steps": s} for s in CANDIDATES]})
    continuations = parsed.continuations
    assert len(continuations) == len(CANDIDATES) and all(c is not None for c in continuations)
    collations = []
    real = scoring.continuations_of
    monkeypatch.setattr(scoring, "continuations_of", lambda *a: collations.append(1) or real(*a))
    chains = parsed.chains
    given = score_chains(
        prm, chains, 16, cfg.max_length, "cpu", prefix_sharing=True, continuations=continuations
    )
    assert collations == []  # the candidates were not tokenised again
    again = score_chains(prm, chains, 16, cfg.max_length, "cpu", prefix_sharing=True)
    assert collations == [1]
    # the same token ids in the same batches: the same computation, bit for bit
    assert [t.tolist() for t in given] == [t.tolist() for t in again]


def test_a_truncated_candidate_is_tokenised_again(text_service):
    prm, cfg, _ = text_service
    settings = cfg.copy()
    settings.max_length = 200
    reader = create_app(prm, settings, "cpu").state.reader
    long_steps = [f"Step {k}: " + "so on and so forth " * 8 for k in range(12)]
    parsed = reader.native({"question": "q", "candidates": [{"steps": ["short"]}, {"steps": long_steps}]})
    first, second = parsed.candidates
    assert second.too_long["action"] == "truncated"
    # the kept steps' tokens are not a cut of the whole chain's: the scorer tokenises the truncated chain
    assert first.continuation is not None and second.continuation is None


def test_split_steps_modes():
    text = "First line.\nSecond line.\n\nThird, after a blank line."
    assert split_steps(text, "paragraphs") == ["First line.\nSecond line.", "Third, after a blank line."]
    assert split_steps(text, "lines") == ["First line.", "Second line.", "Third, after a blank line."]
    assert split_steps("a ;; b ;;", "separator", ";;") == ["a", "b"]
    # "a\n\nb": "a" ends at offset 1, "b" starts at 3 and ends at 4
    assert step_ends("a\n\nb", ["a", "b"]) == [1, 4]
    assert step_ends("a\n\nb", ["x", "b"]) == [None, None]


# --------------------------------------------------------------------------- batching


def test_concurrent_requests_are_batched_and_score_like_alone(text_service):
    prm, cfg, app = text_service
    questions = [f"{QUESTION} (variant {k})" for k in range(3)]
    bodies = [{"question": q, "candidates": [{"steps": s} for s in CANDIDATES[:3]]} for q in questions]
    bodies += [
        {"question": questions[0], "candidates": [{"steps": CANDIDATES[3]}]}
    ]  # shares request 0's prefix
    with TestClient(app) as test_client:
        before = app.state.scorer.stats.batches
        results = [None] * len(bodies)

        def send(index):
            results[index] = test_client.post("/v1/score", json=body_of(index)).json()

        def body_of(index):
            return {**bodies[index], "aggregations": ["mean"]}

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        batches = app.state.scorer.stats.batches - before
    assert 1 <= batches < len(bodies)  # the 50 ms window gathered requests into fewer scoring calls
    for body, result in zip(bodies, results):
        chains = chains_of(body["question"], [c["steps"] for c in body["candidates"]])
        alone = score_chains(prm, chains, cfg.batch_size, cfg.max_length, "cpu", prefix_sharing=True)
        got = [torch.tensor(c["step_scores"]) for c in result["candidates"]]
        # float32 model, other batch compositions: equal up to float32 rounding of the same function
        # (tests/numerics.py: at most ~1e-4 of the scale in float32; a wrong chain moves it by > 1e-2)
        assert_close_at_scale(torch.cat(got), torch.cat(alone), rel=1e-4)


def test_worker_batches_within_the_window_and_drops_cancelled_requests():
    calls = []

    def score_fn(chains):
        calls.append(list(chains))
        return [torch.tensor([float(c)]) for c in chains]

    async def scenario():
        scorer = BatchScorer(score_fn, window_s=0.05, max_batch=5, max_queued=100)
        await scorer.start()
        first = scorer.submit([1, 2])
        cancelled = scorer.submit([3])
        cancelled.cancel()  # e.g. its client went away: never scored
        second = scorer.submit([4, 5])
        too_many = scorer.submit([6, 7])  # 2 + 2 + 2 > max_batch 5: waits for the next call
        results = await asyncio.gather(first, second, too_many)
        await scorer.stop()
        return scorer, results

    scorer, results = asyncio.run(scenario())
    assert calls == [[1, 2, 4, 5], [6, 7]]
    assert [[float(t) for t in r] for r in results] == [[1.0, 2.0], [4.0, 5.0], [6.0, 7.0]]
    assert (scorer.stats.batches, scorer.stats.requests, scorer.stats.dropped) == (2, 3, 1)
    assert scorer.queued_chains == 0


def test_a_failing_request_fails_alone():
    def score_fn(chains):
        if "bad" in chains:
            raise ValueError("this chain cannot be scored")
        return [torch.tensor([1.0]) for _ in chains]

    async def scenario():
        scorer = BatchScorer(score_fn, window_s=0.05, max_batch=10, max_queued=100)
        await scorer.start()
        good, bad = scorer.submit(["ok"]), scorer.submit(["bad"])
        outcome = await asyncio.gather(good, bad, return_exceptions=True)
        await scorer.stop()
        return outcome

    good, bad = asyncio.run(scenario())
    assert [float(t) for t in good] == [1.0]
    assert isinstance(bad, ValueError)


# --------------------------------------------------------------------------- bad input


BAD_REQUESTS = [
    (b"{not json", 400, None),
    (b"[" * 100_000 + b"]" * 100_000, 400, None),  # nested past the JSON parser's recursion limit
    (b'["a list"]', 422, None),
    (b'{"candidates": [{"steps": ["a"]}]}', 422, "question"),
    (b'{"question": 3, "candidates": [{"steps": ["a"]}]}', 422, "question"),
    (b'{"question": "q"}', 422, "candidates"),
    (b'{"question": "q", "candidates": {"steps": ["a"]}}', 422, "candidates"),
    (
        b'{"question": "q", "candidates": [{"steps": ["a"]}, {"steps": ["b", 7]}]}',
        422,
        "candidates[1].steps[1]",
    ),
    (b'{"question": "q", "candidates": [{"steps": []}]}', 422, "candidates[0].steps"),
    (b'{"question": "q", "candidates": [{"steps": ["a"], "text": "a"}]}', 422, "candidates[0]"),
    (b'{"question": "q", "candidates": [{"stpes": ["a"]}]}', 422, "candidates[0].stpes"),
    (
        b'{"question": "q", "candidates": [{"steps": ["a"]}], "aggregations": ["min", "best"]}',
        422,
        "aggregations[1]",
    ),
    (b'{"question": "q", "candidates": [{"steps": ["a"]}], "images": ["x.png"]}', 422, "images[0]"),
    (b'{"question": "q", "candidates": [{"steps": ["a"]}], "extra": 1}', 422, "extra"),
]


@pytest.mark.parametrize("body, status, field", BAD_REQUESTS)
def test_bad_input_is_refused_naming_the_field_and_serving_goes_on(client, body, status, field):
    response = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert response.json()["error"]
    good = client.post("/v1/score", json={"question": "q", "candidates": [{"steps": ["a"]}]})
    assert good.status_code == 200 and len(good.json()["candidates"][0]["step_scores"]) == 1


def test_limits_give_413(text_service):
    prm, cfg, _ = text_service
    small = cfg.copy()
    small.limits.max_candidates = 2
    small.limits.max_body_bytes = 400
    small.limits.max_steps = 2
    with TestClient(create_app(prm, small, "cpu")) as test_client:
        cases = [
            ({"question": "q", "candidates": [{"steps": ["a"]}] * 3}, "candidates"),
            ({"question": "q", "candidates": [{"steps": ["a", "b", "c"]}]}, "candidates[0].steps"),
            ({"question": "q" * 500, "candidates": [{"steps": ["a"]}]}, None),  # body over 400 bytes
        ]
        for body, field in cases:
            response = test_client.post("/v1/score", json=body)
            assert (response.status_code, response.json()["field"]) == (413, field)
        response = test_client.post("/v1/score", json=cases[1][0])
        assert response.json()["error"] == "3 steps, over limits.max_steps=2"


def test_unknown_paths_and_methods_get_the_error_shape(client):
    missing = client.get("/v1/nothing")
    assert (missing.status_code, missing.json()) == (
        404,
        {"error": "Not Found: GET /v1/nothing", "field": None},
    )
    wrong = client.get("/v1/score")
    assert wrong.status_code == 405 and wrong.json()["error"].startswith("Method Not Allowed")


@pytest.mark.parametrize("policy", ["truncate", "skip", "error"])
def test_too_long_policy_is_applied_and_reported(text_service, policy):
    prm, cfg, _ = text_service
    long_steps = [f"Step {k}: " + "so on and so forth " * 8 for k in range(12)]
    settings = cfg.copy()
    settings.too_long = policy
    settings.max_length = 200
    with TestClient(create_app(prm, settings, "cpu")) as test_client:
        body = {"question": "q", "candidates": [{"steps": ["short"]}, {"steps": long_steps}]}
        response = test_client.post("/v1/score", json=body)
    if policy == "error":
        assert (response.status_code, response.json()["field"]) == (422, "candidates[1]")
        return
    first, second = response.json()["candidates"]
    assert first["too_long"] is None and len(first["step_scores"]) == 1
    if policy == "skip":
        assert second["too_long"] == {"action": "skipped", "reason": "skipped_too_long", "steps": 12}
        assert second["step_scores"] is None and second["scores"] is None
    else:
        kept = second["too_long"]["kept_steps"]
        assert second["too_long"] == {"action": "truncated", "kept_steps": kept, "steps": 12}
        assert 1 <= kept < 12 and len(second["step_scores"]) == kept
        (want,) = score_chains(prm, chains_of("q", [long_steps[:kept]]), 16, 200, "cpu")
        assert second["step_scores"] == pytest.approx(want.tolist(), abs=1e-6)


def test_api_key(text_service):
    prm, cfg, _ = text_service
    settings = cfg.copy()
    settings.api_key = "s3cret"
    with TestClient(create_app(prm, settings, "cpu")) as test_client:
        body = {"question": "q", "candidates": [{"steps": ["a"]}]}
        assert test_client.post("/v1/score", json=body).status_code == 401
        wrong = test_client.post("/v1/score", json=body, headers={"Authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.json()["field"]) == (401, "Authorization")
        right = test_client.post("/v1/score", json=body, headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200
        assert test_client.get("/health").status_code == 200  # health needs no key
        assert test_client.get("/v1/metadata").status_code == 401


def test_timed_out_request_frees_its_place(text_service):
    prm, cfg, _ = text_service
    settings = cfg.copy()
    settings.request_timeout_s = 0.2
    app = create_app(prm, settings, "cpu")
    scorer = app.state.scorer
    real = scorer.score_fn
    scorer.score_fn = lambda chains: (time.sleep(0.5), real(chains))[1]  # a slow model
    with TestClient(app) as test_client:
        body = {"question": "q", "candidates": [{"steps": ["a"]}]}
        response = test_client.post("/v1/score", json=body)
        assert (response.status_code, response.json()["field"]) == (504, None)
        scorer.score_fn = real
        deadline = time.time() + 5
        while scorer.queued_chains and time.time() < deadline:
            time.sleep(0.05)
        assert scorer.queued_chains == 0
        assert test_client.post("/v1/score", json=body).status_code == 200


def test_health_and_metadata(client, text_service):
    prm, cfg, _ = text_service
    metadata = client.get("/v1/metadata").json()
    assert metadata["label_words"] == ["+", "-"] and metadata["prompt"] == "marker"
    assert metadata["head"] == str(prm.head) and metadata["max_length"] == cfg.max_length
    assert metadata["family"] == "qwen2" and metadata["multimodal"] is False
    assert "min" in metadata["aggregations"] and metadata["openrlhf"]["aggregation"] == "min"
    assert client.get("/health").json()["status"] == "ok"


# --------------------------------------------------------------------------- OpenRLHF


def test_openrlhf_protocol(text_service, client):
    prm, cfg, _ = text_service
    prompt = "Question: 2 + 3 = ?\nAnswer step by step.\n"
    responses = ["2 + 3 = 5.\n\nAnswer: 5", "2 + 3 = 6.\n\nAnswer: 6", "   "]
    body = {"query": [prompt + r for r in responses], "prompts": [prompt] * 3, "labels": ["5"] * 3}
    result = client.post("/v1/openrlhf", json={**body, "dense": True}).json()
    # split_candidate on the responses: paragraphs, the Answer line last; the blank one has no step
    steps = [["2 + 3 = 5.", "Answer: 5"], ["2 + 3 = 6.", "Answer: 6"]]
    expected = score_chains(
        prm, chains_of(prompt.strip(), steps), cfg.batch_size, cfg.max_length, "cpu", prefix_sharing=True
    )
    rewards = expected_chain_scores(expected, "min")  # openrlhf.aggregation: min
    assert result["rewards"] == [*rewards, 0.0]  # the empty response gets openrlhf.skipped_reward
    assert result["scores"] == result["rewards"]
    assert result["step_rewards"] == [*(e.tolist() for e in expected), []]
    # "2 + 3 = 5." ends at offset 10, "Answer: 5" starts at 12 and ends at 21
    assert result["step_ends"] == [[10, 21], [10, 21], []]
    assert result["extra_logs"] == {
        "prm_steps": [2, 2, 0],
        "prm_skipped": [0.0, 0.0, 1.0],
        "prm_truncated": [0.0, 0.0, 0.0],
    }
    plain = client.post("/v1/openrlhf", json=body).json()
    assert plain["rewards"] == result["rewards"] and "step_rewards" not in plain


def test_openrlhf_bad_input(client):
    cases = [
        ({"prompts": ["p"]}, "query"),
        ({"query": "one string"}, "query"),
        ({"query": ["p r"], "prompts": ["p", "q"]}, "prompts"),
        ({"query": ["x r"], "prompts": ["p"]}, "query[0]"),
        ({"query": ["p r"]}, "prompts"),  # no prompts and no openrlhf.response_separator
        ({"query": ["p r"], "prompts": ["p"], "dense": "yes"}, "dense"),
    ]
    for body, field in cases:
        response = client.post("/v1/openrlhf", json=body)
        assert (response.status_code, response.json()["field"]) == (422, field), body


# --------------------------------------------------------------------------- client


def test_client_against_the_app(client, text_service):
    remote = PRMClient(http=client)
    result = remote.score(QUESTION, [CANDIDATES[0], "Answer: 7"], aggregations=["last"])
    assert [len(c["step_scores"]) for c in result["candidates"]] == [3, 1]
    assert result["candidates"][1]["steps"] == ["Answer: 7"]
    with pytest.raises(PRMServiceError) as refused:
        remote.score(QUESTION, [[]])
    assert (refused.value.status, refused.value.field) == (422, "candidates[0].steps")
    assert remote.openrlhf(["p: x\n\ny"], prompts=["p:"])["rewards"][0] > 0
    assert remote.metadata()["family"] == "qwen2"


# --------------------------------------------------------------------------- images


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.numerics
@pytest.mark.parametrize(
    "head, prompt", [("token", "marker"), ("value", "marker"), ("token", "conversation")]
)
def test_images_by_path_and_data_url_score_like_score_chains(tmp_path, head, prompt):
    import numpy as np

    prm = sharpened_prm("qwen2_vl", head, prompt)
    assert prm.backbone.prompt.name == prompt
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    (tmp_path / "root").mkdir()
    picture.save(tmp_path / "root" / "a.png")
    (tmp_path / "secret.png").write_bytes((tmp_path / "root" / "a.png").read_bytes())
    cfg, _ = resolve_policies(
        serve_config("checkpoint=/unused", f"image_root={tmp_path / 'root'}", "batch_window_ms=100"), None
    )
    app = create_app(prm, cfg, "cpu")
    steps = [["Two tiles.", "Answer: 2"], ["Five tiles."], ["One.", "Two.", "Answer: 3"]]
    expected = score_chains(
        prm,
        chains_of("How many tiles?", steps, [str(tmp_path / "root" / "a.png")]),
        16,
        cfg.max_length,
        "cpu",
    )
    with TestClient(app) as test_client:
        bodies = [
            {"question": "How many tiles?", "images": ["a.png"], "candidates": [{"steps": s} for s in steps]},
            {
                "question": "How many tiles?",
                "images": [data_url(picture)],
                "candidates": [{"steps": s} for s in steps],
            },
        ]
        results = [None, None]

        def send(index):
            results[index] = test_client.post("/v1/score", json=bodies[index])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for response in results:
            assert response.status_code == 200, response.text
            got = [torch.tensor(c["step_scores"]) for c in response.json()["candidates"]]
            # float64 model: every batch composition agrees to FLOAT64_PATHS (tests/numerics.py)
            assert_close_at_scale(torch.cat(got), torch.cat(expected))
        # the scores vary (std 0.015 to 0.2 here) far beyond the 5e-6 tolerance: equality is informative
        assert float(torch.cat(expected).std()) > 0.01
        assert app.state.images.files == 0  # the decoded data-URL image is gone once answered
        refused = [
            ("../secret.png", "images[0]"),
            (str(tmp_path / "secret.png"), "images[0]"),
            ("missing.png", "images[0]"),
            ("data:image/png;base64,AAAA", "images[0]"),  # decodes, but is no image
            ("data:image/png;base64,***", "images[0]"),
        ]
        for image, field in refused:
            body = {"question": "q", "images": [image], "candidates": [{"steps": ["a"]}]}
            response = test_client.post("/v1/score", json=body)
            assert (response.status_code, response.json()["field"]) == (422, field), image
            assert str(app.state.images.root) not in response.json()["error"]  # no server path shown
        assert test_client.post("/v1/score", json=bodies[0]).status_code == 200
    # shutdown removes the private image folder; the app started again makes it anew
    assert not app.state.images.root.exists()
    with TestClient(app) as test_client:
        assert test_client.post("/v1/score", json=bodies[0]).status_code == 200
    assert not app.state.images.root.exists()


# --------------------------------------------------------------------------- evaluate.py through the service


@contextlib.contextmanager
def served(app):
    """``app`` under uvicorn on a free loopback port in a thread (serve_load.py's :class:`Server`);
    yields its URL."""
    with load_test_module().Server(app) as server:
        yield server.url


def run_evaluate(overrides: list[str], out_dir: Path) -> dict:
    """evaluate() as evaluate.py calls it with these command-line overrides."""
    from prm.evaluation.run import evaluate

    return evaluate(compose_config(*overrides, name="evaluate"), out_dir=out_dir, overrides=overrides)


def test_evaluate_through_the_service_gives_the_local_tables(
    trained_run, text_service, tmp_path, monkeypatch
):
    from prm.evaluation import run as evaluation

    _, _, app = text_service  # the trained checkpoint, loaded as python -m prm.serve loads it
    grouped = {}
    real = evaluation.best_of_n

    def capture(records, step_scores):
        grouped["service" if "service" in grouped or "local" in grouped else "local"] = step_scores
        return real(records, step_scores)

    monkeypatch.setattr(evaluation, "best_of_n", capture)
    overrides = [f"checkpoint={trained_run}", "device=cpu", "logger=none"]
    local = run_evaluate(overrides, tmp_path / "local")
    with served(app) as url:
        remote = run_evaluate([*overrides, f"server.url={url}"], tmp_path / "remote")
        assert httpx.get(f"{url}/health").json()["requests"] >= 4  # the service did the scoring
    ours, theirs = grouped["local"], grouped["service"]
    assert [[len(c) for c in p] for p in theirs] == [[len(c) for c in p] for p in ours]
    flat_local = torch.cat([c for p in ours for c in p])
    # float32 model, other batch compositions: equal up to float32 rounding (tests/numerics.py: at
    # most ~1e-4 of the scale; a wrong chain or step moves scores by > 1e-2 of it)
    assert_close_at_scale(torch.cat([c for p in theirs for c in p]), flat_local, rel=1e-4)
    assert float(flat_local.std()) > 0
    # the same tables: scores that do not enter the accuracy exactly, accuracies where no pick is
    # within the tolerance of a tie
    assert set(remote["aggregations"]) == set(local["aggregations"])
    assert remote["baselines"] == local["baselines"]  # random, first, majority vote, pass@N: no score
    sure = [name for name, ok in decided(ours, 1e-4 * float(flat_local.abs().max())).items() if ok]
    assert sure  # at least one aggregation is compared
    for name in sure:
        assert remote["aggregations"][name] == local["aggregations"][name], name
    assert (tmp_path / "remote" / "best_of_n.md").read_text().splitlines()[0] == (
        (tmp_path / "local" / "best_of_n.md").read_text().splitlines()[0]
    )


def test_bench_harness_scores_through_the_service(trained_run, text_service, tmp_path, monkeypatch):
    from prm.evaluation import harness

    _, _, app = text_service
    scored = []
    real = harness.ModelRun.score

    def capture(self, kind, records, data):
        grouped, cost = real(self, kind, records, data)
        scored.append(grouped)
        return grouped, cost

    monkeypatch.setattr(harness.ModelRun, "score", capture)
    overrides = [f"checkpoint={trained_run}", "device=cpu", "logger=none", "bench=[best_of_n]"]
    local = run_evaluate(overrides, tmp_path / "local")
    with served(app) as url:
        before = httpx.get(f"{url}/health").json()["requests"]
        remote = run_evaluate([*overrides, f"server.url={url}"], tmp_path / "remote")
        assert httpx.get(f"{url}/health").json()["requests"] - before >= 4  # one request per problem
    ours, theirs = scored
    flat = torch.cat([c for p in ours for c in p])
    # float32 paths of one function: ~1e-4 of the scale at most (tests/numerics.py)
    assert_close_at_scale(torch.cat([c for p in theirs for c in p]), flat, rel=1e-4)
    sure = [name for name, ok in decided(ours, 1e-4 * float(flat.abs().max())).items() if ok]
    assert sure
    (label,) = local["models"]
    ours_result = local["models"][label]["benchmarks"]["best_of_n"]["test"]["result"]
    theirs_result = remote["models"][label]["benchmarks"]["best_of_n"]["test"]["result"]
    assert theirs_result["baselines"] == ours_result["baselines"]
    for name in sure:
        assert theirs_result["aggregations"][name] == ours_result["aggregations"][name], name


def test_best_of_n_script_against_the_service(text_service, tmp_path, capsys):
    import importlib.util

    from prm.data.dataset import flatten_candidates
    from prm.data.formats import read_records
    from prm.evaluation.best_of_n import best_of_n

    prm, cfg, app = text_service
    path = ROOT / "experiments" / "serve_best_of_n.py"
    spec = importlib.util.spec_from_file_location("serve_best_of_n", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (56, 56), "red").save(tmp_path / "images" / "b1.png")  # the fixture's image
    fixture = ROOT / "tests" / "fixtures" / "formats" / "bestofn_test.json"
    with served(app) as url:
        result = script.main([str(fixture), "--data-root", str(tmp_path), "--url", url, "--concurrency", "2"])
    printed = capsys.readouterr().out
    assert "2 problems, 6 candidates" in printed and "| method | kind | accuracy (%) | ties |" in printed
    # the same file scored locally: one problem's candidates share a prefix, as in the service
    problems = read_records(fixture, "auto", data_root=tmp_path)
    flat = score_chains(prm, flatten_candidates(problems), 16, cfg.max_length, "cpu", prefix_sharing=True)
    grouped = [flat[:4], flat[4:]]
    expected = best_of_n(problems, grouped).to_dict()
    assert result["baselines"] == expected["baselines"]
    # float32, other batch compositions: scores within 1e-4 of their scale (tests/numerics.py)
    sure = [n for n, ok in decided(grouped, 1e-4 * float(torch.cat(flat).abs().max())).items() if ok]
    assert sure
    for name in sure:
        assert result["aggregations"][name] == expected["aggregations"][name], name


def test_service_scorer_refuses_another_model(text_service):
    from prm.errors import UserError
    from prm.evaluation.scorer import ServiceScorer

    prm, cfg, _ = text_service
    other = create_app(sharpened_prm("qwen2_vl", "token"), cfg, "cpu")  # a Qwen2-VL model, not the Qwen2 one
    with TestClient(other) as test_client:
        scorer = ServiceScorer("http://testserver", http=test_client)
        with pytest.raises(UserError, match="serves"):
            scorer.check_model(prm)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["server.url=localhost:8000"], "expected http://host:port"),
        (["server.url=http://127.0.0.1:8000", "server.concurrency=0"], "server.concurrency"),
        (["server.url=http://127.0.0.1:8000", "compare=[a]"], "serves one model"),
    ],
)
def test_server_settings_are_checked(overrides, message):
    from prm.config import ConfigError, validate_evaluate_config

    cfg = compose_config("checkpoint=run", *overrides, name="evaluate")
    with pytest.raises(ConfigError, match=message):
        validate_evaluate_config(cfg)


# --------------------------------------------------------------------------- load with bad requests


@functools.cache
def load_test_module():
    """experiments/benchmarks/serve_load.py as a module (loaded once)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "serve_load", ROOT / "experiments" / "benchmarks" / "serve_load.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_load_with_bad_requests_mixed_in(text_service):
    """serve_load's load run: 8 concurrent requests at a time, one bad in every 3; every good one
    gets its chains' one-at-a-time scores, every bad one its 4xx naming the field; the server is
    alive and holds nothing at the end."""
    load = load_test_module()
    _, cfg, _ = text_service
    settings = cfg.copy()
    settings.limits.max_body_bytes, settings.limits.max_candidates = 20_000, 6
    prm = sharpened_prm("qwen2", "token")  # float64: scores comparable to FLOAT64_PATHS
    app = create_app(prm, settings, "cpu")
    goods = load.requests_for(12, 4, images=False)
    bads = load.bad_requests(6, 20_000)
    traffic = load.mixed(goods, bads, every=3)  # 12 good, 6 bad: bads[0..5]
    assert sum(isinstance(item, tuple) for item in traffic) == 6
    good_at = [i for i, item in enumerate(traffic) if isinstance(item, dict)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one chain per call: tiny ops, which 2 threads on a busy CPU slow 30x
    try:
        expected = {
            index: [score_chains(prm, [c], 1, settings.max_length, "cpu")[0] for c in load.chains_of(body)]
            for index, body in zip(good_at, goods)
        }
    finally:
        torch.set_num_threads(threads)
    assert float(torch.cat([t for ts in expected.values() for t in ts]).std()) > 0.01
    with served(app) as url:
        outcome = asyncio.run(load.run_load(url, traffic, 8, expected, rel=FLOAT64_PATHS))
        health = httpx.get(f"{url}/health").json()
        # negative controls: a score off by 0.01 and a bad request expecting another field are caught
        wrong = {good_at[0]: [t + 0.01 for t in expected[good_at[0]]]}
        misnamed = [goods[0], (bads[1][0], 422, "candidates")]
        caught = asyncio.run(load.run_load(url, misnamed, 2, {0: wrong[good_at[0]]}, rel=FLOAT64_PATHS))
    assert outcome.problems == []
    assert (outcome.good, outcome.bad) == (12, 6)
    assert len(caught.problems) == 2, caught.problems
    assert health["status"] == "ok" and health["queued_chains"] == 0 and health["temporary_images"] == 0
    assert health["chains"] == 12 * 4  # every good chain scored once (before the controls), no bad one


# --------------------------------------------------------------------------- the command line


def free_port() -> int:
    return load_test_module().free_port()


@pytest.mark.slow
def test_python_m_prm_serve_serves_and_shuts_down(trained_run, tmp_path):
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "prm.serve",
        f"checkpoint={trained_run}",
        f"port={port}",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'serve'}",
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with PRMClient(url) as remote:
            result = remote.score(QUESTION, CANDIDATES)
            assert [len(c["step_scores"]) for c in result["candidates"]] == [3, 3, 1, 4]
            with pytest.raises(PRMServiceError):
                remote.score(QUESTION, [["a"]], aggregations=["nope"])
            assert remote.health()["status"] == "ok"
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    # uvicorn finishes its shutdown, then re-raises the SIGTERM it caught (exit status -15)
    assert process.returncode in (0, -15), output
    assert "Application shutdown complete" in output


def test_graceful_shutdown_finishes_the_request_in_flight(text_service):
    import uvicorn

    prm, cfg, _ = text_service
    app = create_app(prm, cfg, "cpu")
    scorer = app.state.scorer
    real = scorer.score_fn
    started = threading.Event()

    def slow(chains):
        started.set()
        time.sleep(0.5)
        return real(chains)

    scorer.score_fn = slow
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        answer = {}

        def send():
            body = {"question": "q", "candidates": [{"steps": ["a", "b"]}]}
            answer["response"] = httpx.post(f"http://127.0.0.1:{port}/v1/score", json=body, timeout=20)

        sender = threading.Thread(target=send)
        sender.start()
        assert started.wait(10)
        server.should_exit = True  # what SIGTERM does: stop accepting, finish what is in flight
        sender.join(20)
    finally:
        server.should_exit = True
        thread.join(20)
    assert answer["response"].status_code == 200
    assert len(answer["response"].json()["candidates"][0]["step_scores"]) == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "checkpoint is not set: give checkpoint=<run dir or checkpoint folder>"),
        (["backbone=hf_causal_lm"], "backbone.path is not set: python -m prm.serve backbone="),
        (["checkpoint=run", "aggregations=[min,best]"], "aggregations[1]='best': expected one of"),
        (["checkpoint=run", "openrlhf.aggregation=best"], "openrlhf.aggregation='best': expected one of"),
        (["checkpoint=run", "port=70000"], "port=70000: expected an integer in [0, 65535]"),
    ],
)
def test_serve_config_checks_name_the_key(overrides, message):
    from prm.config import ConfigError, validate_serve_config
    from tests.conftest import compose_config

    with pytest.raises(ConfigError) as error:
        validate_serve_config(compose_config(*overrides, name="serve"))
    assert message in str(error.value)
