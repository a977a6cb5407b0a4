"""Answer scoring: normalisation, answer extraction and the per-question metrics (VQA accuracy, exact match, ANLS)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence

from rapidfuzz.distance import Levenshtein

_NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[^\w\s]")


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation to spaces, drop articles, number words to digits, collapse whitespace."""
    words = _PUNCT.sub(" ", text.lower()).split()
    return " ".join(_NUMBER_WORDS.get(w, w) for w in words if w not in _ARTICLES)


# --- official VQA normalisation (VQA v2 vqaEval.py, visualqa.org/evaluation) ---

# Colons and apostrophes are not in the official list: "3:30" and "don't" keep them.
_VQA_PUNCT = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")  # a period followed by a digit is a decimal point
_VQA_NUMBERS = {"none": "0", **_NUMBER_WORDS}

_CANONICAL_CONTRACTIONS = """
    ain't aren't can't couldn't couldn't've could've didn't doesn't don't hadn't hadn't've hasn't haven't
    he'd he'd've he'll he's here's how'd how'll how's i'd i'd've i'll i'm i've isn't it'd it'd've it'll it's
    let's ma'am mightn't mightn't've might've mustn't must've needn't o'clock oughtn't shan't she'd she'd've
    she'll she's shouldn't shouldn't've should've somebody'd somebody'll somebody's someone'd someone'll
    someone's something'd something'll that'd that'll that's there'd there'd've there're there's they'd
    they'd've they'll they're they've wasn't we'd we'd've we'll we're we've weren't what'll what're what's
    what've when's where'd where's where've who'd who'd've who'll who're who's who've why'll why're why's won't
    wouldn't wouldn't've would've y'all y'all'll you'd you'd've you'll you're you've
""".split()
# Apostrophe-less spellings that are ordinary words stay as they are (it's/its, we'll/well, she'd/shed, ...).
_ORDINARY_WORDS = {"its", "ill", "id", "well", "were", "wed", "hell", "shell", "shed", "whore"}


def _misspellings(contraction: str) -> list[str]:
    """Every spelling of `contraction` with some (at least one) of its apostrophes left out."""
    first, *rest = contraction.split("'")
    spellings = (first + "".join(a + part for a, part in zip(marks, rest))
                 for marks in itertools.product(("'", ""), repeat=len(rest)))
    return [s for s in spellings if s != contraction]


_CONTRACTIONS = {spelling: c for c in _CANONICAL_CONTRACTIONS for spelling in _misspellings(c)
                 if spelling not in _ORDINARY_WORDS}


def normalize_vqa(text: str) -> str:
    """Official VQA answer normalisation: punctuation, periods, number words, articles, contractions."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    # Marks next to a space (or any mark in a text with a "1,000"-style number) are deleted; others split words.
    out = text
    has_number_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in _VQA_PUNCT:
        deleted = has_number_comma or mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if deleted else " ")
    out = _PERIOD.sub("", out)
    words = [_VQA_NUMBERS.get(w, w) for w in out.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


# --- per-question metrics: (prediction, gold answers) -> score in [0, 1] ---

def _check_answers(answers: Sequence[str]) -> None:
    # A bare str is a Sequence[str] too: iterating it would silently score against single characters.
    if isinstance(answers, str):
        raise TypeError(f"answers must be a sequence of gold answers, not a bare str ({answers!r}); wrap it in a list")
    if len(answers) == 0:
        raise ValueError("answers is empty: a question needs at least one gold answer")


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy: mean over annotators i of min(1, #other annotators who gave the prediction / 3).

    With 10 annotators this is the average over the 10 leave-one-out subsets of 9. With a single gold answer the
    leave-one-out set is empty, so the score is defined as exact match after `normalize_vqa`.
    """
    _check_answers(answers)
    # The official script normalises only when the annotators disagree (a known quirk); the written definition,
    # followed here, always normalises.
    pred = normalize_vqa(prediction)
    hits = [normalize_vqa(a) == pred for a in answers]
    if len(hits) == 1:
        return float(hits[0])
    matches = sum(hits)
    return sum(min(1.0, (matches - hit) / 3) for hit in hits) / len(hits)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the prediction equals any gold answer after `normalize_answer`, else 0.0."""
    _check_answers(answers)
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(a) == pred for a in answers))


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Per-question ANLS (DocVQA, ST-VQA): the best 1 - normalised Levenshtein distance over the gold answers,
    counted as 0 when that distance reaches `threshold`. Case and whitespace are ignored."""
    _check_answers(answers)
    pred = " ".join(prediction.lower().split())
    best = 0.0
    for answer in answers:
        gold = " ".join(answer.lower().split())
        nl = Levenshtein.distance(pred, gold) / max(len(pred), len(gold), 1)
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


_ANSWER_PREFIX = re.compile(r"^answer\s*:\s*", re.IGNORECASE)


def extract_answer(text: str) -> str:
    """The answer part of a free-form generation: its first non-blank line, stripped, without a leading "Answer:"
    and one trailing period."""
    line = text.strip().split("\n", 1)[0].strip()
    line = _ANSWER_PREFIX.sub("", line)
    return line[:-1].rstrip() if line.endswith(".") else line


METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {"vqa": vqa_accuracy, "exact_match": exact_match,
                                                              "anls": anls}


def get_metric(name: str) -> Callable[[str, Sequence[str]], float]:
    if name not in METRICS:
        raise ValueError(f"metric {name!r} is unknown; use one of {list(METRICS)}")
    return METRICS[name]
