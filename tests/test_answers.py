"""prm.answers: extraction, voting keys, equivalence (math-verify and the string fallback), and the
demo benchmark's checker and majority vote unchanged by them."""

import signal
import sys
import threading

import pytest

from prm import answers
from prm.answers import answer_key, answers_match, choice_letter, extract_answer, is_correct, vote_keys
from prm.data.readers import read_native
from prm.data.synthetic import build_demo
from prm.evaluation.best_of_n import accuracy_vs_n, best_of_n


@pytest.mark.parametrize(
    "text, lenient, answer",
    [
        ("Step 1: x\nFinal answer: B", False, "B"),
        ("Final answer: A\n(Note ...)\nFinal answer: C", False, "C"),
        ("## Answer: **B**", False, "B"),
        ("Answer:\n\n 12 \n", False, "12"),
        ("so \\(\\boxed{\\frac{1}{2}}\\).", False, "\\frac{1}{2}"),
        ("\\boxed{a{b}c} and \\boxed{d{e}}", False, "d{e}"),
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
    "answer, reference, verdict",
    [
        # numbers, fractions, percentages, LaTeX: math-verify
        ("12", "12.0", True),
        ("1,234", "1234", True),
        ("3/4", "0.75", True),
        ("\\frac{3}{4}", "0.75", True),
        ("$\\frac{\\sqrt{2}}{2}$", "\\sqrt{2}/2", True),
        ("\\boxed{1000}", "$1,000$", True),
        ("40%", "0.4", True),
        ("1e-3", "0.001", True),
        ("-2.5", "-5/2", True),
        ("1+x^2", "x^2+1", True),
        ("x = 3", "3", True),
        ("13 apples", "13", True),
        ("The answer is 7.", "7", True),
        ("13", "12", False),
        ("12.01", "12", False),
        ("[0,1)", "[0,1]", False),
        # relative tolerance 1e-6 for numbers
        ("12.000001", "12", True),
        ("12.0001", "12", False),
        # choice letters
        ("(B)", "B", True),
        ("answer: b", "B", True),
        ("c.", "B", False),
        # strings
        ("Paris", "paris", True),
        ("Lyon", "Paris", False),
        ("a triangle with equal sides", "equilateral triangle of side two", None),
        ("seven", "7", None),  # words against math: undecided
        (None, "7", False),
        ("  ", "7", False),
    ],
)
def test_answers_match(answer, reference, verdict):
    assert answers_match(answer, reference) is verdict
    assert is_correct(answer, reference) is (verdict is True)


def test_tolerance_is_relative_to_the_reference():
    assert answers_match("1000.5", "1000", tolerance=1e-3) is True
    assert answers_match("1000.5", "1000", tolerance=1e-4) is False
    assert answers_match("0.0005", "0", tolerance=1e-3) is True  # max(1, |reference|)


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


@pytest.mark.parametrize(
    "raw, key",
    [
        ("$1,000$", "1000"),
        ("1000.0", "1000"),
        ("\\boxed{1000}", "1000"),
        (" 3. ", "3"),
        ("0.50", "0.5"),
        ("-0.0", "0"),
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


def test_vote_keys_pool_equivalent_answers_and_keep_prefixes_stable():
    raw = ["0.5", None, "\\frac{1}{2}", "$1,000$", "1/2", "1000.0", "7", "(B)", "b."]
    keys = vote_keys(raw)
    assert keys == ["0.5", None, "0.5", "1000", "0.5", "1000", "7", "b", "b"]
    for n in range(len(raw)):  # the keys of every prefix are the prefix of the keys
        assert vote_keys(raw[:n]) == keys[:n]


def test_majority_vote_pools_fractions_with_decimals():
    from prm.data.records import BestOfNProblem, Candidate

    finals = ["\\frac{1}{2}", "0.5", "3", "3", "1/2"]
    correct = [True, True, False, False, True]
    candidates = [Candidate(steps=["s"], final_answer=a, correct=c) for a, c in zip(finals, correct)]
    result = best_of_n([BestOfNProblem(id="p", question="q", candidates=candidates)], [[[0.5]] * 5])
    assert result.baselines["majority_vote"].accuracy == 1.0  # three votes for 1/2 against two for 3
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
    # the readers, policies and judge use prm.answers rather than their own copies
    from prm.data import steps
    from prm.generate import judge, policy

    assert steps.ANSWER_LINE is answers.ANSWER_LINE
    assert steps.extract_final_answer("x\nFinal answer: 4") == "4"
    assert policy.extract_answer(["So the answer is 9."]) == "9"
    assert judge.RuleJudge()("\\frac{1}{2}", "0.5") is True
