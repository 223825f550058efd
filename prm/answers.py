r"""Final answers, written once: reading the answer a solution commits to, a voting key for it, and
deciding whether two answers are the same.

Used by the data readers (the final answer of a chain), best-of-N's majority vote, the demo
benchmark's checker, the generation policies and the rule judge.

- :func:`extract_answer`: the answer a solution states ("Final answer: X", "Answer: X", also with
  markdown, list, quote or emoji decoration; else the last ``\boxed{X}``; with ``lenient=True``
  also "the answer is X").
- :func:`answer_key`: a string key that equal answers share ("$1,000$", "1000.0", "\boxed{1000}"
  -> "1000"; "(B)", "b." -> "b"), for grouping votes (:func:`vote_keys` pools equivalent keys).
- :func:`split_answers`: the answers a text lists ("2, 3", "x=2 or x=3", "(A) and (C)").
- :func:`answers_match`: is an answer equivalent to a reference? True, False, or None (undecided).

Rules of :func:`answers_match`:

1. **Several answers.** A text lists several answers when, outside brackets and ``$...$``, it
   separates at least two parts with ``,``, ``;``, "and" or "or" (also ``\text{ and }``), and
   every part is itself an answer (a choice letter, or mathematics that math-verify parses):
   "2, 3", "x=2 or x=3", "\boxed{2}, \boxed{3}", "(A) and (C)", "$2$ and $3$". Not a list: a
   thousands separator ("1,000": a comma followed by exactly three digits), anything inside
   brackets ("(1, 2)", "\{2, 3\}", "[0, 1)"), a text holding an inequality ("x > 1 and x < 5",
   a condition rather than a list), parts that are words ("salt and pepper"). When the reference
   or the answer lists several answers, the two must give **the same set of answers**: every
   answer of the candidate equals some answer of the reference and every answer of the reference
   equals some answer of the candidate, in any order (each pair decided by the rules below). A
   candidate that gives one of them ("3" for "2, 3") or hedges between several ("2 or 3" for "3")
   is wrong. A single set written in braces ("\{3, 2\}") counts as its elements; another single
   bracketed object (a pair or interval "(1, 2)") is one answer, so it is wrong against a list
   ("1, 2"). Words against a list ("two and three" for "2, 3") are undecided.
2. **Choice letters** ("(B)", "B.", "answer: b") compare as letters; a letter followed by its
   option text ("(C) 12", "C. 12") matches that letter alone ("C").
3. **Two numbers** (integers, decimals, fractions, percentages, scientific notation ``1e-9`` or
   ``6.02 \times 10^{23}``, roots, pi) are equal when (a) they are the same number; or (b) they
   are not both integers or fractions (those compare exactly: a count of 1000001 is not 1000000)
   and differ by at most ``tolerance`` relative to the larger magnitude,
   ``|a - b| <= tolerance * max(|a|, |b|)`` (the relative test of Python's ``math.isclose``), so
   zero equals only zero and 1e-9 differs from 2e-9; or (c) one is a decimal written with at least
   six significant digits and the other, rounded half away from zero to the same decimal places,
   equals it ("0.166667" for 1/6). An infinity equals only itself. ``p%`` stands for ``p/100``
   and also matches ``p`` itself (a percentage reference written without its sign), as in
   math-verify. A leading ``+`` is dropped ("+5" is 5). Words or a unit after the number ("13
   apples", "42 cm") are ignored when only one side has them ("13 apples" for "13"); when both
   have different ones, two known units ("42 cm", "42 m") make the answers different (False, and
   "42 meters" is "42 m") and other words ("42 apples", "42 oranges") make them undecided (None).
   This numeric check replaces math-verify's verdict on two numbers: math-verify
   compares numbers after rounding to six decimal places, which makes 1e-9 equal 2e-9.
4. **Other mathematics** (LaTeX, ``\boxed{}``, expressions ``1+x^2`` = ``x^2+1``, sets,
   intervals, equations ``x = 3`` against ``3``) is decided by Hugging Face's ``math-verify``
   (symbolic and numeric equivalence through SymPy), ``verify(gold=reference, target=answer)``;
   when it says equal, the numbers inside (set elements, interval ends, right-hand sides of
   ``x = ...``) must also pass rule 3, so ``\{10^{-9}\}`` is not ``\{2 \cdot 10^{-9}\}``.
5. **Mathematics against words** ("7" against "seven") is undecided (None).
6. **Strings** otherwise: lower case, punctuation and ``\text{}`` / ``\boxed{}`` / ``$`` wrappers
   removed; equal is True, different is False for references of at most three words and None for
   longer free-text references, where a paraphrase is likely.
"""

from __future__ import annotations

import functools
import math
import re
import signal
import threading
from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

# Decoration allowed before "Answer": markdown (#, *, -, +, >, |, ~), bullets, arrows and emoji:
# any character that is not a letter, digit, underscore, space, or one that starts math or prose
# (a backtick is decoration: "`Answer: 42`").
_DECORATION = r"[^\w\s$\\()\[\]{}\"'.,;:!?=<]"
# An answer line: "Answer: X", "Final answer: X", "**Final answer:** X", "### Final Answer: X",
# "- Answer: X", "> Answer: X", "✅ Answer: X", "1. Answer: X", "__Answer__: X", "Answer：X".
ANSWER_LINE = re.compile(
    rf"^(?:[ \t]|{_DECORATION})*(?:\d+[.)][ \t]+(?:[ \t]|{_DECORATION})*)?(?:_{{1,2}})?(?:the[ \t]+)?"
    r"(?P<final>final[ \t]+)?answer(?:[ \t]*[*_]{1,2})?[ \t]*[:\uff1a](?P<value>.*)$",
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
# Between two \boxed{} of one list, on one line: separators, connectives, spaces, "$", \quad and
# a variable's "x =" ("x = \boxed{2} or x = \boxed{3}").
_BOX_LIST_GAP = re.compile(
    r"(?:[ \t$,;]|\\q?quad\b|\band\b|\bor\b|\\text\{\s*(?:and|or)\s*\}|\b[A-Za-z]\s*=)*", re.IGNORECASE
)

# Mathematical normalisation before math-verify parses a text.
_SCIENTIFIC = re.compile(r"(?<![\w.\\])(\d+\.?\d*|\.\d+)[eE]([+-]?\d{1,3})(?![\w.])")  # 1e-9, 6.02E23
_DIGIT_GROUP_SPACE = re.compile(r"(?<=\d)(?:\\[,;:! ]|~|[\u2009\u202f])(?=\d{3}(?!\d))")  # 1\,000
_UNICODE_MATH = str.maketrans(
    {"\u2212": "-", "\u00d7": r" \times ", "\u00b7": r" \cdot ", "\u00f7": r" \div "}
)
_CONNECTIVE_TEXT = re.compile(r"\\(?:text|textrm|mathrm|textnormal|mbox)\s*\{\s*(and|or)\s*\}", re.IGNORECASE)
_CONNECTIVE = re.compile(r"\s+(?:and|or)\s+", re.IGNORECASE)
_LIST_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)(?!,\d)")
_INEQUALITY = re.compile(r"[<>\u2264\u2265\u2260]|\\(?:leq?|geq?|lt|gt|neq?|leqslant|geqslant)(?![A-Za-z])")
_MATH_BOXED = re.compile(r"^(?:\$\$?|\\\(|\\\[)?\s*\\boxed\{")  # "\boxed{", "$\boxed{", "\(\boxed{"
_WRITTEN_DECIMAL = re.compile(r"^[+-]?(?:\d+\.\d*|\.\d+)$")
_LEADING_PLUS = re.compile(r"^\+\s*(?=[\d.])")  # "+5" is 5
# A choice letter followed by its option text: "(C) 12", "C. 12", "C) 12".
_CHOICE_WITH_TEXT = re.compile(r"^(?:\(([A-Ha-h])\)|([A-H])[.)])\s*\S")
# Words or a unit after a number or mathematics without words: "42 cm", "13 apples", "5\text{ m}".
_SUFFIX = re.compile(r"^(?P<math>.*?)\s+(?P<words>[A-Za-z]+(?:\s+[A-Za-z]+)*)\.?$")
_TEXT_COMMAND = re.compile(r"\\(?:text|textrm|mathrm|textnormal|mbox)\s*\{([^{}]*)\}")
_UNITS = {  # alias -> unit, for rule 3's "different units are different answers"
    **dict.fromkeys(["mm", "millimeter", "millimeters", "millimetre", "millimetres"], "mm"),
    **dict.fromkeys(["cm", "centimeter", "centimeters", "centimetre", "centimetres"], "cm"),
    **dict.fromkeys(["m", "meter", "meters", "metre", "metres"], "m"),
    **dict.fromkeys(["km", "kilometer", "kilometers", "kilometre", "kilometres"], "km"),
    **dict.fromkeys(["mg", "milligram", "milligrams"], "mg"),
    **dict.fromkeys(["g", "gram", "grams"], "g"),
    **dict.fromkeys(["kg", "kilogram", "kilograms"], "kg"),
    **dict.fromkeys(["ms", "millisecond", "milliseconds"], "ms"),
    **dict.fromkeys(["s", "sec", "secs", "second", "seconds"], "s"),
    **dict.fromkeys(["min", "mins", "minute", "minutes"], "min"),
    **dict.fromkeys(["h", "hr", "hrs", "hour", "hours"], "h"),
    **dict.fromkeys(["day", "days"], "day"),
    **dict.fromkeys(["ml", "milliliter", "milliliters", "millilitre", "millilitres"], "ml"),
    **dict.fromkeys(["l", "liter", "liters", "litre", "litres"], "l"),
    **dict.fromkeys(["in", "inch", "inches"], "in"),
    **dict.fromkeys(["ft", "foot", "feet"], "ft"),
    **dict.fromkeys(["mi", "mile", "miles"], "mi"),
    **dict.fromkeys(["deg", "degree", "degrees"], "deg"),
    **dict.fromkeys(["rad", "radian", "radians"], "rad"),
    **dict.fromkeys(["cent", "cents"], "cent"),
    **dict.fromkeys(["dollar", "dollars"], "dollar"),
}
_SIGNIFICANT_DIGITS_FOR_ROUNDING = 6  # rule 3 (c): a decimal this precise matches what rounds to it


def extract_answer(text: str | Sequence[str], lenient: bool = False) -> str | None:
    r"""The answer a solution commits to, or None when it states none.

    ``text``: the solution, or its steps (joined by newlines). Rule: the last answer line gives the text after
    its colon, or the next non-empty line when nothing follows the colon. An answer line is a line whose first
    word is ``Answer`` or ``Final answer`` (any case, optionally "The"), followed by ``:`` (or a full-width
    colon), possibly after decoration: markdown headings and emphasis (``### Final Answer: 42``, ``**Final
    answer:** 42``, ``__Answer__: 42``), list and quote markers (``- Answer: 42``, ``1. Answer: 42``, ``>
    Answer: 42``), emoji or bullets (``✅ Answer: 42``) and backticks (``\`Answer: 42\```). Without such a
    line, the content of the last ``\boxed{...}``, or of the last run of boxes on one line separated only by
    commas, "and"/"or", ``$``, spaces and a variable's ``x =`` (``\boxed{2}, \boxed{3}`` and ``x = \boxed{2}
    or x = \boxed{3}`` give ``2, 3``); without one and with ``lenient``, the text after the last "answer is"
    (a trailing period dropped). The last statement wins because a model that restates its answer commits to
    the restatement. From the value, surrounding whitespace, emphasis markers (``*``, ``_``, backticks:
    ``**42**`` -> ``42``) and a value that is one ``\boxed{}`` (``$\boxed{42}$`` -> ``42``) are removed;
    nothing else is normalised (matching is :func:`answers_match`'s job).
    """
    if not isinstance(text, str):
        text = "\n".join(text)
    lines = list(ANSWER_LINE.finditer(text))
    if lines:
        last = lines[-1]
        value = _undecorate(last.group("value"))
        if not value:
            following = [line.strip() for line in text[last.end() :].splitlines() if line.strip()]
            value = _undecorate(following[0]) if following else ""
        return value or None
    boxed = _last_boxed_list(text)
    if boxed is not None or not lenient:
        return boxed
    stated = list(_ANSWER_IS.finditer(text))
    if stated:
        value = stated[-1].group("value").strip().strip("*").rstrip(".").strip()
        return value or None
    return None


def _undecorate(value: str) -> str:
    """An answer line's value without whitespace, emphasis markers and one outer ``\\boxed{}``."""
    value = value.strip()
    period = ""
    if value.endswith(".") and value[:-1].rstrip().endswith(("*", "_", "`")):  # "**42**."
        value, period = value[:-1], "."
    value = value.strip(" \t*_`")
    if not value:
        return ""
    if _MATH_BOXED.match(value):
        value = _unwrap(value)
    return value + period


def _closing_brace(text: str, open_index: int) -> int | None:
    """Index of the ``}`` that closes the ``{`` at ``open_index`` (braces balanced), or None."""
    depth = 0
    for position in range(open_index, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return position
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces balanced), or None (none, unclosed or empty)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    end = _closing_brace(text, start + len("\\boxed"))
    return (text[start + len("\\boxed{") : end].strip() or None) if end is not None else None


def _last_boxed_list(text: str) -> str | None:
    """The content of the last ``\\boxed{}``, or of the last run of boxes on one line that only
    separators join (``,``, ``;``, "and", "or", ``$``, spaces, ``\\quad``, ``x =``), joined with
    ", "; None as :func:`last_boxed`."""
    start = text.rfind("\\boxed{")
    if start < 0 or last_boxed(text) is None:
        return None
    end = _closing_brace(text, start + len("\\boxed"))
    contents = [text[start + len("\\boxed{") : end].strip()]
    while True:
        previous = text.rfind("\\boxed{", 0, start)
        if previous < 0:
            break
        previous_end = _closing_brace(text, previous + len("\\boxed"))
        if (
            previous_end is None
            or previous_end >= start
            or not _BOX_LIST_GAP.fullmatch(text[previous_end + 1 : start])
        ):
            break
        content = text[previous + len("\\boxed{") : previous_end].strip()
        if not content:
            break
        contents.insert(0, content)
        start = previous
    return ", ".join(contents)


def answer_key(answer: str | None) -> str | None:
    """A voting key for a final answer, so that "$1,000$", "1000.0" and "\\boxed{1000}" agree.

    Lower case; ``$``, an outer ``\\boxed{}``, ``\\text{}`` wrappers, whitespace and a trailing
    period removed; choice letters "(B)", "B)", "b." become "b"; decimal numbers get one form
    ("0.50" -> "0.5", "1,000" -> "1000", "1e-3" -> "0.001"). None for a missing or blank answer.
    A key only groups votes; equivalences it misses (``\\frac{1}{2}`` and 0.5) are
    :func:`answers_match`'s, which :func:`vote_keys` consults.
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

    Answers with the same :func:`answer_key` share it. Pooling does not depend on the order of
    ``answers``: the distinct keys are taken in sorted order, each represented by the smallest raw
    answer giving it; a key joins the first earlier group whose representative
    :func:`answers_match` calls equivalent to its own, else it starts a group (so
    ``\\frac{1}{2}``, ``50%`` and ``5e-1`` vote with ``0.5``, and ``3, 2`` with ``2, 3``). Since
    equivalence is not transitive (``50%`` matches ``0.5`` and ``50``; tolerances chain), an
    answer pools only with a group's representative, never through a third answer. The group of
    a key depends on all the distinct keys present, so ``vote_keys(answers[:n])`` may differ from
    ``vote_keys(answers)[:n]``; both are valid votes. Cost: one comparison per pair of distinct
    keys (cached).
    """
    keys = [answer_key(a) for a in answers]
    representative: dict[str, str] = {}  # answer key -> its smallest raw answer
    for raw, key in zip(answers, keys):
        if key is not None and (key not in representative or str(raw) < representative[key]):
            representative[key] = str(raw)
    groups: list[str] = []  # group keys, in sorted order
    group: dict[str, str] = {}  # answer key -> group key
    for key in sorted(representative):
        raw = representative[key]
        target = next((g for g in groups if answers_match(raw, representative[g]) is True), None)
        if target is None:
            groups.append(key)
            target = key
        group[key] = target
    return [None if key is None else group[key] for key in keys]


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


def _unwrap(text: str) -> str:
    """``text`` without outer ``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]`` and ``\\boxed{...}``
    wrappers that span all of it (repeatedly: ``$\\boxed{2, 3}$`` -> ``2, 3``)."""
    while True:
        text = text.strip()
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            inner = text[len(left) : -len(right)]
            if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
                if left not in inner and right not in inner:
                    text = inner
                    break
        else:
            if text.startswith("\\boxed{") and _closing_brace(text, len("\\boxed")) == len(text) - 1:
                text = text[len("\\boxed{") : -1]
            else:
                return text


def _decimal_from_scientific(match: re.Match) -> str:
    """``1e-9`` -> ``0.000000001``; always with a point (``1e10`` -> ``10000000000.0``), so that a
    number in scientific notation is a decimal (rule 3 b), never an exact integer."""
    text = format(Decimal(f"{match.group(1)}e{match.group(2)}"), "f")
    return text if "." in text else f"{text}.0"


def _prepare(text: str) -> str:
    """Text as math-verify should see it: answer prefix and outer wrappers removed, Unicode minus,
    times, dot and division signs written in LaTeX, ``\\%`` as ``%`` (math-verify drops ``\\%``),
    digit groups joined (``1\\,000``), scientific notation as a decimal (math-verify reads the
    ``e`` of ``1e-9`` as Euler's number inside LaTeX)."""
    text = _unwrap(strip_answer(text)).translate(_UNICODE_MATH).replace("\\%", "%")
    text = _LEADING_PLUS.sub("", text)
    return _SCIENTIFIC.sub(_decimal_from_scientific, _DIGIT_GROUP_SPACE.sub("", text))


@functools.lru_cache(maxsize=65536)
def parse_math(text: str) -> tuple:
    """math-verify's parse of an answer: (SymPy object, source string), or () when it is not math.

    The text goes through :func:`_prepare` first. Text with LaTeX delimiters or ``\\boxed{}`` is
    parsed as is. Bare text with no word of two letters or more ("1+x^2", "\\frac{3}{4}",
    "x = 3") is parsed as LaTeX math (wrapped in ``$``); other text ("40%", "13 apples") by
    math-verify's plain-expression extraction. Words alone ("Paris", "seven") give ().
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    text = _prepare(text)
    if not text:
        return ()
    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    if not _DELIMITED.search(text) and not _PLAIN_NUMBER.match(text) and not _WORD.search(text):
        if "%" not in text:
            text = f"${text}$"
    parsed = parse(text, extraction_config=configs, parsing_timeout=_timeout())
    return tuple(parsed) if len(parsed) >= 1 and not isinstance(parsed[0], str) else ()


def _is_answer(part: str) -> bool:
    return choice_letter(part) is not None or bool(parse_math(part))


@functools.lru_cache(maxsize=65536)
def _split(text: str) -> tuple[str, ...]:
    whole = _unwrap(strip_answer(text))
    body = _CONNECTIVE_TEXT.sub(r" \1 ", whole)
    if _INEQUALITY.search(body):
        return (text,)
    thousands = {
        m.start() + i for m in _LIST_THOUSANDS.finditer(body) for i, c in enumerate(m.group()) if c == ","
    }
    parts, depth, in_math, start, position = [], 0, False, 0, 0
    while position < len(body):
        char = body[position]
        if char == "\\" and position + 1 < len(body):
            following = body[position + 1]
            if following in "{([":
                depth += 1
            elif following in "})]":
                depth = max(depth - 1, 0)
            position += 2 if not following.isalpha() else 1  # \, \; \$ \{ are one token
            continue
        if char == "$":
            in_math = not in_math
        elif char in "{([":
            depth += 1
        elif char in "})]":
            depth = max(depth - 1, 0)
        elif depth == 0 and not in_math:
            if char in ",;" and position not in thousands:
                parts.append(body[start:position])
                start = position + 1
            elif char.isspace():
                connective = _CONNECTIVE.match(body, position)
                if connective:
                    parts.append(body[start:position])
                    start = position = connective.end()
                    continue
        position += 1
    parts.append(body[start:])
    parts = [part.strip().rstrip(".").strip() for part in parts]
    parts = [part for part in parts if part]
    if len(parts) < 2 or not all(_is_answer(part) for part in parts):
        return (text,)
    return tuple(part.replace(",", "") if _LIST_THOUSANDS.fullmatch(part) else part for part in parts)


def split_answers(text: str) -> list[str]:
    """The answers ``text`` lists, in order: ``["2", "3"]`` for "2, 3", "x=2 or x=3" gives
    ``["x=2", "x=3"]``, "\\boxed{2}, \\boxed{3}" gives ``["\\boxed{2}", "\\boxed{3}"]``;
    ``[text]`` when it is one answer. The rule (separators, what is not a list) is rule 1 of the
    module docstring. An "(the) (final) answer (is)" prefix and outer ``$``/``\\boxed{}`` are
    removed before splitting; a one-answer result is ``text`` unchanged."""
    return list(_split(text))


def _is_number(expr) -> bool:
    import sympy

    return isinstance(expr, sympy.Expr) and bool(expr.is_number)


def _percent_of(expr):
    """``p`` for math-verify's percentage ``p * UnevaluatedExpr(1/100)``, else None."""
    import sympy

    if isinstance(expr, sympy.Mul) and len(expr.args) == 2:
        if expr.args[1] == sympy.UnevaluatedExpr(sympy.Rational(1, 100)):
            return expr.args[0]
    return None


def _written_decimal(expr, source: str | None) -> Decimal | None:
    """The decimal an answer was written as ("0.166667"), or None (not a plain decimal)."""
    import sympy

    if source is not None:
        text = source.strip().strip("$").replace("{,}", "").replace(",", "").replace(" ", "").rstrip("%")
        if _WRITTEN_DECIMAL.match(text):
            return Decimal(text)
    if isinstance(expr, sympy.Float):  # a decimal inside a set or interval: its shortest form
        return Decimal(repr(float(expr)))
    return None


def _values(expr, source: str | None) -> list[tuple]:
    """The values a parsed number stands for: ``[(value, exact, decimal)]``; a percentage ``p%``
    gives ``p/100`` and ``p``. ``exact``: an integer or fraction (compared exactly); ``decimal``:
    the written decimal (rule 3 c), else None. Written decimals become exact rationals."""
    import sympy

    percent = _percent_of(expr)
    base = percent if percent is not None else expr
    decimal = _written_decimal(base, source)
    if decimal is not None:
        base = sympy.Rational(str(decimal))
    exact = decimal is None and isinstance(base, sympy.Rational)
    if percent is None:
        return [(base, exact, decimal)]
    return [(base / 100, exact, None), (base, exact, decimal)]


def _rounds_to(decimal: Decimal | None, value) -> bool:
    """Rule 3 (c): ``decimal`` has at least six significant digits and ``value`` rounds to it."""
    import sympy

    if decimal is None or len(decimal.as_tuple().digits) < _SIGNIFICANT_DIGITS_FOR_ROUNDING:
        return False
    evaluated = sympy.N(value, 50)
    if not evaluated.is_real or not evaluated.is_finite:
        return False
    other = Decimal(str(evaluated))
    return other.quantize(Decimal(1).scaleb(decimal.as_tuple().exponent), rounding=ROUND_HALF_UP) == decimal


def _same_number(a: tuple, b: tuple, tolerance) -> bool:
    import sympy

    (x, x_exact, x_decimal), (y, y_exact, y_decimal) = a, b
    if x == y:
        return True
    if not (x.is_finite and y.is_finite):
        return False
    difference = sympy.N(sympy.Abs(x - y), 50)
    if difference == 0:
        return True
    if _rounds_to(x_decimal, y) or _rounds_to(y_decimal, x):
        return True
    if x_exact and y_exact:
        return False
    return bool(difference <= tolerance * sympy.N(sympy.Max(sympy.Abs(x), sympy.Abs(y)), 50))


def _numbers_equal(x, y, tolerance, x_source: str | None = None, y_source: str | None = None) -> bool:
    """Rule 3 on two parsed numbers (any of their percentage readings)."""
    try:
        return any(_same_number(a, b, tolerance) for a in _values(x, x_source) for b in _values(y, y_source))
    except (TypeError, ValueError, ArithmeticError):
        return False


def _consistent(x, y, tolerance) -> bool:
    """After math-verify called ``x`` and ``y`` equal: do the numbers inside agree under rule 3?"""
    import sympy

    if _is_number(x) and _is_number(y):
        return _numbers_equal(x, y, tolerance)
    x_eq, y_eq = isinstance(x, sympy.Eq), isinstance(y, sympy.Eq)
    if x_eq and y_eq:
        return _consistent(x.lhs, y.lhs, tolerance) and _consistent(x.rhs, y.rhs, tolerance)
    if x_eq and isinstance(x.lhs, sympy.Symbol):
        return _consistent(x.rhs, y, tolerance)
    if y_eq and isinstance(y.lhs, sympy.Symbol):
        return _consistent(x, y.rhs, tolerance)
    if isinstance(x, sympy.Interval) and isinstance(y, sympy.Interval):
        return _consistent(x.start, y.start, tolerance) and _consistent(x.end, y.end, tolerance)
    containers = (sympy.FiniteSet, sympy.Tuple, list, tuple)
    if isinstance(x, containers) and isinstance(y, containers):
        return all(any(_consistent(a, b, tolerance) for b in y) for a in x) and all(
            any(_consistent(a, b, tolerance) for a in x) for b in y
        )
    return True


def _match_parsed(pa: tuple, pr: tuple, tolerance) -> bool:
    """Rules 3 and 4 on two parses (:func:`parse_math`, or a one-element tuple for a set element)."""
    x, y = pa[0], pr[0]
    if _is_number(x) and _is_number(y):
        return _numbers_equal(x, y, tolerance, *(p[1] if len(p) > 1 else None for p in (pa, pr)))
    from math_verify import verify

    if not verify(list(pr), list(pa), timeout_seconds=_timeout()):
        return False
    return _consistent(x, y, tolerance)


def _normalise_text(text: str) -> str:
    text = strip_answer(text).strip("$").strip()
    boxed = _BOXED.match(text)
    if boxed:
        text = boxed.group(1)
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s.-]", "", _TEXT.sub(r"\1", text).lower())).strip()


def _choice_with_text(text: str) -> str | None:
    """The letter of a choice written with its option text ("(C) 12", "C. 12" -> "C"), else None."""
    match = _CHOICE_WITH_TEXT.match(strip_answer(text))
    return (match.group(1) or match.group(2)).upper() if match else None


def _suffix(text: str) -> str:
    """The words after a number or word-free mathematics, lower case ("42 cm" -> "cm", "13 apples"
    -> "13" is "apples"); "" when there are none ("42", "x = 3", "seven")."""
    text = _TEXT_COMMAND.sub(r" \1 ", _unwrap(strip_answer(text))).replace("$", " ").strip()
    match = _SUFFIX.match(text)
    if not match or not match.group("math").strip():
        return ""
    if re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", match.group("math"))):
        return ""  # the part before the words holds words or variables: not a number with a unit
    return " ".join(match.group("words").lower().split())


def _suffixes_differ(answer: str, reference: str) -> bool | None:
    """Rule 3 on units: False when both answers carry the same words (or none on one side), True
    for two different units ("42 cm", "42 m"), None for other different words ("42 apples",
    "42 oranges")."""
    a, r = _suffix(answer), _suffix(reference)
    if not a or not r:
        return False
    ua, ur = _UNITS.get(a), _UNITS.get(r)
    if ua is not None and ur is not None:
        return ua != ur
    if a == r or a.rstrip("s") == r.rstrip("s"):  # "apple" and "apples"
        return False
    return None


def _match_one(answer: str, reference: str, tolerance) -> bool | None:
    """Rules 2 to 6 for one answer against one reference answer."""
    a, r = choice_letter(answer), choice_letter(reference)
    if a is not None and r is not None:
        return a == r
    if a is not None or r is not None:  # a letter against a letter with its option text: "C", "(C) 12"
        other = _choice_with_text(reference if a is not None else answer)
        if other is not None:
            return (a or r) == other
    pa, pr = parse_math(answer), parse_math(reference)
    if pa and pr:
        differ = _suffixes_differ(answer, reference)
        if differ is not False:
            return None if differ is None else False
        return _match_parsed(pa, pr, tolerance)
    if bool(pa) != bool(pr):
        return None
    na, nr = _normalise_text(answer), _normalise_text(reference)
    if na and na == nr:
        return True
    return None if len(nr.split()) > 3 else False


def _same_set(answers: Sequence, references: Sequence, match: Callable) -> bool | None:
    """Rule 1: True when every answer matches some reference and every reference some answer; False
    when one of them is matched by none (every comparison False); None otherwise."""
    table = [[match(a, r) for r in references] for a in answers]

    def verdict(row: list) -> bool | None:
        return True if True in row else (None if None in row else False)

    verdicts = [verdict(row) for row in table] + [verdict(list(column)) for column in zip(*table)]
    if all(v is True for v in verdicts):
        return True
    return False if False in verdicts else None


def _match_several(answer: str, reference: str, tolerance) -> bool | None:
    """Rule 1 when at least one side lists several answers."""
    import sympy

    answers, references = split_answers(answer), split_answers(reference)
    if len(answers) > 1 and len(references) > 1:
        return _same_set(answers, references, lambda a, r: _match_one(a, r, tolerance))
    answer_is_single = len(answers) == 1
    single, listed = (answer, references) if answer_is_single else (reference, answers)
    parsed = parse_math(single)
    if not parsed:
        return False if choice_letter(single) is not None else None
    if not isinstance(parsed[0], sympy.FiniteSet):
        # One answer against a list: wrong, also for a bracketed pair or interval against the bare
        # list of its entries ("(1, 2)" against "1, 2": one ordered answer against two answers).
        return False
    elements = [(element,) for element in parsed[0].args]
    parts = [parse_math(part) for part in listed]
    if not all(parts):
        return None

    def match(a: tuple, r: tuple) -> bool:
        return _match_parsed(a, r, tolerance)

    return _same_set(elements, parts, match) if answer_is_single else _same_set(parts, elements, match)


@functools.lru_cache(maxsize=65536)
def answers_match(answer: str | None, reference: str, tolerance: float = 1e-6) -> bool | None:
    """Is ``answer`` equivalent to ``reference``? True, False, or None when the rules cannot say.

    A missing or blank answer is wrong. Otherwise the rules of the module docstring, in order:
    several answers (same set, order-free), choice letters, numbers (relative ``tolerance``, exact
    for two integers or fractions, six-significant-digit rounding), other mathematics
    (math-verify, numbers inside cross-checked), mathematics against words (None), strings.

    ``tolerance``: relative, ``|a - b| <= tolerance * max(|a|, |b|)``; a finite number >= 0 (0:
    numbers must be equal), else ``ValueError``.
    """
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"answers_match: tolerance must be a finite number >= 0, got {tolerance!r}")
    if answer is None or not str(answer).strip():
        return False
    import sympy

    relative = sympy.Rational(repr(float(tolerance)))
    if len(split_answers(answer)) > 1 or len(split_answers(reference)) > 1:
        return _match_several(answer, reference, relative)
    return _match_one(answer, reference, relative)


def is_correct(answer: str | None, reference: str) -> bool:
    """:func:`answers_match` with undecided counted as wrong (for checkers that must say yes or no)."""
    return answers_match(answer, reference) is True
