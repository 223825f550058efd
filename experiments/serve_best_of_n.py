"""Best-of-N accuracy from a running PRM service: read a best-of-N file, score it through the service.

    python -m prm.serve checkpoint=<run> &                  # or backbone=... backbone.path=...
    python experiments/serve_best_of_n.py <file> [--format auto] [--data-root DIR]
        [--url http://127.0.0.1:8000] [--api-key KEY] [--concurrency 8]

``<file>``: any best-of-N file a reader of the suite reads (:func:`prm.data.formats.read_records`,
``--format auto`` detects it: the native format, DreamPRM-1.5's test file, ...; image paths resolve
under ``--data-root``). Each problem's candidates go to ``POST /v1/score`` as one request (steps as
the reader split them, images as data URLs, at most the server's ``limits.max_candidates`` per
request), ``--concurrency`` requests in flight so that the server batches them. The step scores are
then aggregated and compared exactly as evaluate.py does (:func:`prm.evaluation.best_of_n.best_of_n`:
every aggregation, PRM-weighted votes, the random / first / majority-vote / pass@N baselines), and
the table printed. The server's length policy applies: a candidate it truncated is counted with the
steps it scored, one it skipped (``too_long=skip``) or one without steps scores as an empty chain
(never picked); the counts are printed. The API key may also come from ``PRM_SERVE_API_KEY``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from prm.data.formats import read_records  # noqa: E402
from prm.data.records import BestOfNProblem  # noqa: E402
from prm.evaluation.best_of_n import best_of_n  # noqa: E402
from prm.evaluation.report import best_of_n_markdown  # noqa: E402
from prm.evaluation.scorer import image_data_url  # noqa: E402
from prm.serve.client import PRMClient  # noqa: E402


def score_problem(client: PRMClient, problem: BestOfNProblem, per_request: int, images: bool):
    """``(step scores per candidate, too_long actions)`` of one problem from the service."""
    urls = [image_data_url(path) for path in problem.images] if images else None
    scores: list[torch.Tensor] = [torch.empty(0)] * len(problem.candidates)
    actions: list[str] = []
    with_steps = [i for i, candidate in enumerate(problem.candidates) if candidate.steps]
    for start in range(0, len(with_steps), per_request):
        part = with_steps[start : start + per_request]
        steps = [list(problem.candidates[i].steps) for i in part]
        answer = client.score(problem.question, steps, images=urls, aggregations=[])
        for index, candidate in zip(part, answer["candidates"], strict=True):
            if candidate["too_long"] is not None:
                actions.append(candidate["too_long"]["action"])
            if candidate["step_scores"] is not None:
                scores[index] = torch.tensor(candidate["step_scores"], dtype=torch.float32)
    return scores, actions


def main(argv: list[str] | None = None) -> dict:
    """Run the script (``argv``: its arguments); returns the best-of-N result as a dict."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("file", help="a best-of-N file in any reader format")
    parser.add_argument("--format", default="auto", help="reader format (auto: detected)")
    parser.add_argument("--data-root", default=None, help="folder the file's image paths resolve under")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=os.environ.get("PRM_SERVE_API_KEY"))
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    args = parser.parse_args(argv)
    options = {"data_root": args.data_root} if args.data_root else {}
    problems = read_records(args.file, args.format, **options)
    if not problems or not all(isinstance(problem, BestOfNProblem) for problem in problems):
        raise SystemExit(f"{args.file}: not a best-of-N file (read as {args.format})")
    with PRMClient(args.url, api_key=args.api_key) as client:
        metadata = client.metadata()
        per_request = int(metadata["limits"]["max_candidates"])
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            answers = list(
                pool.map(
                    lambda p: score_problem(client, p, per_request, metadata["multimodal"]),
                    problems,
                )
            )
        seconds = time.perf_counter() - start
    grouped = [scores for scores, _ in answers]
    actions = [action for _, taken in answers for action in taken]
    result = best_of_n(problems, grouped)
    candidates = sum(len(problem.candidates) for problem in problems)
    print(
        f"{args.file}: {len(problems)} problems, {candidates} candidates scored by {metadata['model']} "
        f"({metadata['family']}, {metadata['head']} head, prompt={metadata['prompt']}) at {args.url} "
        f"in {seconds:.1f} s ({candidates / seconds:.1f} candidates/s); the server's too_long="
        f"{metadata['too_long']} truncated {actions.count('truncated')} and skipped "
        f"{actions.count('skipped')}; {sum(not c.steps for p in problems for c in p.candidates)} "
        "candidates without steps score as empty\n"
    )
    print(best_of_n_markdown(result))
    return result.to_dict()


if __name__ == "__main__":
    main()
