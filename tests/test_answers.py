"""prm.answers: extraction, voting keys, lists of answers, equivalence (math-verify guarded by a
numeric check, and the string fallback), and the demo benchmark's checker and majority vote
unchanged by them.

All numeric verdicts below are decided in SymPy's exact or 50-digit arithmetic (software integer
arithmetic, the same on every CPU and thread count), and every case sits far from the tolerance
boundary (the relative differences are quoted in the reasons), so no verdict depends on rounding."""

import signal
import sys
import threading
from collections import Counter

import pytest

from prm import answers
from prm.answers import (
    answer_key,
    answers_match,
    choice_letter,
    extract_answer,
    is_correct,
    split_answers,
    vote_keys,
)
from prm.data.readers import read_native
from prm.data.synthetic import build_demo
from prm.evaluation.best_of_n import accuracy_vs_n, best_of_n

# --------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, lenient, answer",
    [
        ("Step 1: x\nFinal answer: B", False, "B"),
        ("Final answer: A\n(Note ...)\nFinal answer: C", False, "C"),
        ("## Answer: **B**", False, "B"),
        ("Answer:\n\n 12 \n", False, "12"),
        ("Answer:\n\n **12** \n", False, "12"),
        ("so \\(\\boxed{\\frac{1}{2}}\\).", False, "\\frac{1}{2}"),
        # boxes joined only by "and" / commas are one list of answers; other text between them is not
        ("\\boxed{a{b}c} and \\boxed{d{e}}", False, "a{b}c, d{e}"),
        ("\\boxed{a{b}c} then \\boxed{d{e}}", False, "d{e}"),
        ("x = \\boxed{2}, \\boxed{3}", False, "2, 3"),
        ("$\\boxed{2}$ or $\\boxed{3}$", False, "2, 3"),
        ("\\boxed{1}\n\\boxed{2}", False, "2"),
        ("Answer: 3\nbut also \\boxed{4}", False, "3"),
        ("the answer is 5.", False, None),
        ("the answer is 5.", True, "5"),
        ("First the answer is 4.\nNo, the answer is (C).", True, "(C)"),
        ("\\boxed{unclosed", True, None),
        ("Answer:", True, None),
    ],
)
def test_extract_answer(text, lenient, answer):
    assert extract_answer(text, lenient=lenient) == answer
    assert extract_answer(text.split("\n"), lenient=lenient) == answer  # steps join with newlines


@pytest.mark.parametrize(
    "line",
    [
        "**Final answer:** 42",
        "**Final Answer**: 42",
        "- Answer: 42",
        "* Answer: 42",
        "+ Final answer: 42",
        "1. Answer: 42",
        "> Answer: 42",
        "> **Final answer:** 42",
        "### Final Answer: 42",
        "\u2705 Answer: 42",
        "\U0001f3af **Final answer:** 42",
        "\U0001f449 Answer: 42",
        "\u2022 Answer: 42",
        "Answer: **42**",
        "Answer: `42`",
        "`Answer: 42`",  # a backtick before the label is decoration
        "__Answer__: 42",
        "The final answer: 42",
        "FINAL ANSWER: 42",
        "Answer\uff1a42",
        "**Answer:** $\\boxed{42}$",
        "Answer: \\boxed{42}",
    ],
)
def test_decorated_answer_lines_are_read(line):
    text = f"Step 1: 6 * 7 = 42.\n{line}\n"
    assert extract_answer(text) == "42", line
    assert answers.ANSWER_LINE.search(text), line  # the readers' step splitter sees the same line


@pytest.mark.parametrize(
    "text, answer",
    [
        ("The result is **$\\boxed{42}$**.", "42"),  # \boxed{} inside markdown, no answer line
        ("> so we get $\\boxed{42}$", "42"),
        ("- **Answer:**\n  - 42", "- 42"),  # the next line is taken as written (a list marker kept)
        ("Final answer: **42**.", "42."),  # a trailing period stays (matching drops it)
        ("Answer: $42$", "$42$"),  # only a \boxed{} wrapper is removed
    ],
)
def test_decorated_answers_keep_only_their_value(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize(
    "text",
    [
        "The answers: none of these work.\nSo we try again",  # "answers", not "answer"
        "Step 2: the answer must be even",  # no colon after "answer"
        "(Answer: 42)",  # a parenthesis is not decoration
        "$Answer: 42$",
    ],
)
def test_lines_that_are_not_answer_lines(text):
    assert extract_answer(text) is None


# --------------------------------------------------------------------------- equivalence

# (id, answer, reference, verdict, reason). Relative differences are |a - b| / max(|a|, |b|) against
# the default tolerance 1e-6.
MATCHES = [
    # integers
    ("int-same", "42", "42", True, "same integer"),
    ("int-unicode-minus", "\u22127", "-7", True, "U+2212 minus sign reads as '-'"),
    ("int-differ", "13", "12", False, "different integers"),
    ("int-large-off-by-one", "1000001", "1000000", False, "two integers compare exactly (rel. diff 1e-6)"),
    ("int-negative", "-3", "3", False, "sign differs"),
    ("int-plus", "+5", "5", True, "a leading plus sign is dropped"),
    # decimals
    ("dec-int", "12", "12.0", True, "integer and decimal of one value"),
    ("dec-zeros", "0.50", "0.5", True, "trailing zero"),
    ("dec-within", "12.000001", "12", True, "decimal within tolerance: rel. diff 8.3e-8"),
    ("dec-outside", "12.0001", "12", False, "rel. diff 8.3e-6 > 1e-6"),
    ("dec-close", "12.01", "12", False, "rel. diff 8.3e-4"),
    # fractions
    ("frac-slash", "3/4", "0.75", True, "fraction equals decimal"),
    ("frac-latex", "\\frac{3}{4}", "0.75", True, "LaTeX fraction equals decimal"),
    ("frac-negative", "-2.5", "-5/2", True, "negative decimal and fraction"),
    ("frac-dfrac", "$\\dfrac{1}{2}$", "0.5", True, "\\dfrac is a fraction"),
    ("frac-exact", "\\frac{333333}{1000000}", "\\frac{1}{3}", False, "two fractions compare exactly"),
    ("frac-rounded-6", "0.166667", "\\frac{1}{6}", True, "six significant digits, 1/6 rounds to it"),
    ("frac-rounded-5", "0.16667", "\\frac{1}{6}", False, "five digits: rel. diff 2e-5, too few to round"),
    ("frac-truncated", "0.166666", "\\frac{1}{6}", False, "1/6 rounds to 0.166667, not 0.166666"),
    # percentages
    ("pct-decimal", "40%", "0.4", True, "p% is p/100"),
    ("pct-latex", "50\\%", "\\frac{1}{2}", True, "LaTeX \\% is a percent sign"),
    ("pct-bare-reference", "25%", "25", True, "p% also matches p (reference without its sign)"),
    ("pct-differ", "25%", "0.26", False, "0.25 and 26 both differ from 0.26"),
    # scientific notation
    ("sci-small", "1e-3", "0.001", True, "1e-3 is 0.001"),
    ("sci-times", "6.02e23", "6.02 \\times 10^{23}", True, "e-notation and \\times 10^{}"),
    ("sci-unicode-times", "6.02 \u00d7 10^{23}", "6.02e23", True, "U+00D7 reads as \\times"),
    ("sci-capital", "1.5E-7", "0.00000015", True, "capital E"),
    # thousands separators
    ("thousands-comma", "1,234", "1234", True, "comma thousands separator"),
    ("thousands-thin-space", "$1\\,000\\,000$", "1000000", True, "\\, digit groups"),
    ("thousands-boxed", "\\boxed{1000}", "$1,000$", True, "boxed against dollar-wrapped"),
    ("thousands-not-list", "2,300", "2300", True, "comma + exactly three digits: a separator, not a list"),
    # very small magnitudes: math-verify's six-decimal rounding makes all of these 0
    ("tiny-differ", "1e-9", "2e-9", False, "rel. diff 0.5"),
    ("tiny-close", "1.0000001e-9", "1e-9", True, "rel. diff 1e-7"),
    ("tiny-vs-zero", "1e-7", "0", False, "zero equals only zero under a relative tolerance"),
    ("milli-differ", "0.001", "0.0011", False, "rel. diff 0.09"),
    # very large magnitudes
    ("huge-close", "1e10", "1.0000001e10", True, "rel. diff 1e-7; e-notation is a decimal"),
    ("huge-differ", "6.02e23", "6.03e23", False, "rel. diff 1.7e-3"),
    # irrational numbers
    ("irr-symbolic", "\\sqrt{2}/2", "\\frac{1}{\\sqrt{2}}", True, "symbolically equal"),
    ("irr-decimal", "\\sqrt{2}/2", "0.7071068", True, "rel. diff 2.7e-8"),
    ("irr-pi-rounded", "\\pi", "3.14159", True, "six significant digits, pi rounds to it"),
    ("irr-pi-short", "\\pi", "3.1416", False, "five digits: rel. diff 2.3e-6"),
    # choice letters
    ("choice-paren", "(B)", "B", True, "letters compare as letters"),
    ("choice-prefix", "answer: b", "B", True, "answer prefix and case ignored"),
    ("choice-differ", "c.", "B", False, "different letters"),
    ("choice-with-text", "(C) 12", "C", True, "a letter with its option text matches the letter"),
    ("choice-with-text-ref", "C", "(C) 12", True, "the same, the option text in the reference"),
    ("choice-with-text-differ", "(C) 12", "B", False, "a letter with option text, another letter"),
    # several answers: the same set, order-free
    ("multi-reordered", "3, 2", "2, 3", True, "same set, other order"),
    ("multi-one-of-two", "2", "2, 3", False, "one of the two reference answers"),
    ("multi-hedge", "2 or 3", "3", False, "a hedge between two answers is not the answer"),
    ("multi-or", "x=3 or x=2", "x=2 or x=3", True, "same solutions"),
    ("multi-or-one", "x = 2", "x=2 or x=3", False, "one solution of two"),
    ("multi-braced-set", "\\{3, 2\\}", "x=2 or x=3", True, "a braced set counts as its elements"),
    ("multi-bare-vs-set", "2, 3", "\\{2, 3\\}", True, "list against a braced set"),
    ("multi-dollars", "$2$ and $3$", "2, 3", True, "math-delimited parts"),
    ("multi-oxford", "2, 3, and 4", "4, 3, 2", True, "', and' separates once"),
    ("multi-boxed", "\\boxed{3}, \\boxed{2}", "\\boxed{2}, \\boxed{3}", True, "two boxes, other order"),
    ("multi-boxed-one", "\\boxed{2}", "\\boxed{2}, \\boxed{3}", False, "one box of two"),
    ("multi-letters", "(C) and (A)", "(A) and (C)", True, "same letters"),
    ("multi-letters-bare", "A, C", "(A) and (C)", True, "same letters, other notation"),
    ("multi-letter-one", "(A)", "(A) and (C)", False, "one letter of two"),
    ("multi-letters-extra", "A, B, C", "(A) and (C)", False, "B is not a reference answer"),
    ("multi-duplicate", "2, 2", "2, 3", False, "no candidate answer gives 3"),
    ("multi-words", "two and three", "2, 3", None, "words against listed numbers: undecided"),
    ("multi-pair", "(1, 2)", "1, 2", False, "a bracketed pair is one answer, the list two"),
    ("multi-interval", "(-1, 1)", "-1, 1", False, "an interval is one answer, not a list of its ends"),
    ("multi-pair-vs-set", "(3, 2)", "2, 3", False, "an ordered pair against a set of two answers"),
    ("multi-pair-order", "(2, 1)", "(1, 2)", False, "ordered pairs in other order"),
    ("multi-pair-one", "(1, 2)", "x=1 or x=2", False, "the or-list, read whole, is not a set"),
    ("multi-set-tiny", "\\{1e-9, 2\\}", "\\{2e-9, 2\\}", False, "numbers inside a set are cross-checked"),
    # LaTeX and other mathematics (math-verify)
    ("latex-sqrt", "$\\frac{\\sqrt{2}}{2}$", "\\sqrt{2}/2", True, "same value in two LaTeX forms"),
    ("latex-expression", "1+x^2", "x^2+1", True, "symbolically equal expressions"),
    ("latex-assignment", "x = 3", "3", True, "x = 3 states 3"),
    ("latex-assignment-tiny", "x=1e-9", "x=2e-9", False, "right-hand sides cross-checked"),
    ("latex-interval", "[0,1)", "[0,1]", False, "different intervals"),
    ("latex-interval-tiny", "(0.0000001, 1)", "(0.0000002, 1)", False, "interval ends cross-checked"),
    ("latex-infinity", "\\infty", "\\infty", True, "same infinity"),
    ("latex-infinity-number", "1000000", "\\infty", False, "an infinity equals only itself"),
    # text answers
    ("text-case", "Paris", "paris", True, "strings compare without case"),
    ("text-differ", "Lyon", "Paris", False, "different short strings"),
    (
        "text-long",
        "a triangle with equal sides",
        "equilateral triangle of side two",
        None,
        "paraphrase possible",
    ),
    ("text-and", "salt and pepper", "Salt and pepper", True, "word parts are not a list"),
    ("text-vs-number", "seven", "7", None, "words against math: undecided"),
    ("text-units", "13 apples", "13", True, "number with a unit"),
    ("units-omitted", "42 cm", "42", True, "a unit given on one side only is ignored"),
    ("units-differ", "42 cm", "42 m", False, "two different units"),
    ("units-spelled", "42 meters", "42 m", True, "one unit, spelled out and abbreviated"),
    ("words-differ", "42 apples", "42 oranges", None, "different words after one number: undecided"),
    ("words-plural", "42 apple", "42 apples", True, "singular and plural of one word"),
    ("text-prose", "The answer is 7.", "7", True, "prose prefix and period dropped"),
    ("missing", None, "7", False, "no answer"),
    ("blank", "  ", "7", False, "blank answer"),
]


@pytest.mark.parametrize(
    "answer, reference, verdict, reason", [row[1:] for row in MATCHES], ids=[row[0] for row in MATCHES]
)
def test_answers_match(answer, reference, verdict, reason):
    assert answers_match(answer, reference) is verdict, reason
    assert is_correct(answer, reference) is (verdict is True), reason


def test_the_table_covers_enough_cases():
    assert len(MATCHES) >= 40
    assert len({row[0] for row in MATCHES}) == len(MATCHES)  # unique ids


# (solution as a model writes it, reference, verdict, reason): extraction then matching, as the
# rule judge and the majority vote see a rollout.
SOLUTIONS = [
    ("Step 1: ...\n**Final answer:** 42", "42", True, "bold label"),
    ("Step 1: ...\n- Answer: 42", "42", True, "list marker"),
    ("Step 1: ...\n> Answer: 42", "42", True, "quote marker"),
    ("Step 1: ...\n### Final Answer: 42", "42", True, "heading"),
    ("Step 1: ...\n\u2705 Answer: 42", "42", True, "emoji"),
    ("Step 1: ...\nAnswer: **42**", "42", True, "bold value"),
    ("So the total is **$\\boxed{42}$**.", "42", True, "box inside markdown"),
    ("Step 1: ...\n**Final answer:** 41", "42", False, "decorated wrong answer"),
    ("x = \\boxed{2} or x = \\boxed{3}", "3", False, "two boxed solutions on one line hedge"),
    ("x = \\boxed{2} or x = \\boxed{3}", "2, 3", True, "two boxed solutions are a list"),
    ("First \\boxed{2}.\nNo: \\boxed{3}", "3", True, "a later line restates the answer"),
    ("The roots are \\boxed{2} and \\boxed{3}.", "3", False, "a box list is two answers for one"),
    ("The roots are \\boxed{2} and \\boxed{3}.", "x=3 or x=2", True, "a box list against a listed reference"),
]


@pytest.mark.parametrize("solution, reference, verdict, reason", SOLUTIONS)
def test_decorated_solutions_are_judged(solution, reference, verdict, reason):
    assert answers_match(extract_answer(solution), reference) is verdict, reason


@pytest.mark.parametrize(
    "text, parts",
    [
        ("2, 3", ["2", "3"]),
        ("x=2 or x=3", ["x=2", "x=3"]),
        ("\\boxed{2}, \\boxed{3}", ["\\boxed{2}", "\\boxed{3}"]),
        ("\\boxed{2, 3}", ["2", "3"]),  # one box holding a list
        ("(A) and (C)", ["(A)", "(C)"]),
        ("$x = 2 \\text{ or } x = 3$", ["x = 2", "x = 3"]),
        ("2; 3", ["2", "3"]),
        ("1,000, 2", ["1000", "2"]),  # a thousands-formatted part loses its separator
        ("The answer is 2 and 3.", ["2", "3"]),
        # one answer
        ("1,000", ["1,000"]),
        ("12,345,678", ["12,345,678"]),
        ("(1, 2)", ["(1, 2)"]),
        ("\\{2, 3\\}", ["\\{2, 3\\}"]),
        ("[0, 1)", ["[0, 1)"]),
        ("x > 1 and x < 5", ["x > 1 and x < 5"]),  # a condition, not a list
        ("salt and pepper", ["salt and pepper"]),
        ("1\\,000", ["1\\,000"]),
        ("7", ["7"]),
    ],
)
def test_split_answers(text, parts):
    assert split_answers(text) == parts


def test_math_verify_alone_equates_tiny_numbers_and_the_guard_does_not():
    # The premise of the numeric cross-check: math-verify rounds numbers to six decimal places.
    from math_verify import parse, verify

    assert verify(parse("$0.000000002$"), parse("$0.000000001$")) is True
    assert answers_match("0.000000001", "0.000000002") is False
    assert answers_match("\\{0.000000001\\}", "\\{0.000000002\\}") is False


def test_tolerance_is_relative_to_the_larger_magnitude():
    assert answers_match("1000.5", "1000", tolerance=1e-3) is True  # rel. diff 5.0e-4
    assert answers_match("1000.5", "1000", tolerance=1e-4) is False
    # The old rule scaled by max(1, |reference|), an absolute 1e-3 below 1: these were True.
    assert answers_match("0.0005", "0", tolerance=1e-3) is False
    assert answers_match("0.001", "0.0011", tolerance=1e-3) is False  # rel. diff 0.09
    assert answers_match("0.001", "0.0010005", tolerance=1e-3) is True  # rel. diff 5.0e-4
    assert answers_match("-0.001", "0.001", tolerance=0.5) is False  # rel. diff 2
    # tolerance 0: only equal values (written differently) match
    assert answers_match("12.000001", "12", tolerance=0) is False
    assert answers_match("0.5", "\\frac{1}{2}", tolerance=0) is True


@pytest.mark.parametrize("tolerance", [-1e-6, float("nan"), float("inf"), "1e-6"])
def test_a_bad_tolerance_is_refused(tolerance):
    with pytest.raises(ValueError, match="tolerance must be a finite number >= 0"):
        answers_match("1", "1", tolerance=tolerance)


def test_answers_match_works_outside_the_main_thread():
    # math-verify's timeouts use signal.alarm (main thread only); elsewhere they are switched off
    results = []
    thread = threading.Thread(target=lambda: results.append(answers_match("\\frac{1}{4}", "0.250000001")))
    thread.start()
    thread.join()
    assert results == [True]


def test_a_pending_alarm_survives_answer_matching():
    # math-verify cancels any pending alarm after its own; prm.answers must not let it
    previous = signal.signal(signal.SIGALRM, lambda *args: None)
    try:
        signal.alarm(100)
        assert answers_match("\\frac{2}{8}", "0.25") is True
        assert 95 <= signal.alarm(0) <= 100
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_choice_letters():
    assert [choice_letter(t) for t in ("(B)", "b.", "D)", "answer: c", "BC", "(I)")] == [
        "B",
        "B",
        "D",
        "C",
        None,
        None,
    ]


# --------------------------------------------------------------------------- voting


@pytest.mark.parametrize(
    "raw, key",
    [
        ("$1,000$", "1000"),
        ("1000.0", "1000"),
        ("\\boxed{1000}", "1000"),
        (" 3. ", "3"),
        ("0.50", "0.5"),
        ("-0.0", "0"),
        ("1e-3", "0.001"),
        ("(B)", "b"),
        ("B)", "b"),
        ("x = 3", "x=3"),
        ("\\text{Yes}", "yes"),
        (None, None),
        ("  ", None),
    ],
)
def test_answer_key(raw, key):
    assert answer_key(raw) == key


def test_vote_keys_pool_equivalent_answers():
    raw = ["0.5", None, "\\frac{1}{2}", "$1,000$", "1/2", "1000.0", "7", "(B)", "b."]
    assert vote_keys(raw) == ["0.5", None, "0.5", "1000", "0.5", "1000", "7", "b", "b"]


@pytest.mark.parametrize(
    "raw",
    [
        ["50", "50%", "0.5", "0.5"],  # 50% matches both 0.5 and 50: equivalence is not transitive
        ["1e-9", "1.0000006e-9", "1.0000012e-9", "1.0000006e-9"],  # tolerance chains
        ["(C) 12", "C", "(C) 13", "B"],  # both option texts match the bare letter
    ],
)
def test_vote_keys_do_not_depend_on_the_order_of_the_answers(raw):
    import itertools

    expected = dict(zip(raw, vote_keys(raw)))
    for order in itertools.permutations(raw):
        keys = vote_keys(list(order))
        assert dict(zip(order, keys)) == expected, order  # each answer gets the same key
        assert sorted(Counter(keys).values()) == sorted(Counter(expected[a] for a in raw).values())


def test_vote_keys_pool_a_percentage_with_its_fraction():
    assert vote_keys(["50", "50%", "0.5", "0.5"]) == ["50", "0.5", "0.5", "0.5"]
    assert vote_keys(["0.5", "0.5", "50%", "50"]) == ["0.5", "0.5", "0.5", "50"]


def test_vote_keys_put_equal_answers_in_different_notation_in_one_group():
    groups = {
        "0.5": ["0.5", "50%", "50\\%", "\\frac{1}{2}", "5e-1", "$\\boxed{0.5}$", "1/2", "**0.5**"],
        "1000": ["1,000", "1000.0", "1e3", "$1\\,000$", "\\boxed{1000}"],
        "2,3": ["2, 3", "3, 2", "x=2 or x=3", "\\{2, 3\\}", "\\boxed{3}, \\boxed{2}"],
        "(c)and(a)": ["(C) and (A)", "A, C", "c and a"],
    }
    apart = ["1e-9", "2e-9", "2", "3", "0.4", "1000001"]  # each its own group
    raw = [a for members in groups.values() for a in members] + apart
    keys = vote_keys([extract_answer(f"Answer: {a}") for a in raw])
    expected = [key for key, members in groups.items() for _ in members]
    expected += ["0.000000001", "0.000000002", "2", "3", "0.4", "1000001"]
    assert keys == expected


def test_majority_vote_pools_fractions_with_decimals():
    from prm.data.records import BestOfNProblem, Candidate

    finals = ["\\frac{1}{2}", "0.5", "3", "3", "1/2"]
    correct = [True, True, False, False, True]
    candidates = [Candidate(steps=["s"], final_answer=a, correct=c) for a, c in zip(finals, correct)]
    result = best_of_n([BestOfNProblem(id="p", question="q", candidates=candidates)], [[[0.5]] * 5])
    assert result.baselines["majority_vote"].accuracy == 1.0  # three votes for 1/2 against two for 3
    assert result.baselines["majority_vote"].ties == 0


@pytest.mark.parametrize(
    "finals, correct",
    [
        # three notations of 1/2 outvote two identical wrong answers
        (["50%", "5e-1", "\\frac{1}{2}", "0.4", "0.4"], [True, True, True, False, False]),
        # three writings of the set {2, 3} outvote two candidates giving only one of its answers
        (["3, 2", "x=2 or x=3", "\\{2, 3\\}", "2", "2"], [True, True, True, False, False]),
        # 1e-9 and 2e-9 are two answers, so three votes for 2e-9 beat two for 1e-9
        (
            ["1e-9", "0.000000001", "2e-9", "2 \\times 10^{-9}", "0.000000002"],
            [False, False, True, True, True],
        ),
    ],
)
def test_majority_vote_pools_answers_in_different_notation(finals, correct):
    from prm.data.records import BestOfNProblem, Candidate

    candidates = [Candidate(steps=["s"], final_answer=a, correct=c) for a, c in zip(finals, correct)]
    result = best_of_n([BestOfNProblem(id="p", question="q", candidates=candidates)], [[[0.5]] * 5])
    assert result.baselines["majority_vote"].accuracy == 1.0
    assert result.baselines["majority_vote"].ties == 0


def test_demo_checker_and_majority_vote_are_unchanged(tmp_path, monkeypatch):
    """On the default demo's test set (seed 0, 150 problems of 8): the checker's verdicts equal the
    integer comparison it replaced, and the majority vote equals the plain-key vote it replaced
    (68.0%, the README's figure)."""
    problems = read_native(build_demo(tmp_path, train_per_domain=1, meta_size=0, test_problems=150).test)
    pairs = [(c.final_answer, p.answer, c.correct) for p in problems for c in p.candidates]
    assert len(pairs) == 1200
    assert all(correct == (int(final) == int(reference)) for final, reference, correct in pairs)
    assert all(is_correct(final, reference) == correct for final, reference, correct in pairs)
    assert 0 < sum(c for _, _, c in pairs) < len(pairs)
    scores = [[[0.5]] * len(p.candidates) for p in problems]
    new, new_curve = best_of_n(problems, scores), accuracy_vs_n(problems, scores)
    monkeypatch.setattr(
        sys.modules["prm.evaluation.best_of_n"], "vote_keys", lambda raw: [answer_key(a) for a in raw]
    )
    old, old_curve = best_of_n(problems, scores), accuracy_vs_n(problems, scores)
    assert new.baselines["majority_vote"] == old.baselines["majority_vote"]
    assert new_curve.baselines["majority_vote"] == old_curve.baselines["majority_vote"]
    assert round(new.baselines["majority_vote"].accuracy, 3) == 0.68


def test_one_writing_of_the_answer_rules():
    # the readers, policies, judge and majority vote use prm.answers rather than their own copies
    from prm.data import steps
    from prm.generate import judge, policy

    assert steps.ANSWER_LINE is answers.ANSWER_LINE
    assert steps.extract_final_answer("x\nFinal answer: 4") == "4"
    assert steps.extract_final_answer("x\n\u2705 **Final answer:** 4") == "4"
    assert policy.extract_answer(["So the answer is 9."]) == "9"
    assert policy.extract_answer(["Step 1: ...", "> **Answer:** 9"]) == "9"
    assert sys.modules["prm.evaluation.best_of_n"].vote_keys is answers.vote_keys
    rule = judge.RuleJudge()
    assert rule("\\frac{1}{2}", "0.5") is True
    assert rule("2", "2, 3") is False  # one answer of a listed reference: no positive label
    assert rule("1e-9", "2e-9") is False
    assert judge.RuleJudge(tolerance=1e-3)("1000.5", "1000") is True
