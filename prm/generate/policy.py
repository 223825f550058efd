"""Policies: models that continue a partial solution. ``rollouts(seed, prefix, n)`` returns ``n``
continuations of the steps ``prefix``, each a list of steps whose last one states the answer.

- :class:`SimulatedPolicy`: the demo benchmark's policy with known errors (for tests and
  benchmarks): it reads the tiles from the seed's image and slips at each remaining step with
  probability ``error_rate``; a continuation of a wrong prefix never reaches the right answer.
- :class:`TransformersPolicy`: a local causal LM (a path, or the tiny offline default), batched
  sampling with temperature / top-p / top-k / max new tokens.
- :class:`OpenAIPolicy`: any OpenAI-compatible server (vLLM, ...) through :class:`ChatClient`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from prm import answers
from prm.data import synthetic
from prm.data.formats.mmprm import SeedProblem

INSTRUCTION = "Solve the problem step by step, one step per line. End with a line 'Final answer: <answer>'."


def extract_answer(steps: Sequence[str]) -> str | None:
    """The answer the steps state: :func:`prm.answers.extract_answer`, lenient ("the answer is X" too)."""
    return answers.extract_answer(steps, lenient=True)


def split_steps(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass
class Rollout:
    steps: list[str]
    answer: str | None


class _Fixed:
    """A stand-in for ``random.Random`` that always picks phrasing ``k`` (or the last one there is)."""

    def __init__(self, k: int):
        self.k = k

    def randrange(self, n: int) -> int:
        return min(self.k, n - 1)


class SimulatedPolicy:
    """Demo policy whose errors are known. ``truth(seed, prefix)``: is the prefix still correct?

    It writes like the demo's policy: any of the step phrasings, and once a step is wrong, later
    text steps go wrong too with probability ``cascade``.
    """

    def __init__(self, error_rate: float = 0.15, cascade: float = 1.0, seed: int = 0):
        if not 0.0 <= error_rate < 1.0:
            raise ValueError("error_rate must be in [0, 1)")
        self.error_rate, self.cascade = error_rate, cascade
        self.base_seed = seed
        self.rng = random.Random(seed)
        self._problems: dict[str, synthetic.Problem] = {}
        self._right: dict[str, list[set[str]]] = {}
        self.calls = 0

    def reseed(self, key: str) -> None:
        """Per-seed random stream, so a resumed run redoes a seed exactly as an uninterrupted one."""
        self.rng = random.Random(f"{self.base_seed}:{key}")

    def problem(self, seed: SeedProblem) -> synthetic.Problem:
        if seed.id not in self._problems:
            self._problems[seed.id] = parse_demo_problem(seed)
        return self._problems[seed.id]

    def truth(self, seed: SeedProblem, prefix: Sequence[str]) -> bool:
        """Is every step of ``prefix`` a right step, in any phrasing?"""
        if seed.id not in self._right:
            variants = [synthetic.solve(self.problem(seed), style=_Fixed(k)).steps for k in range(3)]
            self._right[seed.id] = [set(texts) for texts in zip(*variants)]
        right = self._right[seed.id]
        return len(prefix) <= len(right) and all(step in ok for step, ok in zip(prefix, right))

    def sample(self, seed: SeedProblem) -> Rollout:
        """A whole solution from scratch (the policy's own sample)."""
        return self._continue(seed, [])

    def _continue(self, seed: SeedProblem, prefix: list[str]) -> Rollout:
        problem = self.problem(seed)
        slots = synthetic.solve(problem).slots
        if not self.truth(seed, prefix):  # gone wrong: finish with a wrong answer
            if len(prefix) >= len(slots):
                return Rollout([], extract_answer(prefix))
            wrong = synthetic.solve(
                problem, synthetic.Slip(len(slots) - 1, "answer", self.rng.randrange(1 << 16)), style=self.rng
            )
            return Rollout(wrong.steps[len(prefix) :], str(wrong.answer))
        slip, later = None, []
        for step in range(len(prefix), len(slots)):
            if slip is None and self.rng.random() < self.error_rate:
                slip = synthetic.Slip(step, self.rng.choice(slots[step]), self.rng.randrange(1 << 16))
            elif slip is not None:
                kinds = [k for k in slots[step] if k in synthetic.TEXT_KINDS]
                if kinds and self.rng.random() < self.cascade:
                    later.append(synthetic.Slip(step, self.rng.choice(kinds), self.rng.randrange(1 << 16)))
        solution = synthetic.solve(problem, slip, style=self.rng, later=later)
        if slip is not None and solution.answer == problem.answer:  # compounded back onto the answer
            solution = synthetic.solve(problem, slip, style=self.rng)
        return Rollout(solution.steps[len(prefix) :], str(solution.answer))

    def rollouts(self, seed: SeedProblem, prefix: Sequence[str], n: int) -> list[Rollout]:
        self.calls += n
        return [self._continue(seed, list(prefix)) for _ in range(n)]


def read_tiles(path: str) -> tuple[str, ...]:
    """The demo image's tile colours: the nearest demo colour at each quadrant's centre."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    tiles = []
    for index in range(4):
        x = (index % 2) * width // 2 + width // 4
        y = (index // 2) * height // 2 + height // 4
        pixel = image.getpixel((x, y))
        tiles.append(
            min(synthetic.RGB, key=lambda c: sum((a - b) ** 2 for a, b in zip(synthetic.RGB[c], pixel)))
        )
    return tuple(tiles)


def parse_demo_problem(seed: SeedProblem) -> synthetic.Problem:
    if not seed.images:
        raise ValueError(f"seed {seed.id!r}: the simulated policy needs the demo image")
    tiles = read_tiles(seed.images[0])
    region = re.search(r"tiles in the (.+)\?", seed.question)
    if region:
        return synthetic.Problem(tiles, "sum", region.group(1), 1)
    count = re.search(r"How many tiles are (\w+)\? Multiply that number by (\d)\.", seed.question)
    if count is None:
        raise ValueError(f"seed {seed.id!r}: not a demo benchmark question: {seed.question[:80]!r}")
    return synthetic.Problem(tiles, "count", count.group(1), int(count.group(2)))


class TransformersPolicy:
    """Continuations sampled from a local causal LM (``path``), or the tiny offline Qwen2 by default."""

    def __init__(
        self,
        path: str | None = None,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 50,
        max_new_tokens: int = 256,
        device: str = "cpu",
        seed: int = 0,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

        set_seed(seed)
        if path:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path).to(device)
        else:
            from prm.model.backbones import build_backbone

            backbone = build_backbone("qwen2", seed=seed)
            self.tokenizer, self.model = backbone.tokenizer, backbone.model.to(device)
        self.tokenizer.padding_side = "left"
        self.sampling = dict(
            do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens
        )
        self.device = device
        self.base_seed = seed
        self.calls = 0

    def reseed(self, key: str) -> None:
        """Seed every generator (Python, NumPy, torch) from the seed's key, so a resumed run redoes it."""
        from transformers import set_seed

        set_seed((int(key, 16) ^ self.base_seed) % 2**32)

    def rollouts(self, seed: SeedProblem, prefix: Sequence[str], n: int) -> list[Rollout]:
        import torch

        self.calls += n
        prompt = f"{INSTRUCTION}\n{seed.question}\n" + "".join(f"{step}\n" for step in prefix)
        inputs = self.tokenizer([prompt], return_tensors="pt").to(self.device)
        with torch.no_grad():
            output = self.model.generate(
                **inputs, num_return_sequences=n, pad_token_id=self.tokenizer.eos_token_id, **self.sampling
            )
        texts = self.tokenizer.batch_decode(
            output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        return [Rollout(split_steps(text), extract_answer(split_steps(text))) for text in texts]


class OpenAIPolicy:
    """Continuations from an OpenAI-compatible chat server; the prefix goes in the user turn."""

    def __init__(
        self,
        client,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int | None = None,
        max_tokens: int = 512,
    ):
        self.client = client
        self.sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens)
        self.calls = 0

    def rollouts(self, seed: SeedProblem, prefix: Sequence[str], n: int) -> list[Rollout]:
        from prm.generate.client import user_message

        self.calls += n
        text = f"{INSTRUCTION}\n\n{seed.question}"
        if prefix:
            text += "\n\nContinue this partial solution from where it stops:\n" + "\n".join(prefix)
        replies = self.client.complete([user_message(text, seed.images)], n=n, **self.sampling)
        return [Rollout(split_steps(reply), extract_answer(split_steps(reply))) for reply in replies]
