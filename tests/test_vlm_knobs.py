"""Each knob must change the work done, not just an attribute."""

import statistics
import time

import pytest
import torch

from grpo_ctrl.data import GridVQA
from grpo_ctrl.knobs import KnobError, Knobs


@pytest.fixture
def batch():
    return GridVQA().split("val", 3)


def _inputs(vlm, samples, tier):
    return vlm.inputs([s.image for s in samples], [s.question for s in samples], tier)


@pytest.mark.parametrize("tier,tokens", [("low", 4), ("medium", 16), ("high", 64)])
def test_tier_sets_image_tokens_in_sequence_and_in_vision_encoder(tiny_vlm, batch, tier, tokens):
    inputs = _inputs(tiny_vlm, batch, tier)
    assert (inputs["input_ids"] == tiny_vlm.image_token_id).sum(dim=1).tolist() == [tokens] * len(batch)
    seen = []
    layer = tiny_vlm.model.model.vision_tower.encoder.layers[0]
    handle = layer.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0].shape[1]), with_kwargs=True)
    try:
        tiny_vlm.generate(inputs, Knobs(tier, 2, 4), max_new_tokens=1)
    finally:
        handle.remove()
    assert seen == [tokens]
    one = _inputs(tiny_vlm, batch[:1], tier)
    assert tiny_vlm.encode_vision(one, tier)[0]["image_features"].shape[0] == tokens


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_top_k_sets_experts_evaluated_per_token(tiny_vlm, batch, top_k):
    pairs, tokens = [], []

    def count(module, args):
        hidden, top_k_index = args[0], args[1]
        tokens.append(hidden.shape[0])
        pairs.append(top_k_index.numel())

    handles = [b.mlp.experts.register_forward_pre_hook(count) for b in tiny_vlm.blocks]
    try:
        tiny_vlm.generate(_inputs(tiny_vlm, batch, "medium"), Knobs("medium", top_k, 4), max_new_tokens=2,
                          min_new_tokens=2)
    finally:
        for h in handles:
            h.remove()
    assert len(pairs) == 4 * 2  # 4 blocks x (prefill + 1 decode step)
    assert all(p == t * top_k for p, t in zip(pairs, tokens))


@pytest.mark.parametrize("num_blocks,kept", [(4, [0, 1, 2, 3]), (3, [0, 1, 2]), (2, [0, 2])])
def test_dropped_blocks_run_no_forward_in_prefill_or_decode(tiny_vlm, batch, num_blocks, kept):
    calls = [0] * tiny_vlm.num_blocks_total
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, b in enumerate(tiny_vlm.blocks)]
    try:
        gen = tiny_vlm.generate(_inputs(tiny_vlm, batch, "low"), Knobs("low", 1, num_blocks), max_new_tokens=3,
                                min_new_tokens=3)
    finally:
        for h in handles:
            h.remove()
    assert gen.num_generated == [3] * len(batch)
    assert calls == [3 if i in kept else 0 for i in range(tiny_vlm.num_blocks_total)]  # prefill + 2 decodes
    assert tiny_vlm.kept_blocks(num_blocks) == kept


def test_knobs_change_outputs_and_are_restored(tiny_vlm, batch):
    logits = {}
    for knobs in (Knobs("high", 4, 4), Knobs("high", 1, 4), Knobs("high", 4, 2), Knobs("low", 4, 4)):
        inputs = _inputs(tiny_vlm, batch, knobs.tier)
        with tiny_vlm.apply(knobs), torch.no_grad():
            logits[knobs] = tiny_vlm.model(**inputs).logits[:, -1]
    full = logits[Knobs("high", 4, 4)]
    assert all(not torch.allclose(full, v, atol=1e-4) for k, v in logits.items() if k != Knobs("high", 4, 4))
    assert tiny_vlm.knobs == tiny_vlm.knob_space.full
    assert len(tiny_vlm.language_model.layers) == 4 and all(r.top_k == 4 for r in tiny_vlm.routers)


def test_cheapest_setting_does_less_work_and_takes_less_time(tiny_vlm, batch):
    from torch.utils.flop_counter import FlopCounterMode

    inputs = {t: _inputs(tiny_vlm, batch[:1], t) for t in ("low", "high")}
    cheap, full = tiny_vlm.knob_space.cheapest, tiny_vlm.knob_space.full
    flops, cpu = {}, {cheap: [], full: []}
    for knobs in (cheap, full):
        with FlopCounterMode(display=False) as counter:
            tiny_vlm.generate(inputs[knobs.tier], knobs, max_new_tokens=4, min_new_tokens=4)
        flops[knobs] = counter.get_total_flops()
    for _ in range(9):  # interleaved; process CPU time is robust to other load on the machine
        for knobs in (cheap, full):
            start = time.process_time()
            tiny_vlm.generate(inputs[knobs.tier], knobs, max_new_tokens=4, min_new_tokens=4)
            cpu[knobs].append(time.process_time() - start)
    assert flops[cheap] < 0.5 * flops[full]
    assert statistics.median(cpu[cheap]) < 0.8 * statistics.median(cpu[full])


@pytest.mark.parametrize("knobs,match", [
    (Knobs("high", 0, 4), "top_k=0"),
    (Knobs("ultra", 2, 4), "tier='ultra'"),
    (Knobs("high", 2, 9), "num_blocks=9"),
])
def test_bad_knobs_raise_one_clear_error(tiny_vlm, knobs, match):
    with pytest.raises(KnobError, match=match) as err:
        tiny_vlm.set_knobs(knobs)
    assert "use one of" in str(err.value) and "\n" not in str(err.value)
    assert tiny_vlm.knobs == tiny_vlm.knob_space.full


def test_save_and_from_pretrained_give_identical_outputs(tiny_vlm, batch, tmp_path):
    from grpo_ctrl.vlm import load_vlm

    tiny_vlm.save_pretrained(tmp_path, extra={"recipe": {"seed": 0}})
    (tmp_path / "block_importance.json").write_text('{"drop_order": [3, 1, 2]}')
    loaded = load_vlm(tmp_path)
    assert loaded.knob_space == tiny_vlm.knob_space and loaded.block_drop_order == [3, 1, 2]
    knobs = Knobs("medium", 2, 3)
    a = tiny_vlm.generate(_inputs(tiny_vlm, batch, "medium"), knobs, max_new_tokens=3, min_new_tokens=3)
    b = loaded.generate(_inputs(loaded, batch, "medium"), knobs, max_new_tokens=3, min_new_tokens=3)
    assert torch.equal(a.new_tokens, b.new_tokens)


def test_empty_model_dir_is_one_clear_error(tmp_path):
    from grpo_ctrl.vlm import ModelDirError, load_vlm

    with pytest.raises(ModelDirError, match="has no config.json") as err:
        load_vlm(tmp_path)
    assert "\n" not in str(err.value)


def test_precomputed_vision_features_give_the_same_answers(tiny_vlm, batch):
    knobs = Knobs("medium", 2, 3)
    for sample in batch:
        inputs = _inputs(tiny_vlm, [sample], "medium")
        vision = tiny_vlm.encode_vision(inputs, "medium")
        a = tiny_vlm.generate(inputs, knobs, max_new_tokens=3, min_new_tokens=3)
        b = tiny_vlm.generate(tiny_vlm.text_inputs(inputs), knobs, max_new_tokens=3, min_new_tokens=3, vision=vision)
        assert torch.equal(a.new_tokens, b.new_tokens)
