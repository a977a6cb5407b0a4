import numpy as np
import pytest

from grpo_ctrl.data import QUESTION_TYPES, GridVQA, exact_match, normalize_answer, vocabulary, vqa_score
from grpo_ctrl.vlm.tokenizer import build_tokenizer


def test_generator_is_deterministic_per_seed_split_index():
    a, b = GridVQA(seed=3), GridVQA(seed=3)
    for i in (0, 7, 123):
        x, y = a.sample("train", i), b.sample("train", i)
        assert np.array_equal(x.image, y.image) and (x.question, x.answer) == (y.question, y.answer)
    assert not np.array_equal(a.sample("train", 0).image, a.sample("val", 0).image)
    assert not np.array_equal(a.sample("train", 0).image, GridVQA(seed=4).sample("train", 0).image)


def test_extra_questions_share_the_image_and_keep_the_first_question():
    gen = GridVQA()
    group = gen.image_questions("test", 5, 4)
    first = gen.sample("test", 5)
    assert (group[0].question, group[0].answer) == (first.question, first.answer)
    assert all(np.array_equal(s.image, first.image) for s in group)


def test_every_question_type_occurs_and_answers_are_single_known_words():
    samples = GridVQA().split("train", 400)
    assert {s.qtype for s in samples} == set(QUESTION_TYPES)
    vocab = set(vocabulary())
    assert all(s.answer in vocab and len(s.answer.split()) == 1 for s in samples)
    assert samples[0].image.shape == (64, 64, 3) and samples[0].image.dtype == np.uint8


def test_answers_match_the_image():
    gen = GridVQA(noise=0)
    for s in gen.split("val", 200):
        if s.qtype == "cell":
            word = s.question.split()[-1]
            r, c = int(word[1]), int(word[3])
            pixel = tuple(int(v) for v in s.image[r * 8 + 4, c * 8 + 4])
            assert gen.palette[gen.colour_names.index(s.answer)].tolist() == list(pixel)


def test_unknown_split_or_mix_is_rejected():
    with pytest.raises(ValueError, match="split"):
        GridVQA().sample("dev", 0)
    with pytest.raises(ValueError, match="unknown question types"):
        GridVQA(mix={"colour": 1.0})


def test_metrics_normalise_and_score():
    assert normalize_answer("The Red.") == "red"
    assert exact_match("two", "2") == 1.0 and exact_match("blue", "red") == 0.0
    assert vqa_score("red", ["red", "red", "blue", "red"]) == 1.0
    assert vqa_score("blue", ["red", "red", "blue", "red"]) == pytest.approx(1 / 3)


def test_tokenizer_round_trip(tmp_path):
    tok = build_tokenizer(vocabulary())
    text = "are the topleft and bottomright quadrants the same colour r3c5"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text and tok.unk_token_id not in ids
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.encode(text, add_special_tokens=False) == ids
