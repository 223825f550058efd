"""Load test of the PRM service on loopback: GRPO-shaped traffic against one-at-a-time scoring.

    python experiments/benchmarks/serve_load.py [--family qwen2] [--images] [--levels 1,4,16,32,64]
        [--requests 64] [--group 8] [--window-ms 5] [--max-batch 256]

A tiny random backbone of ``--family`` (scores are meaningless, the cost is real) is served by
:func:`prm.serve.app.create_app` under uvicorn on 127.0.0.1 in this process. Each request is one
prompt with ``--group`` completions (GRPO's group: the same question, different 2-5 step
solutions; ``--images``: one 64x64 image per prompt, sent as a data URL, with a Qwen2-VL backbone).
At each concurrency level, ``--requests`` requests (at most ``level`` in flight) are sent with httpx
and timed; the table gives requests/s, chains/s and the p50 / p99 latency. The reference is
one-at-a-time scoring of the same chains on the same model, in-process and without HTTP:
``score_chains`` on one chain at a time (no batching, no shared prefix). The run is bounded: levels x
requests requests, each a few hundred tokens.

Caveat: client and server share this process (and its GIL) and the machine's cores, so the service's
figures are a lower bound of what it does with the client elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import socket
import statistics
import sys
import threading
import time
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
from prm.model.backbones import build_backbone  # noqa: E402
from prm.model.prm import ProcessRewardModel  # noqa: E402
from prm.serve.__main__ import resolve_policies  # noqa: E402
from prm.serve.app import create_app  # noqa: E402


def requests_for(count: int, group: int, images: bool) -> list[dict]:
    """``count`` native requests of ``group`` candidates each (deterministic text)."""
    bodies = []
    for r in range(count):
        question = f"Problem {r}: a farmer has {r + 3} rows of {r % 7 + 2} plants. How many plants?"
        candidates = []
        for c in range(group):
            steps = [f"Row count is {r + 3} and each row holds {r % 7 + 2 + c % 2} plants." for _ in range(1)]
            steps += [
                f"Step {k}: multiply and check the partial product {k * (c + 1)}." for k in range(c % 4 + 1)
            ]
            steps.append(f"Answer: {(r + 3) * (r % 7 + 2) + c % 3}")
            candidates.append({"steps": steps})
        body = {"question": question, "candidates": candidates, "aggregations": ["min"]}
        if images:
            picture = Image.new("RGB", (64, 64), (r * 37 % 256, 90, 160))
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            body["images"] = ["data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()]
        bodies.append(body)
    return bodies


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def run_level(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[float]]:
    """Seconds for all ``bodies`` with at most ``concurrency`` in flight, and each latency (s)."""
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    async with httpx.AsyncClient(
        base_url=url, timeout=600, limits=httpx.Limits(max_connections=concurrency)
    ) as client:

        async def one(body):
            async with semaphore:
                start = time.perf_counter()
                response = await client.post("/v1/score", json=body)
                response.raise_for_status()
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(one(body) for body in bodies))
        return time.perf_counter() - start, latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--family", default=None, help="tiny backbone family (default qwen2, --images: qwen2_vl)"
    )
    parser.add_argument("--images", action="store_true")
    parser.add_argument("--levels", default="1,4,16,32,64")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--window-ms", type=float, default=5.0)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--baseline-chains", type=int, default=64, help="chains scored one at a time")
    args = parser.parse_args()
    family = args.family or ("qwen2_vl" if args.images else "qwen2")
    torch.manual_seed(0)
    model = ProcessRewardModel(build_backbone(family), "token")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "serve",
            overrides=[
                "checkpoint=unused",
                f"batch_window_ms={args.window_ms}",
                f"max_batch={args.max_batch}",
                "limits.max_queued_chains=100000",
            ],
        )
    cfg, _ = resolve_policies(cfg, None)
    app = create_app(model, cfg, "cpu", f"tiny {family}")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"

    # one-at-a-time reference: the same kind of chains, each scored alone (no batch, no shared prefix)
    bodies = requests_for(max(args.baseline_chains // args.group, 1), args.group, False)
    image_path = None
    if args.images:
        image_path = ROOT / "outputs" / "serve_load_image.png"
        image_path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (64, 64), (37, 90, 160)).save(image_path)
    chains = [
        LabelledChain(
            id=f"{r}/{c}",
            question=body["question"],
            steps=candidate["steps"],
            label=1,
            images=[str(image_path)] if image_path else [],
        )
        for r, body in enumerate(bodies)
        for c, candidate in enumerate(body["candidates"])
    ]
    score_chains(model, chains[:2], 1, cfg.max_length, "cpu")  # warm-up
    start = time.perf_counter()
    for chain in chains:
        score_chains(model, [chain], 1, cfg.max_length, "cpu")
    alone = len(chains) / (time.perf_counter() - start)
    print(
        f"# tiny {family}{' with one image per prompt' if args.images else ''}, groups of {args.group}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"one-at-a-time scoring (in-process, no HTTP): {alone:.1f} chains/s over {len(chains)} chains\n")
    columns = [
        "concurrency",
        "requests",
        "requests/s",
        "chains/s",
        "x one-at-a-time",
        "p50 ms",
        "p99 ms",
        "calls",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    asyncio.run(run_level(url, requests_for(2, args.group, args.images), 2))  # warm-up
    for level in (int(v) for v in args.levels.split(",")):
        traffic = requests_for(args.requests, args.group, args.images)
        before = app.state.scorer.stats.batches
        seconds, latencies = asyncio.run(run_level(url, traffic, level))
        calls = app.state.scorer.stats.batches - before
        chains_per_s = args.requests * args.group / seconds
        print(
            f"| {level} | {args.requests} | {args.requests / seconds:.1f} | {chains_per_s:.1f} | "
            f"{chains_per_s / alone:.1f}x | {1000 * statistics.median(latencies):.0f} | "
            f"{1000 * percentile(latencies, 0.99):.0f} | {calls} |"
        )
    server.should_exit = True
    thread.join(30)


if __name__ == "__main__":
    main()
