"""Load test of the PRM service on loopback: GRPO-shaped traffic against one-at-a-time scoring.

    python experiments/benchmarks/serve_load.py [--family qwen2] [--prompt marker]
        [--images] [--image-side 64] [--levels 1,8,32] [--requests 32] [--group 8] [--rounds 3] [--threads N]
        [--window-ms 5] [--max-batch 256] [--baseline-chains 64]
        [--bad-every K] [--check] [--soak-minutes M] [--soak-concurrency 32] [--rss-every 10]
        [--path DIR --backbone hf_causal_lm]

The model: a tiny random backbone of ``--family`` in the ``--prompt`` format (``marker``, or
``conversation``: the DreamPRM layout, whose long fixed instructions every candidate shares; scores are
meaningless, the cost is real), or with
``--path`` a model folder loaded as ``python -m prm.serve backbone=<--backbone> backbone.path=<DIR>``
loads it (e.g. a ``save_pretrained`` SmolLM2). :func:`prm.serve.app.create_app` serves it under
uvicorn on 127.0.0.1 in this process. Each request is one prompt with ``--group`` completions
(GRPO's group: one question, 2-5 step solutions of different lengths; ``--images``: one image per
prompt of ``--image-side`` pixels a side, sent as a data URL, with a Qwen2-VL backbone).

Throughput (robust to a noisy, shared machine): ``--rounds`` rounds, each measuring at every level of
``--levels`` the service (``--requests`` requests, at most ``level`` in flight, with httpx) between
two measurements of the reference, one-at-a-time scoring of ``--baseline-chains`` of the same
chains (taken evenly from the traffic) on the same model, in-process and without HTTP
(``score_chains`` on one chain at a time: no batching, no shared prefix). The ratio of each service
measurement is taken against the mean of the reference just before and just after it, so a machine
whose speed drifts moves both; the table gives per level the median over rounds of chains/s, of
the ratio, and the p50 / p99 latency over all rounds' requests.

Bad input (``--bad-every K``): every K-th request is one of :func:`bad_requests` (malformed JSON, a
missing or mistyped field, an unknown aggregation, an undecodable image, too many candidates, a body
over the limit): each must get its 4xx naming its field. ``--check``: every good request's scores
are compared with its chains scored one at a time (float32 paths: 1e-4 of the scale, see
tests/numerics.py). After the load the server must answer ``/health``.

Soak (``--soak-minutes M``, not in the tests): traffic at ``--soak-concurrency`` (bad requests mixed
in when ``--bad-every`` is given) for M minutes, printing every ``--rss-every`` seconds the
requests answered and this process's resident memory (``VmRSS``: the server's, and the client's
too with ``--client-in-process``), to show that memory stays flat.

Client: the load comes from a process of its own (spawned once; ``--client-in-process`` sends it
from the server's process instead, where it takes the GIL the server needs, the lower bound of the
first measurements). Client and server still share the machine's cores: on a small machine the
client's work slows the server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import torch  # noqa: E402
import uvicorn  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from PIL import Image  # noqa: E402

import prm  # noqa: E402, F401  (registers the config schemas)
from prm.data.records import LabelledChain  # noqa: E402
from prm.evaluation.scoring import score_chains  # noqa: E402
from prm.serve.__main__ import resolve_policies  # noqa: E402
from prm.serve.app import create_app  # noqa: E402

FLOAT32_PATHS = 1e-4  # float32 paths of one function differ by up to ~1e-4 of the scale (tests/numerics.py)


# --------------------------------------------------------------------------- traffic


def request_image(index: int, side: int) -> Image.Image:
    """The image of request ``index``: ``side`` x ``side`` pixels, a colour of its own."""
    return Image.new("RGB", (side, side), (index * 37 % 256, 90 + index % 50, 160))


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def requests_for(count: int, group: int, images: bool, image_side: int = 64) -> list[dict]:
    """``count`` native requests of ``group`` candidates each (deterministic text; request ``r``'s
    image, with ``images``, is :func:`request_image`)."""
    bodies = []
    for r in range(count):
        question = f"Problem {r}: a farmer has {r + 3} rows of {r % 7 + 2} plants. How many plants?"
        candidates = []
        for c in range(group):
            steps = [f"Row count is {r + 3} and each row holds {r % 7 + 2 + c % 2} plants."]
            steps += [
                f"Step {k}: multiply and check the partial product {k * (c + 1)}." for k in range(c % 4 + 1)
            ]
            steps.append(f"Answer: {(r + 3) * (r % 7 + 2) + c % 3}")
            candidates.append({"steps": steps})
        body = {"question": question, "candidates": candidates, "aggregations": ["min"]}
        if images:
            body["images"] = [data_url(request_image(r, image_side))]
        bodies.append(body)
    return bodies


def chains_of(body: dict, image_paths: list[str] | None = None) -> list[LabelledChain]:
    """The chains of native request ``body`` as :func:`score_chains` takes them (``image_paths``:
    files holding the request's images, for a request that sends them as data URLs)."""
    return [
        LabelledChain(
            id=str(c), question=body["question"], steps=item["steps"], label=1, images=list(image_paths or [])
        )
        for c, item in enumerate(body["candidates"])
    ]


def bad_requests(max_candidates: int, max_body_bytes: int) -> list[tuple[bytes, int, str | None]]:
    """Bad ``POST /v1/score`` bodies, each with the status and the ``field`` the server must answer
    (None: the body as a whole). Sizes come from the server's ``limits``."""
    good = {"question": "q", "candidates": [{"steps": ["a"]}]}

    def body(**changes) -> bytes:
        return json.dumps({**good, **changes}).encode()

    return [
        (b'{"question": "q", "candidates": [', 400, None),  # malformed JSON
        (json.dumps({"candidates": good["candidates"]}).encode(), 422, "question"),
        (body(question=7), 422, "question"),
        (body(candidates=[{"steps": ["a", 3]}]), 422, "candidates[0].steps[1]"),
        (body(candidates=[{"steps": ["a"]}, {"stpes": ["b"]}]), 422, "candidates[1].stpes"),
        (body(aggregations=["min", "best"]), 422, "aggregations[1]"),
        (body(images=["data:image/png;base64,AAAA"]), 422, "images[0]"),  # decodes to no image
        (body(candidates=[{"steps": ["a"]}] * (max_candidates + 1)), 413, "candidates"),
        (body(question="q" * max_body_bytes), 413, None),  # over limits.max_body_bytes
    ]


# --------------------------------------------------------------------------- running


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """uvicorn serving ``app`` on a free loopback port in a thread (a context manager: ``url``)."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)


@dataclass
class Outcome:
    """What one load run saw: seconds, good-request latencies (s), and the problems found (each a
    line: a good request answered wrongly, a bad one answered with another status or field)."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    good: int = 0
    bad: int = 0
    problems: list[str] = field(default_factory=list)


def compare(index: int, result: dict, expected: list[torch.Tensor], rel: float) -> str | None:
    """None when response ``result`` holds the ``expected`` step scores (each candidate's, to ``rel``
    of the largest magnitude of all of them), else a line saying where they differ."""
    got = [candidate["step_scores"] for candidate in result["candidates"]]
    if [len(g) for g in got] != [len(e) for e in expected]:
        return f"request {index}: step counts {[len(g) for g in got]}, expected {[len(e) for e in expected]}"
    want = torch.cat(expected).double()
    have = torch.tensor([v for g in got for v in g], dtype=torch.float64)
    scale = float(want.abs().max())
    worst = float((have - want).abs().max())
    return None if worst <= rel * scale else f"request {index}: scores {worst:.3g} apart (scale {scale:.3g})"


async def run_load(
    url: str,
    traffic: list,
    concurrency: int,
    expected: dict[int, list[torch.Tensor]] | None = None,
    rel: float = FLOAT32_PATHS,
    api_key: str | None = None,
) -> Outcome:
    """Send ``traffic`` (good bodies as dicts, bad ones as ``(bytes, status, field)``) with at most
    ``concurrency`` in flight. Good requests must answer 200 (and, where ``expected`` holds the
    request's index, those step scores); bad ones their status and field."""
    outcome = Outcome()
    semaphore = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits, headers=headers) as client:

        async def one(index: int, item) -> None:
            async with semaphore:
                start = time.perf_counter()
                if isinstance(item, dict):
                    response = await client.post("/v1/score", json=item)
                    outcome.latencies.append(time.perf_counter() - start)
                    outcome.good += 1
                    if response.status_code != 200:
                        outcome.problems.append(
                            f"request {index}: HTTP {response.status_code} {response.text}"
                        )
                    elif expected is not None and index in expected:
                        problem = compare(index, response.json(), expected[index], rel)
                        if problem:
                            outcome.problems.append(problem)
                    return
                body, status, field_name = item
                response = await client.post(
                    "/v1/score", content=body, headers={"content-type": "application/json"}
                )
                outcome.bad += 1
                answer = response.json() if response.headers.get("content-type") == "application/json" else {}
                if response.status_code != status or answer.get("field") != field_name:
                    outcome.problems.append(
                        f"bad request {index}: HTTP {response.status_code} field {answer.get('field')!r}, "
                        f"expected {status} {field_name!r}"
                    )

        start = time.perf_counter()
        await asyncio.gather(*(one(index, item) for index, item in enumerate(traffic)))
        outcome.seconds = time.perf_counter() - start
    return outcome


def load_sync(
    url: str, traffic: list, concurrency: int, expected=None, rel: float = FLOAT32_PATHS
) -> Outcome:
    """:func:`run_load` run to completion (the client process's entry point)."""
    return asyncio.run(run_load(url, traffic, concurrency, expected, rel))


class Client:
    """Where the load comes from: a process of its own (the default; an RL trainer or search script
    calls the service from elsewhere, and a client in the server's process takes the GIL the server's
    request handling and batch worker need), or this process (``in_process``: the lower bound of
    earlier measurements). A context manager; :meth:`load` has :func:`run_load`'s arguments."""

    def __init__(self, url: str, in_process: bool = False):
        self.url, self.in_process = url, in_process
        self.pool = None

    def __enter__(self) -> Client:
        if not self.in_process:
            import concurrent.futures
            import multiprocessing

            context = multiprocessing.get_context("spawn")  # no fork of a process holding CUDA and threads
            self.pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=context)
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def load(self, traffic: list, concurrency: int, expected=None) -> Outcome:
        if self.pool is None:
            return load_sync(self.url, traffic, concurrency, expected)
        return self.pool.submit(load_sync, self.url, traffic, concurrency, expected).result()


def mixed(goods: list[dict], bads: list, every: int | None) -> list:
    """``goods`` with, when ``every`` is given, one of ``bads`` (in turn) after every ``every - 1``."""
    if not every:
        return list(goods)
    traffic, good, bad = [], iter(goods), 0
    for position in range(len(goods) + len(goods) // (every - 1)):
        if (position + 1) % every == 0:
            traffic.append(bads[bad % len(bads)])
            bad += 1
        else:
            traffic.append(next(good))
    return traffic


def one_at_a_time(
    model, chains: list, max_length: int | None, device="cpu", precision: str = "fp32"
) -> float:
    """Chains/s of scoring ``chains`` one per call (no batching, no shared prefix), waiting for the
    device after the last one (CUDA kernels run asynchronously)."""
    start = time.perf_counter()
    for chain in chains:
        score_chains(model, [chain], 1, max_length, device, precision)
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)
    return len(chains) / (time.perf_counter() - start)


def resident_mib() -> float:
    """This process's resident memory now (``VmRSS`` of /proc/self/status), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --------------------------------------------------------------------------- the model


def serve_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("serve", overrides=overrides)
    cfg, _ = resolve_policies(cfg, None)
    return cfg


def build(args) -> tuple:
    """``(model, cfg, name)``: the tiny ``--family`` model or the one at ``--path``."""
    settings = [
        f"batch_window_ms={args.window_ms}",
        f"max_batch={args.max_batch}",
        f"batch_size={args.batch_size}",
        "limits.max_queued_chains=100000",
        f"precision={args.precision}",
    ]
    if args.path:
        from prm.evaluation.run import load_model

        model_settings = [f"backbone={args.backbone}", f"backbone.path={args.path}", f"prompt={args.prompt}"]
        cfg = serve_config([*model_settings, *settings])
        model = load_model(cfg, None, args.device)
        return model, cfg, f"{args.path} ({model.backbone.family})"
    from prm.model.backbones import build_backbone
    from prm.model.prm import ProcessRewardModel

    family = args.family or ("qwen2_vl" if args.images else "qwen2")
    # the tiny processor keeps images of 56 to 112 px a side; larger ones keep their size (448: 256
    # image tokens, as in best_of_n_speed.py)
    pixels = args.image_side * args.image_side
    kwargs = {"min_pixels": pixels, "max_pixels": pixels} if args.images and args.image_side > 112 else {}
    torch.manual_seed(0)
    model = ProcessRewardModel(build_backbone(family, prompt=args.prompt, **kwargs), "token").to(args.device)
    return model, serve_config(["checkpoint=unused", *settings]), f"tiny {family}"


# --------------------------------------------------------------------------- main


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module doc as written, and each option's default in its help line."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter)
    parser.add_argument(
        "--family", default=None, help="tiny backbone family (default qwen2, --images: qwen2_vl)"
    )
    parser.add_argument("--path", default=None, help="a model folder instead of a tiny backbone")
    parser.add_argument("--backbone", default="hf_causal_lm", help="with --path: the conf/backbone option")
    parser.add_argument("--prompt", default="marker", help="prompt format: marker | conversation")
    parser.add_argument("--images", action="store_true")
    parser.add_argument("--image-side", type=int, default=64, help="pixels per image side")
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels, comma-separated")
    parser.add_argument("--requests", type=int, default=32, help="requests per measurement")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one) | cpu | cuda[:k]")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="bf16: the backbone under bf16 autocast, the head and scores fp32",
    )
    parser.add_argument(
        "--client-in-process",
        action="store_true",
        help="send the load from this process (default: a client process of its own)",
    )
    parser.add_argument("--window-ms", type=float, default=5.0)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="chains per forward pass")
    parser.add_argument("--baseline-chains", type=int, default=64, help="chains scored one at a time")
    parser.add_argument("--bad-every", type=int, default=None, help="every K-th request is a bad one")
    parser.add_argument("--check", action="store_true", help="compare good answers with one-at-a-time scores")
    parser.add_argument("--soak-minutes", type=float, default=None)
    parser.add_argument("--soak-concurrency", type=int, default=32)
    parser.add_argument("--rss-every", type=float, default=10.0, help="soak: seconds between RSS lines")
    args = parser.parse_args()
    if args.bad_every is not None and args.bad_every < 2:
        parser.error("--bad-every must be at least 2")
    if args.check and args.precision != "fp32":
        parser.error("--check compares float32 paths (1e-4 of the scale): use it with --precision fp32")
    if args.threads:
        torch.set_num_threads(args.threads)
    from prm.device import pick_device

    args.device = pick_device(args.device)
    model, cfg, name = build(args)
    device, precision = args.device, str(cfg.precision)
    try:
        levels = [int(v) for v in args.levels.split(",")]
    except ValueError:
        parser.error(f"--levels takes comma-separated whole numbers, got {args.levels!r}")
    if not levels or min(levels) < 1:
        parser.error(f"--levels: every level must be at least 1, got {args.levels!r}")
    images = tempfile.TemporaryDirectory(prefix="serve_load_")
    goods = requests_for(args.requests, args.group, args.images, args.image_side)
    paths = []
    for r in range(len(goods)):
        path = Path(images.name) / f"{r}.png"
        if args.images:
            request_image(r, args.image_side).save(path)
        paths.append([str(path)] if args.images else [])
    bads = bad_requests(cfg.limits.max_candidates, cfg.limits.max_body_bytes)
    traffic = mixed(goods, bads, args.bad_every)
    good_index = [i for i, item in enumerate(traffic) if isinstance(item, dict)]
    flat = [chain for r, body in enumerate(goods) for chain in chains_of(body, paths[r])]
    stride = max(len(flat) // args.baseline_chains, 1)
    reference = flat[::stride][: args.baseline_chains]
    expected = None
    if args.check:
        expected = {
            index: [
                score_chains(model, [c], 1, cfg.max_length, device, precision)[0]
                for c in chains_of(body, paths[r])
            ]
            for r, (index, body) in enumerate(zip(good_index, goods))
        }
    app = create_app(model, cfg, device, name)
    print(
        f"# {name}, prompt={args.prompt}"
        f"{f', one {args.image_side}px image per prompt' if args.images else ''}, groups of "
        f"{args.group}, {args.requests} requests per measurement"
        f"{f' (+1 bad in every {args.bad_every})' if args.bad_every else ''}, torch threads "
        f"{torch.get_num_threads()}, batch window {args.window_ms} ms, max_batch {args.max_batch}, "
        f"batch_size {args.batch_size}, {args.rounds} interleaved rounds, client "
        f"{'in the server process' if args.client_in_process else 'in a process of its own'}, "
        f"device {device} "
        f"({torch.cuda.get_device_name(device) if str(device).startswith('cuda') else 'CPU'}), {precision}"
    )
    with Server(app) as server, Client(server.url, args.client_in_process) as client:
        one_at_a_time(model, reference[:4], cfg.max_length, device, precision)  # warm-up of both paths
        client.load(goods[:4], 4)
        rates: dict[int, list[float]] = {level: [] for level in levels}
        ratios: dict[int, list[float]] = {level: [] for level in levels}
        latencies: dict[int, list[float]] = {level: [] for level in levels}
        calls: dict[int, list[int]] = {level: [] for level in levels}
        baselines, problems, bad_seen = [], [], 0
        for round_ in range(args.rounds):
            before = one_at_a_time(model, reference, cfg.max_length, device, precision)
            baselines.append(before)
            for level in levels:
                batches = app.state.scorer.stats.batches
                outcome = client.load(traffic, level, expected)
                after = one_at_a_time(model, reference, cfg.max_length, device, precision)
                baselines.append(after)
                rate = len(goods) * args.group / outcome.seconds
                rates[level].append(rate)
                ratios[level].append(rate / ((before + after) / 2))
                latencies[level].extend(outcome.latencies)
                calls[level].append(app.state.scorer.stats.batches - batches)
                problems += outcome.problems
                bad_seen += outcome.bad
                before = after
            print(
                f"round {round_ + 1}: one-at-a-time {baselines[-1]:.1f} chains/s; service x "
                + ", ".join(f"{ratios[level][-1]:.2f} at c={level}" for level in levels)
            )
        print(
            f"\none-at-a-time scoring (in-process, no HTTP) over {len(reference)} chains: median "
            f"{statistics.median(baselines):.1f} chains/s (min {min(baselines):.1f}, "
            f"max {max(baselines):.1f})\n"
        )
        columns = ["concurrency", "requests/s", "chains/s", "x one-at-a-time (median)", "ratios by round"]
        print("| " + " | ".join([*columns, "p50 ms", "p99 ms", "scoring calls"]) + " |")
        print("|---:|---:|---:|---:|---|---:|---:|---:|")
        for level in levels:
            rate, ratio, seen = (
                statistics.median(rates[level]),
                statistics.median(ratios[level]),
                latencies[level],
            )
            print(
                f"| {level} | {rate / args.group:.1f} | {rate:.1f} | {ratio:.2f}x | "
                f"{', '.join(f'{r:.2f}' for r in ratios[level])} | {1000 * statistics.median(seen):.0f} | "
                f"{1000 * percentile(seen, 0.99):.0f} | {statistics.median(calls[level]):.0f} |"
            )
        if args.bad_every or args.check:
            checked = (
                f"; each good answer's scores expected equal to one-at-a-time to {FLOAT32_PATHS:g} "
                "of the scale"
                if args.check
                else ""
            )
            print(
                f"\nbad requests: {bad_seen} sent, each expected to get its 4xx naming its field{checked}; "
                f"problems (answers not as expected): {len(problems)}"
                + "".join(f"\n  {line}" for line in problems[:20])
            )
        health = httpx.get(f"{server.url}/health", timeout=30)
        print(f"health after the load: HTTP {health.status_code} {health.json()}")
        if args.soak_minutes:
            soak(server.url, client, goods, bads if args.bad_every else [], args)
        if problems:
            raise SystemExit(1)
    images.cleanup()


def soak(url: str, client: Client, goods: list[dict], bads: list, args) -> None:
    """Traffic for ``args.soak_minutes`` minutes, printing requests answered and resident memory."""
    print(
        f"\n# soak: {args.soak_minutes} min at concurrency {args.soak_concurrency}"
        + (f", 1 bad in every {args.bad_every}" if bads else "")
    )
    print("| s | requests | problems | RSS MiB | temporary images |")
    print("|---:|---:|---:|---:|---:|")
    traffic = mixed(goods, bads, args.bad_every) if bads else list(goods)
    start = time.perf_counter()
    last, sent, problems = -args.rss_every, 0, 0
    while time.perf_counter() - start < 60 * args.soak_minutes:
        outcome = client.load(traffic, args.soak_concurrency)
        sent += outcome.good + outcome.bad
        problems += len(outcome.problems)
        elapsed = time.perf_counter() - start
        if elapsed - last >= args.rss_every:
            held = httpx.get(f"{url}/health", timeout=30).json()["temporary_images"]
            print(f"| {elapsed:.0f} | {sent} | {problems} | {resident_mib():.1f} | {held} |", flush=True)
            last = elapsed


if __name__ == "__main__":
    main()
