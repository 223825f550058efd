"""Data generation: binary search, label agreement with the simulated truth, resume, shards, judges,
and the OpenAI-compatible backend against loopback servers (one that works, one that fails, one
that hangs)."""

import filecmp
import json
import logging
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import compose_config

from prm.data.readers import SeedProblem, read_mmprm, read_mmprm_seeds, read_native
from prm.generate.client import ChatClient, ServerError
from prm.generate.judge import Judge, LLMJudge, RuleJudge
from prm.generate.policy import OpenAIPolicy, SimulatedPolicy, extract_answer
from prm.generate.run import demo_seeds, grow_trees, in_shard, write_training_files
from prm.generate.search import MonteCarloLabeller, OmegaPRM, locate_first_error, node_value


@pytest.mark.parametrize("length", [1, 2, 7, 64, 100])
def test_binary_search_finds_the_first_wrong_step_in_log_estimates(length):
    for first_wrong in range(length):
        calls = []

        def value_of(m):
            calls.append(m)  # noqa: B023 (used within this iteration)
            return 1.0 if m <= first_wrong else 0.0  # noqa: B023 (prefixes before the error can still succeed)

        assert locate_first_error(value_of, length) == first_wrong
        assert len(calls) <= math.ceil(math.log2(length)) if length > 1 else not calls


def test_binary_search_stops_when_the_budget_is_spent():
    assert locate_first_error(lambda m: 1.0, 64, can_spend=lambda: False) is None


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds")
    return read_mmprm_seeds(demo_seeds(out, 12), data_root=out)


def agreement(trees, policy, seeds):
    by_id = {seed.id: seed for seed in seeds}
    pairs = [
        (node_value(node) > 0, policy.truth(by_id[tree["seed"]["id"]], node["steps"]))
        for tree in trees
        for node in tree["nodes"][1:]
        if node_value(node) is not None
    ]
    return sum(a == b for a, b in pairs) / len(pairs), len(pairs)


@pytest.mark.parametrize("search", [OmegaPRM(rollouts=8, rollout_budget=120), MonteCarloLabeller(rollouts=8)])
def test_generated_labels_agree_with_the_simulated_truth(seeds, search):
    policy = SimulatedPolicy(error_rate=0.15, seed=1)
    trees = []
    for seed in seeds:
        policy.reseed(seed.id)
        trees.append(search.search(seed, policy, Judge("rule")))
    share, labelled = agreement(trees, policy, seeds)
    print(f"{type(search).__name__}: {labelled} labelled prefixes, agreement with the truth {share:.3f}")
    assert labelled > 30 and share > 0.9
    assert sum(tree["rollouts"] for tree in trees) == policy.calls
    if isinstance(search, OmegaPRM):  # a wrong rollout was searched and a value-0 prefix found
        assert any(node_value(n) == 0 for tree in trees for n in tree["nodes"])


def test_resume_after_an_interrupted_run_produces_the_same_files(seeds, tmp_path):
    search, judge = OmegaPRM(rollouts=8, rollout_budget=80), Judge("rule")
    full = tmp_path / "full"
    grow_trees(seeds, search, SimulatedPolicy(seed=2), judge, full)
    write_training_files(full, seed=0)

    class Crash(RuntimeError):
        pass

    class Interrupted(SimulatedPolicy):  # dies in the middle of the 6th seed
        def reseed(self, key):
            self.started = getattr(self, "started", 0) + 1
            super().reseed(key)

        def rollouts(self, seed, prefix, n):
            if self.started == 6:
                raise Crash
            return super().rollouts(seed, prefix, n)

    resumed = tmp_path / "resumed"
    with pytest.raises(Crash):
        grow_trees(seeds, search, Interrupted(seed=2), judge, resumed)
    assert len(list((resumed / "trees").glob("*.json"))) == 5
    counts = grow_trees(seeds, search, SimulatedPolicy(seed=2), judge, resumed)
    assert counts["skipped"] == 5 and counts["searched"] == 7
    write_training_files(resumed, seed=0)
    comparison = filecmp.dircmp(full / "trees", resumed / "trees")
    assert not comparison.diff_files and not comparison.left_only and not comparison.right_only
    for name in ("train.jsonl", "train_mmprm.jsonl"):
        assert (full / name).read_bytes() == (resumed / name).read_bytes()


def test_training_files_are_balanced_and_readable(seeds, tmp_path):
    grow_trees(
        seeds, OmegaPRM(rollouts=8, rollout_budget=120), SimulatedPolicy(seed=3), Judge("rule"), tmp_path
    )
    counts = write_training_files(tmp_path, paths_per_seed=4, seed=0)
    chains = read_native(tmp_path / "train.jsonl")
    assert len(chains) == counts["chains"] > 0
    assert abs(counts["positive"] - counts["negative"]) <= counts["chains"] // 2
    # The seed images lie outside the output folder: their paths are absolute, refused by default.
    exported = read_mmprm(tmp_path / "train_mmprm.jsonl", allow_outside_paths=True)
    # MM-PRM: one label per chunk; native: the chunk's last step carries it, its other steps none
    assert ["\n".join(c.steps) for c in exported] == ["\n".join(c.steps) for c in chains]
    assert [c.labels for c in exported] == [[x for x in c.labels if x is not None] for c in chains]
    assert any(None in c.labels for c in chains)


def test_shards_split_the_seeds_disjointly(seeds):
    shards = [{seed.id for seed in seeds if in_shard(seed, k, 3)} for k in range(3)]
    assert set().union(*shards) == {seed.id for seed in seeds}
    assert sum(len(s) for s in shards) == len(seeds)
    with pytest.raises(ValueError, match="shard"):
        in_shard(seeds[0], 3, 3)


@pytest.mark.parametrize(
    "answer, reference, verdict",
    [
        ("12", "12.0", True),
        ("1,234", "1234", True),
        ("3/4", "0.75", True),
        ("\\frac{3}{4}", "0.75", True),
        ("40%", "0.4", True),
        ("13", "12", False),
        ("(B)", "B", True),
        ("c.", "B", False),
        ("The answer is 7.", "7", True),
        ("Paris", "paris", True),
        ("Lyon", "Paris", False),
        ("a triangle with equal sides", "equilateral triangle of side two", None),
        ("seven", "7", None),
        (None, "7", False),
    ],
)
def test_rule_judge(answer, reference, verdict):
    assert RuleJudge()(answer, reference) is verdict


def test_judge_modes_fall_back_to_the_llm_only_when_undecided():
    class FakeLLM:
        calls = 0

        def __call__(self, answer, reference, question=""):
            FakeLLM.calls += 1
            return True

    judge = Judge("rule_then_llm", llm=FakeLLM())
    assert judge("12", "12") and not judge("13", "12") and judge("seven", "7")
    assert FakeLLM.calls == 1 and judge.counts == {"rule": 2, "llm": 1, "undecided": 0}
    assert Judge("rule")("seven", "7") is False  # undecided counts as wrong
    with pytest.raises(ValueError, match="needs an LLM"):
        Judge("llm")


def test_extract_answer():
    assert extract_answer(["2 + 2 = 4.", "Final answer: 4"]) == "4"
    assert extract_answer(["So the answer is (C)."]) == "(C)"  # lenient: prose counts for a policy
    assert extract_answer(["Final answer: 3", "so \\boxed{4}"]) == "3"
    assert extract_answer(["no answer here"]) is None


class SimulatedServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible /chat/completions endpoint backed by the simulated policy."""

    policy = None
    seeds: dict = {}
    behaviour = "ok"  # ok | fail_twice | hang
    failures = 0
    seen_keys: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        cls = type(self)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls.last_body = body
        cls.seen_keys.append(self.headers.get("Authorization"))
        if cls.behaviour == "hang":
            time.sleep(1.0)
        if cls.behaviour == "fail_twice" and cls.failures < 2:
            cls.failures += 1
            self.send_response(503)
            self.end_headers()
            return
        content = body["messages"][-1]["content"]
        text = (
            next(part["text"] for part in content if part["type"] == "text")
            if isinstance(content, list)
            else content
        )
        assert isinstance(content, list) and content[0]["image_url"]["url"].startswith(
            "data:image/png;base64,"
        )
        question = next(q for q in cls.seeds if q in text)
        prefix = text.split("stops:\n", 1)[1].splitlines() if "stops:\n" in text else []
        rollouts = cls.policy.rollouts(cls.seeds[question], prefix, body.get("n", 1))
        reply = {
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": "\n".join(r.steps)}}
                for i, r in enumerate(rollouts)
            ]
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server(seeds):
    SimulatedServer.policy = SimulatedPolicy(error_rate=0.15, seed=4)
    SimulatedServer.seeds = {seed.question: seed for seed in seeds}
    SimulatedServer.behaviour, SimulatedServer.failures, SimulatedServer.seen_keys = "ok", 0, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SimulatedServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def test_openai_policy_over_loopback_labels_like_the_simulated_one(seeds, server, monkeypatch, caplog):
    monkeypatch.setenv("TEST_PRM_KEY", "sk-secret-123")
    seeds = seeds[:6]
    client = ChatClient(server, model="simulated", api_key_env="TEST_PRM_KEY", timeout=5, retries=1)
    policy = OpenAIPolicy(client)
    unique = {seed.question: seed for seed in seeds}
    with caplog.at_level(logging.DEBUG):
        trees = [
            OmegaPRM(rollouts=8, rollout_budget=120).search(seed, policy, Judge("rule"))
            for seed in unique.values()
        ]
    share, labelled = agreement(trees, SimulatedServer.policy, list(unique.values()))
    assert labelled > 5 and share > 0.85
    assert set(SimulatedServer.seen_keys) == {"Bearer sk-secret-123"}
    assert "sk-secret-123" not in caplog.text


def test_client_retries_a_failing_server_then_succeeds(seeds, server, caplog):
    SimulatedServer.behaviour = "fail_twice"
    client = ChatClient(server, model="simulated", api_key_env=None, timeout=5, retries=3)
    with caplog.at_level(logging.WARNING):
        rollouts = OpenAIPolicy(client).rollouts(seeds[0], [], 2)
    assert len(rollouts) == 2 and client.requests == 3 and "HTTP 503" in caplog.text


def test_client_gives_up_on_a_hanging_server_with_a_clear_error(seeds, server):
    SimulatedServer.behaviour = "hang"
    client = ChatClient(server, model="simulated", api_key_env=None, timeout=0.2, retries=1)
    with pytest.raises(ServerError, match="after 2 attempts"):
        client.chat([{"role": "user", "content": "hi"}])
    assert client.requests == 2


class JudgeServer(BaseHTTPRequestHandler):
    """A Yes/No judge endpoint: Yes exactly when the candidate answer is "7"; records concurrency."""

    active = peak = 0
    lock = threading.Lock()
    bodies: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        cls = type(self)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with cls.lock:
            cls.active += 1
            cls.peak = max(cls.peak, cls.active)
            cls.bodies.append(body)
        time.sleep(0.1)
        with cls.lock:
            cls.active -= 1
        verdict = "Yes" if "Candidate answer: 7\n" in body["messages"][0]["content"] else "No"
        data = json.dumps(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": verdict}}]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_llm_judge_sends_undecided_answers_concurrently_within_the_limit():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), JudgeServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = ChatClient(
            f"http://127.0.0.1:{httpd.server_address[1]}/v1",
            model="judge",
            api_key_env=None,
            max_concurrency=2,
        )
        judge = Judge("rule_then_llm", llm=LLMJudge(client))
        answers = ["7", "seven", "sept", "sieben", "siete", "seven!", None]
        verdicts = judge.many(answers, "7", "How many?")
    finally:
        httpd.shutdown()
    # "7" and None are decided by the rules; five words go to the LLM, at most two at a time
    assert verdicts == [True, False, False, False, False, False, False]
    assert judge.counts == {"rule": 2, "llm": 5, "undecided": 0}
    assert client.requests == 5 and JudgeServer.peak == 2
    assert all(
        b["max_tokens"] == 3 and b["temperature"] == 0.0 and b["model"] == "judge" for b in JudgeServer.bodies
    )


def test_client_passes_non_standard_sampling_in_the_body(seeds, server):
    client = ChatClient(server, model="simulated", api_key_env=None, timeout=5, retries=0)
    policy = OpenAIPolicy(client, top_k=20, max_tokens=64)
    assert len(policy.rollouts(seeds[0], [], 3)) == 3
    assert SimulatedServer.last_body["top_k"] == 20 and SimulatedServer.last_body["n"] == 3
    assert SimulatedServer.last_body["max_tokens"] == 64 and SimulatedServer.seen_keys == ["Bearer EMPTY"]


@pytest.mark.parametrize(
    "group, options",
    [
        ("policy", ["simulated", "transformers", "openai"]),
        ("judge", ["rule", "llm", "rule_then_llm"]),
        ("search", ["omegaprm", "mc"]),
    ],
)
def test_generate_config_groups_compose(group, options):
    for option in options:
        cfg = compose_config(f"{group}={option}", name="generate")
        assert cfg[group]["_target_"].startswith("prm.generate.")


def test_seed_problem_reader_round_trip(tmp_path):
    path = demo_seeds(tmp_path, 3)
    seeds = read_mmprm_seeds(path, data_root=tmp_path)
    assert len(seeds) == 3 and all(isinstance(s, SeedProblem) and Path(s.images[0]).exists() for s in seeds)
    policy = SimulatedPolicy(error_rate=0.0)
    assert all(policy.sample(seed).answer == seed.correct_answer for seed in seeds)  # reads the image right
