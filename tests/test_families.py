"""Every supported family through the one adapter boundary, on tiny random-weight models saved as transformers
saves them (no grpo_ctrl files): each knob changes counted work, full settings give a fresh load's logits,
pre-encoded vision gives the same answers, hooked timing and one training run work; bad directories stop with
one line before weights load."""

from __future__ import annotations

import json
import math

import pytest
import torch

from grpo_ctrl.data import GridVQA
from grpo_ctrl.knobs import KnobError, Knobs
from grpo_ctrl.latency.experiment import LatencyExperiment
from grpo_ctrl.vlm import ModelDirError, load_vlm
from grpo_ctrl.vlm.adapter import continued
from grpo_ctrl.vlm.tiny import FAMILIES, write_family_dir
from grpo_ctrl.vlm.tiny import TINY_KNOBS as KNOBS


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def model_dir(family, tmp_path_factory):
    return write_family_dir(family, tmp_path_factory.mktemp(family))


@pytest.fixture
def load(family):
    return lambda path, **kw: load_vlm(path, knob_space=KNOBS.get(family), **kw)


@pytest.fixture(scope="module")
def samples():
    return GridVQA().split("val", 2)


def test_tier_sets_image_tokens_that_reach_the_language_model(load, model_dir, samples):
    vlm = load(model_dir)
    counts = []
    for tier in vlm.knob_space.tier_names:
        inputs = vlm.inputs([samples[0].image], [samples[0].question], tier)
        seen = []

        def width(module, args, kwargs, seen=seen):
            seen.append((args[0] if args else kwargs["hidden_states"]).shape[1])

        handle = vlm.language_model.layers[0].register_forward_pre_hook(width, with_kwargs=True)
        try:
            vlm.generate(inputs, Knobs(tier, max(vlm.knob_space.top_ks), vlm.num_blocks_total), max_new_tokens=1)
        finally:
            handle.remove()
        tokens = vlm.image_tokens(inputs)[0]
        assert seen == [inputs["input_ids"].shape[1]]  # the prefill carries exactly the prompt, image tokens included
        assert vlm.encode_vision(inputs, tier)[0]["image_features"].shape[0] == tokens
        counts.append(tokens)
    assert counts == sorted(counts) and len(set(counts)) == len(counts)  # cheapest tier first, each distinct


def test_top_k_sets_experts_evaluated_per_token(load, model_dir, samples):
    vlm = load(model_dir)
    if not vlm.routers:
        assert vlm.knob_space.top_ks == (1,)  # a dense backbone has one top-k value
        return
    inputs = vlm.inputs([samples[0].image], [samples[0].question], "low")
    assert len(vlm.routers) == vlm.num_blocks_total
    for top_k in vlm.knob_space.top_ks:
        per_token = []

        def count(module, args, per_token=per_token):
            per_token.append((args[1].shape[-1], args[1].numel() // args[0].shape[0]))

        handles = [b.mlp.experts.register_forward_pre_hook(count) for b in vlm.blocks]
        try:
            vlm.generate(inputs, Knobs("low", top_k, vlm.num_blocks_total), max_new_tokens=2, min_new_tokens=2)
        finally:
            for h in handles:
                h.remove()
        assert len(per_token) == vlm.num_blocks_total * 2  # every block, prefill + 1 decode step
        assert set(per_token) == {(top_k, top_k)}


def test_dropped_blocks_run_no_forward_in_prefill_or_decode(load, model_dir, samples):
    vlm = load(model_dir)
    inputs = vlm.inputs([samples[0].image], [samples[0].question], "low")
    for num_blocks in vlm.knob_space.num_blocks:
        calls = [0] * vlm.num_blocks_total
        handles = [b.register_forward_pre_hook(lambda m, a, i=i, calls=calls: calls.__setitem__(i, calls[i] + 1))
                   for i, b in enumerate(vlm.blocks)]
        try:
            vlm.generate(inputs, Knobs("low", 1, num_blocks), max_new_tokens=3, min_new_tokens=3)
        finally:
            for h in handles:
                h.remove()
        kept = vlm.kept_blocks(num_blocks)
        assert len(kept) == num_blocks and kept[0] == 0
        assert calls == [3 if i in kept else 0 for i in range(vlm.num_blocks_total)]


def test_back_at_full_the_logits_equal_a_fresh_load(load, model_dir, samples):
    vlm, fresh = load(model_dir), load(model_dir)
    space = vlm.knob_space
    inputs = vlm.inputs([s.image for s in samples], [s.question for s in samples], space.full.tier)
    with torch.no_grad():
        for knobs in (space.cheapest, Knobs(space.full.tier, min(space.top_ks), min(space.num_blocks))):
            with vlm.apply(knobs):
                changed = vlm.first_token_logits(vlm.inputs([s.image for s in samples],
                                                            [s.question for s in samples], knobs.tier))
        with vlm.apply(space.full):
            assert torch.equal(vlm.first_token_logits(inputs), fresh.first_token_logits(inputs))
    assert changed.shape == fresh.first_token_logits(inputs).shape


def test_device_map_load_takes_knobs_and_gives_a_plain_loads_logits(load, model_dir, samples):
    mapped, plain = load(model_dir, device_map="auto"), load(model_dir)  # accelerate places it (here: all on CPU)
    space = mapped.knob_space
    with torch.no_grad():
        for knobs in (space.cheapest, space.full):
            inputs = mapped.inputs([s.image for s in samples], [s.question for s in samples], knobs.tier)
            with mapped.apply(knobs), plain.apply(knobs):
                assert torch.equal(mapped.first_token_logits(inputs), plain.first_token_logits(inputs))


def test_pre_encoded_vision_gives_the_same_answers(load, model_dir, samples):
    vlm = load(model_dir)
    for tier in vlm.knob_space.tier_names:
        knobs = Knobs(tier, max(vlm.knob_space.top_ks), min(vlm.knob_space.num_blocks))
        inputs = vlm.inputs([samples[1].image], [samples[1].question], tier)
        a = vlm.generate(inputs, knobs, max_new_tokens=3, min_new_tokens=3)
        b = vlm.generate(vlm.text_inputs(inputs), knobs, max_new_tokens=3, min_new_tokens=3,
                         vision=vlm.encode_vision(inputs, tier))
        assert torch.equal(a.new_tokens, b.new_tokens)


def test_a_batch_with_pre_encoded_vision_answers_as_each_row_alone(load, model_dir, samples):
    """The rollout plan's batches: left-padded rows of different lengths, vision encoded as one batch."""
    vlm = load(model_dir)
    rows = list(GridVQA().split("val", 4))  # questions of different lengths
    for tier in vlm.knob_space.tier_names:
        knobs = Knobs(tier, max(vlm.knob_space.top_ks), min(vlm.knob_space.num_blocks))
        inputs = vlm.inputs([s.image for s in rows], [s.question for s in rows], tier)
        batch = vlm.generate(vlm.text_inputs(inputs), knobs, max_new_tokens=3, min_new_tokens=3,
                             vision=vlm.encode_vision(inputs, tier))
        for i, s in enumerate(rows):
            alone = vlm.inputs([s.image], [s.question], tier)
            assert vlm.image_tokens(inputs)[i] == vlm.image_tokens(alone)[0]
            assert vlm.prompt_tokens(inputs)[i] == alone["input_ids"].shape[1]
            one = vlm.generate(alone, knobs, max_new_tokens=3, min_new_tokens=3)
            assert torch.equal(batch.new_tokens[i], one.new_tokens[0])


def test_a_multi_token_gold_answer_is_scored_teacher_forced(load, model_dir, samples):
    vlm = load(model_dir)
    knobs, s = vlm.knob_space.full, samples[0]
    inputs = vlm.inputs([s.image], [s.question], knobs.tier)
    answer = "red blue"
    ids = vlm.tokenizer.encode(answer, add_special_tokens=False)
    assert len(ids) >= 2
    with torch.no_grad(), vlm.apply(knobs):  # one forward per prefix: p(token t | prompt + tokens before t)
        steps = [float(vlm.first_token_logits(continued(inputs, ids[:t])).float().log_softmax(-1)[0, ids[t]])
                 for t in range(len(ids))]
    expected = math.exp(sum(steps) / len(steps))
    assert vlm.answer_probability(inputs, None, answer, knobs) == pytest.approx(expected, rel=1e-4)
    pre_encoded = vlm.encode_vision(inputs, knobs.tier)
    assert vlm.answer_probability(vlm.text_inputs(inputs), pre_encoded, answer, knobs) == pytest.approx(expected,
                                                                                                        rel=1e-4)


def test_one_hooked_measurement(load, model_dir, samples):
    exp = LatencyExperiment(vlm=load(model_dir))
    t = exp.measure_inference_latency(samples[0], exp.vlm.knob_space.full, max_new_tokens=3, min_new_tokens=3)
    assert t.vision > 0 and t.prefill > 0 and t.num_decode_steps == 2
    assert t.vision + t.prefill + t.decode == pytest.approx(t.total)
    assert t.image_tokens == exp.vlm.image_tokens(exp.inputs_for(samples[0], exp.vlm.knob_space.full))[0]


def test_train_runs_on_the_family(family, model_dir, tmp_path):
    from conftest import CONF
    from hydra import compose, initialize_config_dir

    from grpo_ctrl.app import train
    from grpo_ctrl.config import register_configs
    from grpo_ctrl.latency import LatencyEstimator
    from grpo_ctrl.parallel import ParallelContext

    register_configs()
    est = LatencyEstimator({"vision": [0.5, 0.02, 0.0], "prefill": [1.0, 0.01, 0.01, 0.004, 0.2, 0.05, 0.0],
                            "decode_step": [0.3, 0.3, 0.1, 0.0], "finish": [1.0, 0.1]},
                           {"model": load_vlm(model_dir).signature})
    path = est.save(tmp_path / "estimator.json")
    tiers = KNOBS.get(family, {}).get("tiers")
    tiers = ["model.knobs.tiers={" + ",".join(f"{k}:{v}" for k, v in tiers.items()) + "}"] if tiers else []
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=hf", f"model.path={model_dir}", f"latency.estimator_path={path}", "steps=2", "val_every=2",
            "ckpt_every=2", "prompts_per_step=2", "group_size=2", "data.train_size=4", "data.val_size=2",
            "logger=none", "progress=false", "threads=1", "rollout.workers=1", "budgets.val=[0.5,1.0]", *tiers])
    report = train(cfg, tmp_path / "run", ParallelContext())
    assert set(report["budgets"]) == {"0.5", "1"}
    assert (tmp_path / "run" / "controller.pt").is_file()


# ---------------------------------------------------------------- bad model directories: one line, no weights


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def _no_weight_loads(monkeypatch):
    from grpo_ctrl.vlm import loading

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    for adapter in loading.ADAPTERS:
        monkeypatch.setattr(adapter.model_class, "from_pretrained", refuse)


def test_missing_and_empty_dirs(tmp_path, monkeypatch):
    _no_weight_loads(monkeypatch)
    with pytest.raises(ModelDirError, match="no such directory") as err:
        load_vlm(tmp_path / "absent")
    _one_line(err)
    with pytest.raises(ModelDirError, match="has no config.json") as err:
        load_vlm(tmp_path)
    _one_line(err)


def test_text_only_and_unknown_family(tmp_path, monkeypatch):
    _no_weight_loads(monkeypatch)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe", "num_hidden_layers": 4}))
    with pytest.raises(ModelDirError, match="text-only model .model_type 'qwen3_moe'.*llava") as err:
        load_vlm(tmp_path)
    _one_line(err)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "idefics3", "vision_config": {}}))
    with pytest.raises(ModelDirError, match="'idefics3' has no grpo-ctrl adapter") as err:
        load_vlm(tmp_path)
    _one_line(err)


def test_missing_processor_files(model_dir, tmp_path, monkeypatch):
    _no_weight_loads(monkeypatch)
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    with pytest.raises(ModelDirError, match="no processor files") as err:
        load_vlm(tmp_path)
    _one_line(err)


@pytest.mark.parametrize("knobs,match", [
    ({"top_ks": [1, 16]}, "exceed the model's 4 experts"),
    ({"num_blocks": [2, 9]}, "exceed the model's 4 blocks"),
    ({"tiers": {"low": 3, "high": 1}}, "divides the model's 8x8 patch grid"),
])
def test_knob_space_beyond_the_model(family, model_dir, monkeypatch, knobs, match):
    if family == "llava-qwen3" and "top_ks" in knobs:
        match = "the model is dense"
    if family == "qwen3_vl_moe" and "tiers" in knobs:
        match = "one image token needs 1024 pixels"
    _no_weight_loads(monkeypatch)
    with pytest.raises(KnobError, match=match) as err:
        load_vlm(model_dir, knob_space=knobs)
    _one_line(err)


@pytest.mark.slow
def test_train_py_stops_before_loading_on_a_bad_dir(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for args, match in ((["model=hf"], "model=hf needs model.path"),
                        (["model=hf", f"model.path={tmp_path}"], "has no config.json")):
        res = subprocess.run([sys.executable, "train.py", *args, "logger=none"], cwd=root, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 2 and match in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
