"""Is a rollout's final answer the reference answer? Rule-based first, an LLM only where rules cannot say.

``RuleJudge`` is :func:`prm.answers.answers_match`: math-verify for mathematical answers (numbers
with a relative tolerance, fractions, percentages, LaTeX), choice letters ("(B)", "B.", "answer: b")
and normalised strings; when the rules cannot compare the two sides it returns ``None``
(undecided) rather than guessing. ``LLMJudge`` asks an OpenAI-compatible chat endpoint for Yes/No.
``Judge`` combines them: ``rule``, ``llm`` or ``rule_then_llm`` (the LLM only for undecided pairs);
undecided at the end counts as wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from prm.answers import answers_match

log = logging.getLogger(__name__)


class RuleJudge:
    """``(answer, reference, question) -> True | False | None``; ``tolerance`` relative, for numbers."""

    def __init__(self, tolerance: float = 1e-6):
        self.tolerance = tolerance

    def __call__(self, answer: str | None, reference: str, question: str = "") -> bool | None:
        return answers_match(answer, reference, self.tolerance)


class LLMJudge:
    """Yes/No from an OpenAI-compatible chat endpoint (see :class:`prm.generate.client.ChatClient`)."""

    PROMPT = (
        "Question: {question}\nReference answer: {reference}\nCandidate answer: {answer}\n"
        "Is the candidate answer equivalent to the reference answer? Reply with Yes or No only."
    )

    def __init__(self, client):
        self.client = client

    def _messages(self, answer: str | None, reference: str, question: str) -> list[dict]:
        content = self.PROMPT.format(question=question, reference=reference, answer=answer)
        return [{"role": "user", "content": content}]

    @staticmethod
    def _verdict(reply: str) -> bool | None:
        word = reply.strip().lower()
        if word.startswith("yes"):
            return True
        if word.startswith("no"):
            return False
        return None

    def __call__(self, answer: str | None, reference: str, question: str = "") -> bool | None:
        return self._verdict(
            self.client.chat(self._messages(answer, reference, question), max_tokens=3, temperature=0.0)
        )

    def many(self, answers: Sequence[str | None], reference: str, question: str = "") -> list[bool | None]:
        """Verdicts for several answers to one question, requested concurrently."""
        conversations = [self._messages(answer, reference, question) for answer in answers]
        replies = self.client.complete_many(conversations, max_tokens=3, temperature=0.0)
        return [self._verdict(texts[0]) for texts in replies]


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
        return self.many([answer], reference, question)[0]

    def many(self, answers: Sequence[str | None], reference: str, question: str = "") -> list[bool]:
        """Verdicts for several answers to one question; the LLM gets the undecided ones in one batch
        (concurrent requests when it has ``many``). Undecided at the end counts as wrong."""
        verdicts: list[bool | None] = [None] * len(answers)
        if self.mode in ("rule", "rule_then_llm"):
            verdicts = [self.rule(answer, reference, question) for answer in answers]
            self.counts["rule"] += sum(v is not None for v in verdicts)
        open_ = [i for i, v in enumerate(verdicts) if v is None]
        if open_ and self.mode in ("llm", "rule_then_llm"):
            asked = [answers[i] for i in open_]
            if hasattr(self.llm, "many"):
                replies = self.llm.many(asked, reference, question)
            else:
                replies = [self.llm(answer, reference, question) for answer in asked]
            for i, verdict in zip(open_, replies):
                verdicts[i] = verdict
            self.counts["llm"] += sum(v is not None for v in replies)
        self.counts["undecided"] += sum(v is None for v in verdicts)
        return [bool(v) for v in verdicts]
