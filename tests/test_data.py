import numpy as np
import pytest

from grpo_ctrl.data import QUESTION_TYPES, DataError, GridVQA, VQASample, vocabulary
from grpo_ctrl.data.synthetic import QUADRANTS
from grpo_ctrl.parallel import ParallelContext
from grpo_ctrl.rollout import PromptPool
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


@pytest.mark.parametrize("grid", [8, 12])
def test_every_question_type_occurs_and_answers_are_single_known_words(grid):
    gen = GridVQA(mix=dict.fromkeys(QUESTION_TYPES, 1.0), grid=grid, odd_squares=(1, 2))
    samples = gen.split("train", 600)
    assert {s.qtype for s in samples} == set(QUESTION_TYPES)
    vocab = set(vocabulary(grid))
    assert all(set(s.question.split()) <= vocab for s in samples)
    assert all(s.answer in vocab and len(s.answer.split()) == 1 for s in samples)
    assert samples[0].image.shape == (8 * grid, 8 * grid, 3) and samples[0].image.dtype == np.uint8


def _colour_at(gen, image, row, col):
    """The colour name of the cell (row, col) of a noise-free image."""
    pixel = image[row * gen.cell_px + gen.cell_px // 2, col * gen.cell_px + gen.cell_px // 2]
    return gen.colour_names[[tuple(c) for c in gen.palette.tolist()].index(tuple(int(v) for v in pixel))]


def _quadrant_colours(gen, image):
    """Each quadrant's most frequent cell colour, read off the image."""
    out = []
    for q in range(4):
        r0, c0 = (q // 2) * gen.half, (q % 2) * gen.half
        names = [_colour_at(gen, image, r, c) for r in range(r0, r0 + gen.half) for c in range(c0, c0 + gen.half)]
        out.append(max(set(names), key=names.count))
    return out


def test_square_code_chain_relay_and_chaincode_answers_match_the_image():
    from grpo_ctrl.data.synthetic import code_token, key_token
    gen = GridVQA(noise=0, grid=12, odd_squares=(1, 2),
                  mix={"square": 1, "code": 1, "chain": 1, "relay": 1, "chaincode": 1})
    seen = set()
    for s in gen.split("val", 150):
        words, seen = s.question.split(), seen | {s.qtype}
        quadrants = _quadrant_colours(gen, s.image)
        if s.qtype == "square":
            r, c = (int(v) for v in words[-1][1:].split("c"))
            names = [_colour_at(gen, s.image, 2 * r + i, 2 * c + j) for i in (0, 1) for j in (0, 1)]
            assert names.count(s.answer) >= 3
        elif s.qtype == "code":
            key, q = int(words[5][1:]), QUADRANTS.index(words[8])
            assert s.answer == code_token(int(gen.code_table[key, gen.colour_names.index(quadrants[q])]))
        elif s.qtype == "relay":
            at = int(words[3][1:])
            for q in words[5:]:
                at = int(gen.relay_table[at, gen.colour_names.index(quadrants[QUADRANTS.index(q)])])
            assert s.answer == key_token(at)
        else:  # chain, chaincode: "... <hops> steps from the <quadrant> quadrant"
            hops, at = int(words[-6]), QUADRANTS.index(words[-2])
            for _ in range(hops):
                at = int(gen.points_to[gen.colour_names.index(quadrants[at])])
            if s.qtype == "chain":
                assert s.answer == quadrants[at]
            else:
                key = int(words[5][1:])
                assert s.answer == code_token(int(gen.code_table[key, gen.colour_names.index(quadrants[at])]))
    assert seen == {"square", "code", "chain", "relay", "chaincode"}


def test_cell_mosaics_are_four_colours_and_never_asked_as_squares():
    gen = GridVQA(noise=0, cell_mosaics=(1, 1), odd_cells=(1, 1), mix={"cell": 1, "square": 1, "quadrant": 1})
    asked = set()
    for s in gen.split("val", 150):
        image, words, asked = s.image, s.question.split(), asked | {s.qtype}
        cells = s.meta["cells"]
        blocks = [cells[r:r + 2, c:c + 2] for r in range(0, 8, 2) for c in range(0, 8, 2)]
        assert sum(len(np.unique(b)) == 4 for b in blocks) == 4  # one mosaic per quadrant
        if s.qtype == "cell":
            r, c = int(words[-1][1]), int(words[-1][3])
            assert s.answer == _colour_at(gen, image, r, c)
        elif s.qtype == "square":
            r, c = (int(v) for v in words[-1][1:].split("c"))
            names = [_colour_at(gen, image, 2 * r + i, 2 * c + j) for i in (0, 1) for j in (0, 1)]
            assert names.count(s.answer) >= 3
        else:
            assert s.answer == _quadrant_colours(gen, image)[QUADRANTS.index(words[4])]
    assert asked == {"cell", "square", "quadrant"}
    with pytest.raises(ValueError, match="2x2 blocks"):
        GridVQA(cell_mosaics=(4, 4))


def test_the_shipped_models_task_is_unchanged():
    """The embedded model was pretrained on these streams: a change to the generator's draws retrains it."""
    s = GridVQA().sample("val", 3)
    assert (s.question, s.answer, s.qtype) == ("what colour is cell r6c1", "red", "cell")
    assert int(s.image.astype(np.int64).sum()) == 1641852


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


def test_chain_questions_draw_the_configured_hop_counts():
    hops = {int(s.question.split()[3]) for s in GridVQA(mix={"chain": 1}, chain_hops=(2, 4)).split("val", 40)}
    assert hops == {2, 4}
    for bad in ((), (0, 1), (7,)):
        with pytest.raises(ValueError, match="chain_hops"):
            GridVQA(chain_hops=bad)


def test_relay_questions_name_one_quadrant_per_configured_hop():
    lengths = {len(s.question.split()) - 5 for s in GridVQA(mix={"relay": 1}, relay_hops=(1, 3)).split("val", 40)}
    assert lengths == {1, 3}
    with pytest.raises(ValueError, match="relay_hops"):
        GridVQA(relay_hops=(0, 2))


def test_relay_keys_sets_the_table_and_bad_values_are_refused():
    gen = GridVQA(mix={"relay": 1}, relay_keys=12)
    assert gen.relay_table.shape == (12, 6) and gen.relay_table.max() < 12
    samples = gen.split("val", 100)
    keys = {int(s.question.split()[3][1:]) for s in samples} | {int(s.answer[1:]) for s in samples}
    assert max(keys) < 12 and len(keys) > 6
    with pytest.raises(ValueError, match="relay_keys"):
        GridVQA(relay_keys=1)


def test_a_grid_split_is_sized_and_built_when_indexed():
    gen = GridVQA()
    split = gen.split("val", 5)
    assert len(split) == 5 and split[2] == gen.sample("val", 2) and split[-1] == gen.sample("val", 4)
    assert np.array_equal(split[2].image, gen.sample("val", 2).image)
    assert [s.question for s in split[1:3]] == [gen.sample("val", i).question for i in (1, 2)]
    assert [s.question for s in split] == [gen.sample("val", i).question for i in range(5)]
    with pytest.raises(IndexError):
        split[5]
    with pytest.raises(DataError, match="data.val_size"):
        gen.split("val")


def test_the_most_frequent_gold_answer_is_the_answer():
    sample = VQASample(None, "q", ("two", "2", "2", "two", "2"))
    assert sample.answer == "2"
    assert VQASample(None, "q", ("a", "b")).answer == "a"  # ties: the first
    with pytest.raises(DataError, match="no gold answer"):
        VQASample(None, "q", ())


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_rank_shards_cover_each_prompt_once(world):
    pool = PromptPool(GridVQA().split("val", 10), "val")
    keys = [p.key for r in range(world) for p in ParallelContext(rank=r, world_size=world).shard(pool)]
    assert sorted(keys) == [("val", i) for i in range(10)]


def test_tokenizer_round_trip(tmp_path):
    tok = build_tokenizer(vocabulary())
    text = "are the topleft and bottomright quadrants the same colour r3c5"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text and tok.unk_token_id not in ids
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.encode(text, add_special_tokens=False) == ids


def test_pair_answers_come_from_the_pair_table_whatever_the_image():
    from grpo_ctrl.data.synthetic import PAIR_KEYS, code_token
    gen = GridVQA(mix={"pair": 1})
    samples = gen.split("val", 60)
    for s in samples:
        a, b = (int(w[1:]) for w in s.question.split()[5::2])
        assert max(a, b) < PAIR_KEYS and s.answer == code_token(int(gen.pair_table[a, b]))
    assert len({s.question for s in samples}) > 40  # pairs vary
    assert len({s.answer for s in samples}) > 10    # and so do their codes


def test_pair_keys_sets_the_table_and_bad_values_are_refused():
    gen = GridVQA(mix={"pair": 1}, pair_keys=40)
    assert gen.pair_table.shape == (40, 40)
    keys = {int(w[1:]) for s in gen.split("val", 200) for w in s.question.split()[5::2]}
    assert max(keys) >= 16 and max(keys) < 40
    with pytest.raises(ValueError, match="pair_keys"):
        GridVQA(pair_keys=65)
