"""Answer scoring: VQA normalisation and accuracy against the official definition, exact match, ANLS, extraction."""

import pytest

from grpo_ctrl.data.metrics import (
    METRICS,
    anls,
    exact_match,
    extract_answer,
    get_metric,
    normalize_answer,
    normalize_vqa,
    vqa_accuracy,
)


def test_normalize_answer_keeps_the_simple_rules():
    assert normalize_answer("The Red.") == "red"
    assert normalize_answer("  Two   dogs!") == "2 dogs"


@pytest.mark.parametrize("text, expected", [
    ("Two dogs.", "2 dogs"),
    ("the cat", "cat"),
    ("None", "0"),
    ("dont", "don't"),
    ("Isnt", "isn't"),
    ("couldntve", "couldn't've"),
    ("couldn'tve", "couldn't've"),
    ("its well", "its well"),  # ordinary words, not it's / we'll
    ("2.5", "2.5"),  # decimal point kept
    ("1,000", "1000"),  # digit-comma-digit: every mark deleted
    ("yes!", "yes"),
    ("black-and-white", "black and white"),  # mark not next to a space: replaced by a space
    ("a man , sitting", "man sitting"),  # "," next to a space: deleted
    ("3:30", "3:30"),  # colons are kept
    ("Yes\tsir\n", "yes sir"),
])
def test_normalize_vqa(text, expected):
    assert normalize_vqa(text) == expected


TEN_2_3 = ["2"] * 3 + ["3"] * 7


@pytest.mark.parametrize("prediction, answers, expected", [
    # 3 said "2": each sees 2 other matches -> 2/3; the 7 others see 3 -> 1. (3 * 2/3 + 7 * 1) / 10 = 0.9
    ("2", TEN_2_3, 0.9),
    ("two", TEN_2_3, 0.9),
    # 1 of 10: the 9 non-matching see 1 match -> 1/3, the matching one sees 0. (9 * 1/3 + 0) / 10 = 0.3
    ("cat", ["cat"] + ["dog"] * 9, 0.3),
    # 2 of 10: the matching see 1 -> 1/3, the 8 others see 2 -> 2/3. (2/3 + 16/3) / 10 = 0.6
    ("cat", ["cat"] * 2 + ["dog"] * 8, 0.6),
    # 4 of 10: the matching see 3 -> 1, the 6 others see 4 -> 1. (4 + 6) / 10 = 1.0
    ("cat", ["cat"] * 4 + ["dog"] * 6, 1.0),
    ("cat", ["cat"] * 10, 1.0),
    ("cow", ["cat"] * 10, 0.0),
    # 4 annotators, 3 "red": each red sees 2 -> 2/3, blue sees 3 -> 1. (3 * 2/3 + 1) / 4 = 0.75
    ("red", ["red", "red", "blue", "red"], 0.75),
    # blue sees 0, each red sees 1 -> 1/3. (0 + 3 * 1/3) / 4 = 0.25
    ("blue", ["red", "red", "blue", "red"], 0.25),
    ("Yes!", ["yes"] * 10, 1.0),  # normalised even when all annotators agree
    ("Two.", ["2"], 1.0),  # one gold answer: exact match after normalize_vqa
    ("3", ["2"], 0.0),
])
def test_vqa_accuracy_follows_the_official_definition(prediction, answers, expected):
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


@pytest.mark.parametrize("metric", [vqa_accuracy, exact_match, anls])
def test_metrics_reject_a_bare_string_and_no_answers(metric):
    with pytest.raises(TypeError, match="bare str"):
        metric("2", "2")
    with pytest.raises(ValueError, match="empty"):
        metric("2", [])


def test_exact_match_against_any_gold_answer():
    assert exact_match("two", ["2"]) == 1.0
    assert exact_match("blue", ["red", "The Blue."]) == 1.0
    assert exact_match("blue", ["red", "green"]) == 0.0


@pytest.mark.parametrize("prediction, answers, expected", [
    ("Invoice 42", ["Invoice 42"], 1.0),
    ("abcdefghij", ["abcdefghix"], 0.9),  # 1 edit / 10 chars -> NL 0.1
    ("abcd", ["abxy"], 0.0),  # 2 edits / 4 chars -> NL 0.5, not below the threshold
    ("hello", ["world", "hellp"], 0.8),  # "world" -> NL 0.8 -> 0; "hellp" -> NL 0.2 -> 0.8
    ("  Total   DUE ", ["total due"], 1.0),
    ("", ["abc"], 0.0),
])
def test_anls(prediction, answers, expected):
    assert anls(prediction, answers) == pytest.approx(expected)


def test_anls_threshold_is_configurable():
    assert anls("abcd", ["abxy"], threshold=0.6) == pytest.approx(0.5)


@pytest.mark.parametrize("text, expected", [
    ("Answer: 42.\nBecause there are 42 squares.", "42"),
    ("answer: 2.5", "2.5"),
    ("3.5.", "3.5"),
    ("The dog..", "The dog."),  # one trailing period only
    ("\n  yes\nno", "yes"),  # leading blank lines are skipped
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_get_metric():
    assert get_metric("vqa") is vqa_accuracy and get_metric("anls") is anls
    assert set(METRICS) == {"vqa", "exact_match", "anls"}
    with pytest.raises(ValueError, match=r"metric 'bleu' is unknown; use one of \['vqa', 'exact_match', 'anls'\]"):
        get_metric("bleu")
