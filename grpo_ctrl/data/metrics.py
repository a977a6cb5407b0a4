"""Answer normalisation, exact match and VQA-style scores."""

from __future__ import annotations

import re
from collections.abc import Sequence

_NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[^\w\s]")


def normalize_answer(text: str) -> str:
    words = _PUNCT.sub(" ", text.lower()).split()
    return " ".join(_NUMBER_WORDS.get(w, w) for w in words if w not in _ARTICLES)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def vqa_score(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy: min(1, #annotators who gave this answer / 3). One gold answer reduces to exact match."""
    if len(answers) == 1:
        return exact_match(prediction, answers[0])
    pred = normalize_answer(prediction)
    return min(1.0, sum(pred == normalize_answer(a) for a in answers) / 3.0)
