"""Is a rollout's final answer the reference answer? Rule-based first, an LLM only where rules cannot say.

``RuleJudge`` compares numbers (with a relative tolerance, fractions and percentages included),
choice letters ("(B)", "B.", "answer: b") and normalised strings; when neither side parses into a
comparable form it returns ``None`` (undecided) rather than guessing. ``LLMJudge`` asks an
OpenAI-compatible chat endpoint for Yes/No. ``Judge`` combines them: ``rule``, ``llm`` or
``rule_then_llm`` (the LLM only for undecided pairs); undecided at the end counts as wrong.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction

log = logging.getLogger(__name__)

NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)(e[-+]?\d+)?$", re.IGNORECASE)
CHOICE = re.compile(r"^\(?([A-Ha-h])\)?[.):]?$")
ANSWER_PREFIX = re.compile(r"^(the\s+)?(final\s+)?answer\s*(is)?\s*[:=]?\s*", re.IGNORECASE)


def _clean(text: str) -> str:
    text = ANSWER_PREFIX.sub("", str(text).strip())
    text = text.strip().strip("$").strip()
    if text.startswith("\\boxed{") and text.endswith("}"):
        text = text[len("\\boxed{") : -1].strip()
    return text.rstrip(".").strip()


def parse_number(text: str) -> float | None:
    """A number from "12", "1,234", "3/4", "-2.5", "40%" (as 0.4), "\\frac{3}{4}"; else None."""
    text = _clean(text).replace(",", "").replace(" ", "")
    frac = re.fullmatch(r"\\d?frac\{(-?\d+)\}\{(-?\d+)\}", text)
    if frac:
        text = f"{frac.group(1)}/{frac.group(2)}"
    percent = text.endswith("%")
    text = text.rstrip("%")
    try:
        if "/" in text:
            value = float(Fraction(text))
        elif NUMBER.match(text):
            value = float(text)
        else:
            return None
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value


def parse_choice(text: str) -> str | None:
    match = CHOICE.match(_clean(text))
    return match.group(1).upper() if match else None


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s.-]", "", _clean(text).lower())).strip()


class RuleJudge:
    def __init__(self, tolerance: float = 1e-6):
        self.tolerance = tolerance

    def __call__(self, answer: str | None, reference: str, question: str = "") -> bool | None:
        if answer is None or not str(answer).strip():
            return False
        a, b = parse_number(answer), parse_number(reference)
        if a is not None and b is not None:
            return abs(a - b) <= self.tolerance * max(1.0, abs(b))
        ca, cb = parse_choice(answer), parse_choice(reference)
        if ca is not None and cb is not None:
            return ca == cb
        if (a is None) != (b is None):
            return None  # a number against words: undecided, not wrong
        na, nb = normalise(answer), normalise(reference)
        if na and na == nb:
            return True
        return None if len(nb.split()) > 3 else False


class LLMJudge:
    """Yes/No from an OpenAI-compatible chat endpoint (see :class:`prm.generate.client.ChatClient`)."""

    PROMPT = (
        "Question: {question}\nReference answer: {reference}\nCandidate answer: {answer}\n"
        "Is the candidate answer equivalent to the reference answer? Reply with Yes or No only."
    )

    def __init__(self, client):
        self.client = client

    def __call__(self, answer: str | None, reference: str, question: str = "") -> bool | None:
        reply = self.client.chat(
            [
                {
                    "role": "user",
                    "content": self.PROMPT.format(question=question, reference=reference, answer=answer),
                }
            ],
            max_tokens=3,
            temperature=0.0,
        )
        word = reply.strip().lower()
        if word.startswith("yes"):
            return True
        if word.startswith("no"):
            return False
        return None


class Judge:
    """``mode``: rule | llm | rule_then_llm. Counts how many answers each part decided."""

    def __init__(self, mode: str = "rule", rule: RuleJudge | None = None, llm: LLMJudge | None = None):
        if mode not in ("rule", "llm", "rule_then_llm"):
            raise ValueError(f"judge mode must be rule, llm or rule_then_llm, got {mode!r}")
        if mode != "rule" and llm is None:
            raise ValueError(f"judge mode {mode!r} needs an LLM judge (judge.llm)")
        self.mode, self.rule, self.llm = mode, rule or RuleJudge(), llm
        self.counts = {"rule": 0, "llm": 0, "undecided": 0}

    def __call__(self, answer: str | None, reference: str, question: str = "") -> bool:
        verdict = None
        if self.mode in ("rule", "rule_then_llm"):
            verdict = self.rule(answer, reference, question)
            if verdict is not None:
                self.counts["rule"] += 1
                return verdict
        if self.mode in ("llm", "rule_then_llm"):
            verdict = self.llm(answer, reference, question)
            if verdict is not None:
                self.counts["llm"] += 1
                return verdict
        self.counts["undecided"] += 1
        return False
