"""Best-of-N scoring speed with and without prefix sharing, and the largest score difference.

    python experiments/benchmarks/best_of_n_speed.py [--n 8] [--problems 12] [--image-side 448]
        [--family qwen2_vl] [--repeats 3] [--device cpu] [--threads 2] [--hidden 64] [--layers 2]

Builds a tiny random backbone of ``--family`` (offline) whose image processor resizes every image
to ``--image-side`` pixels a side (448: 256 image tokens per image for Qwen2-VL / Qwen2.5-VL, whose
tokens are 28 x 28 pixel patches after merging), writes ``--problems`` random images, and makes
``--n`` candidates per problem (3 to 6 steps of one arithmetic sentence each, so candidates differ
in length). Every repeat scores all candidates once per candidate (the unshared path,
:func:`prm.evaluation.scoring.score_chains`) and once with each problem's prefix shared
(:func:`prm.evaluation.scoring.score_chains_shared`), alternately, and prints candidates/s
of each (median over repeats, after a warm-up), their ratio, and the largest difference between the
two paths' step probabilities. The prefix (user turn with the image + question, assistant header)
and continuation lengths are printed too: the possible gain is about
N (P + L) / (P + N L) for a prefix of P tokens and continuations of L, plus the N - 1 image
encodings saved.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from prm.data.dataset import PRMCollator, flatten_candidates  # noqa: E402
from prm.data.readers import read_records  # noqa: E402
from prm.data.records import BestOfNProblem  # noqa: E402
from prm.data.synthetic import build_demo  # noqa: E402
from prm.evaluation.scoring import SharingReport, score_chains, score_chains_shared  # noqa: E402
from prm.model.backbones import build_backbone  # noqa: E402
from prm.model.prm import ProcessRewardModel  # noqa: E402


def demo_problems(n: int, problems: int, image_side: int, folder: Path, seed: int) -> list[BestOfNProblem]:
    """The first ``problems`` best-of-N test problems of the demo benchmark, images ``image_side`` px."""
    files = build_demo(
        folder,
        seed=seed,
        train_per_domain=0,
        meta_size=0,
        test_problems=problems,
        n_candidates=n,
        image_size=image_side,
    )
    return read_records(files.test, "native", data_root=files.image_root)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=8, help="candidates per problem")
    parser.add_argument("--problems", type=int, default=12)
    parser.add_argument("--image-side", type=int, default=448, help="pixels per image side")
    parser.add_argument("--family", default="qwen2_vl", choices=["qwen2_vl", "qwen2_5_vl", "internvl"])
    parser.add_argument("--hidden", type=int, default=64, help="hidden size of the tiny language model")
    parser.add_argument("--layers", type=int, default=2, help="layers of the tiny language model")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="chains per forward pass, both paths (data.eval_batch_size)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pixels = args.image_side * args.image_side
    tiny = {"hidden_size": args.hidden, "num_layers": args.layers, "intermediate_size": 4 * args.hidden}
    kwargs = {}
    if args.family == "internvl":
        tiny["image_size"] = args.image_side
    else:
        kwargs = {"min_pixels": pixels, "max_pixels": pixels}
    backbone = build_backbone(args.family, tiny=tiny, seed=args.seed, **kwargs)
    prm = ProcessRewardModel(backbone, "token").to(args.device).eval()

    with tempfile.TemporaryDirectory() as folder:
        problems = demo_problems(args.n, args.problems, args.image_side, Path(folder), args.seed)
        chains = flatten_candidates(problems)
        collator = PRMCollator(backbone)
        first = collator([{"chain": chains[0], "instance": 0, "domain": 0, "images": chains[0].images}])
        image_tokens = int((first["inputs"]["input_ids"] == _image_token_id(backbone)).sum())
        text = collator([{"chain": c, "instance": 0, "domain": 0, "images": []} for c in chains[: args.n]])
        lengths = text["inputs"]["attention_mask"].sum(1).float()
        full = int(first["inputs"]["attention_mask"].sum())
        print(
            f"backbone {args.family} hidden {args.hidden} x {args.layers} layers, "
            f"{backbone.num_parameters() / 1e6:.2f}M parameters, device {args.device}, "
            f"threads {torch.get_num_threads()}"
        )
        print(
            f"{args.problems} problems x N={args.n}; {image_tokens} image tokens per image; "
            f"chain length {full} tokens (first candidate), text-only candidates "
            f"{lengths.min():.0f}-{lengths.max():.0f} tokens"
        )

        def run(shared: bool):
            start = time.perf_counter()
            report = SharingReport()
            if shared:
                scores = score_chains_shared(prm, chains, args.batch_size, device=args.device, report=report)
            else:
                scores = score_chains(prm, chains, args.batch_size, device=args.device)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return len(chains) / (time.perf_counter() - start), scores, report

        run(False), run(True)  # warm-up
        rates = {False: [], True: []}
        difference = 0.0
        for _ in range(args.repeats):
            rate, plain, _ = run(False)
            rates[False].append(rate)
            rate, shared, report = run(True)
            rates[True].append(rate)
            difference = max(
                difference, max(float((a - b).abs().max()) for a, b in zip(plain, shared) if len(a))
            )
    unshared_rate, shared_rate = statistics.median(rates[False]), statistics.median(rates[True])
    print(
        f"shared prefix: {report.shared_chains} chains of {report.shared_problems} problems, "
        f"{report.unshared_chains} scored whole"
    )
    print(f"| path | candidates/s (median of {args.repeats}) | all repeats |")
    print("|---|---:|---|")
    for name, key in (("per candidate", False), ("shared prefix", True)):
        runs = ", ".join(f"{r:.1f}" for r in rates[key])
        print(f"| {name} | {statistics.median(rates[key]):.1f} | {runs} |")
    paired = statistics.median(s / u for s, u in zip(rates[True], rates[False]))
    print(f"speed-up (shared / per candidate): {shared_rate / unshared_rate:.2f}x of the medians, ", end="")
    print(f"{paired:.2f}x median of the paired repeats")
    print(f"max |step probability difference|: {difference:.2e}")


def _image_token_id(backbone) -> int:
    tokenizer = backbone.tokenizer
    token = getattr(tokenizer, "image_token", None) or getattr(tokenizer, "context_image_token", None)
    return tokenizer.convert_tokens_to_ids(token)


if __name__ == "__main__":
    main()
