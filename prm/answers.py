"""Final answers, written once: reading the answer a solution commits to, a voting key for it, and
deciding whether two answers are the same.

Used by the data readers (the final answer of a chain), best-of-N's majority vote, the demo
benchmark's checker, the generation policies and the rule judge.

- :func:`extract_answer`: the answer a solution states ("Final answer: X", "Answer: X", the last
  ``\\boxed{X}``; with ``lenient=True`` also "the answer is X").
- :func:`answer_key`: a string key that equal answers share ("$1,000$", "1000.0", "\\boxed{1000}"
  -> "1000"; "(B)", "b." -> "b"), for grouping votes.
- :func:`answers_match`: is an answer equivalent to a reference? Mathematical answers (numbers,
  fractions, percentages, LaTeX, ``\\boxed{}``, sets, intervals, equations) are decided by Hugging
  Face's ``math-verify`` (symbolic and numeric equivalence through SymPy); choice letters and
  everything math-verify cannot parse fall back to a normalised string comparison, which says
  "undecided" (``None``) rather than guess on long free-text answers.
"""

from __future__ import annotations

import functools
import re
import signal
import threading
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

# An answer line: "Answer: X", "Final answer: X", "**Final answer:** X", "## Answer: X".
ANSWER_LINE = re.compile(
    r"^[ \t]*(?:[#*]+[ \t]*)?(?P<final>final[ \t]+)?answer[ \t]*(?:\*\*)?[ \t]*:(?P<value>.*)$",
    re.IGNORECASE | re.MULTILINE,
)
# Prose: "So the answer is (C).", "The final answer is 7".
_ANSWER_IS = re.compile(r"answer\s+is\s*[:=]?\s*(?P<value>.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_ANSWER_PREFIX = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is)?\s*[:=]?\s*", re.IGNORECASE)
_BOXED = re.compile(r"^\\boxed\{(.*)\}$")
_TEXT = re.compile(r"\\text\{([^{}]*)\}")
_CHOICE = re.compile(r"^\(?([a-z])[).:]?$")
_CHOICE_LETTER = re.compile(r"^\(?([A-Ha-h])\)?[.):]?$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d*)?$")
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?%?$", re.IGNORECASE)
_DELIMITED = re.compile(r"\$|\\\(|\\\[|\\boxed")
_WORD = re.compile(r"(?<!\\)\b[A-Za-z]{2,}")  # a word of two letters or more, not a LaTeX command


def extract_answer(text: str | Sequence[str], lenient: bool = False) -> str | None:
    """The answer a solution commits to, or None when it states none.

    ``text``: the solution, or its steps (joined by newlines). Rule: the last line that starts with
    ``Answer:`` or ``Final answer:`` (any case, optional markdown ``#`` / ``**``) gives the text after
    the colon, or the next non-empty line when nothing follows the colon; without such a line, the
    content of the last ``\\boxed{...}``; without one and with ``lenient``, the text after the last
    "answer is" (a trailing period dropped). The last statement wins because a model that restates
    its answer commits to the restatement. Surrounding whitespace and ``*`` are stripped; nothing
    else is normalised (matching is :func:`answers_match`'s job).
    """
    if not isinstance(text, str):
        text = "\n".join(text)
    lines = list(ANSWER_LINE.finditer(text))
    if lines:
        last = lines[-1]
        value = last.group("value").strip().strip("*").strip()
        if not value:
            following = [line.strip() for line in text[last.end() :].splitlines() if line.strip()]
            value = following[0].strip("*").strip() if following else ""
        return value or None
    boxed = last_boxed(text)
    if boxed is not None or not lenient:
        return boxed
    stated = list(_ANSWER_IS.finditer(text))
    if stated:
        value = stated[-1].group("value").strip().strip("*").rstrip(".").strip()
        return value or None
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces balanced), or None (none, unclosed or empty)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for position in range(begin, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            if depth == 0:
                return text[begin:position].strip() or None
            depth -= 1
    return None


def answer_key(answer: str | None) -> str | None:
    """A voting key for a final answer, so that "$1,000$", "1000.0" and "\\boxed{1000}" agree.

    Lower case; ``$``, an outer ``\\boxed{}``, ``\\text{}`` wrappers, whitespace and a trailing
    period removed; choice letters "(B)", "B)", "b." become "b"; decimal numbers get one form
    ("0.50" -> "0.5", "1,000" -> "1000"). None for a missing or blank answer. A key only groups
    votes; equivalences it misses (``\\frac{1}{2}`` and 0.5) are :func:`answers_match`'s.
    """
    if answer is None:
        return None
    text = answer.strip().replace("$", "").strip()
    boxed = _BOXED.match(text)
    if boxed:
        text = boxed.group(1)
    text = _TEXT.sub(r"\1", text)
    text = re.sub(r"\s+", "", text.lower()).rstrip(".")
    choice = _CHOICE.match(text)
    if choice:
        return choice.group(1)
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    try:
        number = Decimal(text)
    except InvalidOperation:
        return text or None
    if not number.is_finite():
        return text
    return format(number.normalize(), "f") if number != 0 else "0"


def vote_keys(answers: Sequence[str | None]) -> list[str | None]:
    """One voting key per answer, equal for answers that should pool their votes; None: no vote.

    Answers with the same :func:`answer_key` share it; a key group whose first answer
    :func:`answers_match` calls equivalent to the first answer of an earlier group joins that group
    (so ``\\frac{1}{2}`` votes with ``0.5``). Groups are represented by their first answer, so the
    keys of ``answers[:n]`` are the same for every prefix length ``n``. Cost: one comparison per pair
    of distinct keys (cached).
    """
    first: dict[str, str] = {}  # group key -> the group's first raw answer
    group: dict[str, str] = {}  # answer key -> group key
    keys: list[str | None] = []
    for raw, key in zip(answers, (answer_key(a) for a in answers)):
        if key is None:
            keys.append(None)
            continue
        if key not in group:
            target = next((g for g, rep in first.items() if answers_match(raw, rep) is True), None)
            if target is None:
                first[key] = raw
                target = key
            group[key] = target
        keys.append(group[key])
    return keys


def strip_answer(text: str) -> str:
    """``text`` without an "(the) (final) answer (is):" prefix, surrounding space and a trailing period."""
    return _ANSWER_PREFIX.sub("", str(text).strip()).strip().rstrip(".").strip()


def choice_letter(text: str) -> str | None:
    """The letter of a multiple-choice answer ("(B)", "B.", "b)", "answer: b" -> "B"), else None."""
    match = _CHOICE_LETTER.match(strip_answer(text))
    return match.group(1).upper() if match else None


def _timeout() -> int | None:
    """math-verify's time limit per parse/compare: 5 s, or none where its alarm cannot be used.

    math-verify times out with ``signal.alarm``, which works only in the main thread and, when it
    finishes, cancels any alarm already pending (a test runner's timeout, a caller's watchdog); so
    no limit is set outside the main thread or while another alarm is pending.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "getitimer"):
        return None
    return None if signal.getitimer(signal.ITIMER_REAL)[0] > 0 else 5


@functools.lru_cache(maxsize=65536)
def parse_math(text: str) -> tuple:
    """math-verify's parse of an answer: (SymPy object, source string), or () when it is not math.

    Text with LaTeX delimiters or ``\\boxed{}`` is parsed as is. Bare text with no word of two
    letters or more ("1+x^2", "\\frac{3}{4}", "x = 3") is parsed as LaTeX math (wrapped in ``$``);
    other text ("40%", "13 apples") by math-verify's plain-expression extraction. Words alone
    ("Paris", "seven") give ().
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    text = strip_answer(text)
    if not text:
        return ()
    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    if _PLAIN_NUMBER.match(text) and "e" in text.lower() and "%" not in text:  # math-verify misreads 1e-3
        text = format(Decimal(text), "f")
    if not _DELIMITED.search(text) and not _PLAIN_NUMBER.match(text) and not _WORD.search(text):
        if "%" not in text:
            text = f"${text}$"
    parsed = parse(text, extraction_config=configs, parsing_timeout=_timeout())
    return tuple(parsed) if len(parsed) >= 1 and not isinstance(parsed[0], str) else ()


def _normalise_text(text: str) -> str:
    text = strip_answer(text).strip("$").strip()
    boxed = _BOXED.match(text)
    if boxed:
        text = boxed.group(1)
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s.-]", "", _TEXT.sub(r"\1", text).lower())).strip()


@functools.lru_cache(maxsize=65536)
def answers_match(answer: str | None, reference: str, tolerance: float = 1e-6) -> bool | None:
    """Is ``answer`` equivalent to ``reference``? True, False, or None when the rules cannot say.

    Order: a missing or blank answer is wrong; two choice letters compare as letters; two
    mathematical answers (see :func:`parse_math`) are equal when math-verify's ``verify(gold, target)``
    says so, or when both are numbers within ``tolerance`` relative to ``max(1, |reference|)``; a
    mathematical answer against a non-mathematical one ("seven" against "7") is undecided (None);
    otherwise the normalised strings (lower case, punctuation and wrappers removed) are compared:
    equal is True, different is False for references of at most three words and None for longer
    free-text references, where a paraphrase is likely.
    """
    if answer is None or not str(answer).strip():
        return False
    a, r = choice_letter(answer), choice_letter(reference)
    if a is not None and r is not None:
        return a == r
    pa, pr = parse_math(answer), parse_math(reference)
    if pa and pr:
        from math_verify import verify

        if verify(list(pr), list(pa), timeout_seconds=_timeout()):
            return True
        x, y = pa[0], pr[0]
        if getattr(x, "is_number", False) and getattr(y, "is_number", False):
            try:
                return abs(complex(x) - complex(y)) <= tolerance * max(1.0, abs(complex(y)))
            except (TypeError, ValueError):
                return False
        return False
    if bool(pa) != bool(pr):
        return None
    na, nr = _normalise_text(answer), _normalise_text(reference)
    if na and na == nr:
        return True
    return None if len(nr.split()) > 3 else False


def is_correct(answer: str | None, reference: str) -> bool:
    """:func:`answers_match` with undecided counted as wrong (for checkers that must say yes or no)."""
    return answers_match(answer, reference) is True
