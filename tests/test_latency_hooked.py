"""Hooked latency: phases of one generate() call, hooks always removed, providers count their runs."""

import numpy as np
import pytest
import torch

from grpo_ctrl.data import GridVQA
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.latency import HookedLatency, MeasuredLatency, PhaseTimer, PhaseTiming, Request
from grpo_ctrl.latency.experiment import LatencyExperiment


@pytest.fixture
def sample():
    return GridVQA().split("test", 1)[0]


def _hook_state(vlm):
    phases = vlm.phase_modules()
    mods = [phases.forward, phases.vision_start, phases.vision_end]
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in mods]


@pytest.mark.parametrize("knobs,n", [(Knobs("medium", 2, 3), 3), (Knobs("high", 4, 4), 1), (Knobs("low", 1, 2), 5)])
def test_phases_of_one_generate_are_consistent(tiny_vlm, sample, knobs, n):
    exp = LatencyExperiment(vlm=tiny_vlm)
    t = exp.measure_inference_latency(sample, knobs, max_new_tokens=n, min_new_tokens=n)
    assert isinstance(t, PhaseTiming)
    assert min(t.vision, t.prefill, t.decode, *t.decode_steps_ms) >= 0
    assert t.vision > 0 and t.prefill > 0 and t.total > 0
    assert t.num_decode_steps == n - 1 and t.generated_tokens == n
    assert sum(t.decode_steps_ms) <= t.decode  # the decode phase adds the finish after the last forward
    assert t.vision + t.prefill + t.decode == pytest.approx(t.total)
    assert t.covered == pytest.approx(1.0)
    assert 0 < t.vision < t.forward_ms < t.total  # the model's work is inside the phases, not all of them
    question = len(tiny_vlm.tokenizer.encode(sample.question, add_special_tokens=False))
    assert t.image_tokens == tiny_vlm.num_image_tokens(tiny_vlm.knob_space.tiers[knobs.tier])
    assert t.prompt_tokens == 1 + t.image_tokens + question


def test_pre_encoded_vision_has_zero_vision_phase(tiny_vlm, sample):
    exp = LatencyExperiment(vlm=tiny_vlm)
    knobs = Knobs("medium", 2, 4)
    inputs = exp.inputs_for(sample, knobs)
    vision = tiny_vlm.encode_vision(inputs, "medium")
    t = exp.measure_inference_latency(inputs, knobs, max_new_tokens=2, min_new_tokens=2, vision=vision)
    assert t.vision == 0 and t.prefill > 0 and t.num_decode_steps == 1


def test_hooks_are_removed_when_generate_raises(tiny_vlm, sample, monkeypatch):
    before = _hook_state(tiny_vlm)
    during = []

    def boom(*args, **kwargs):
        during.append(_hook_state(tiny_vlm))
        raise RuntimeError("boom")

    monkeypatch.setattr(tiny_vlm.model.lm_head, "forward", boom)
    with pytest.raises(RuntimeError, match="boom"):
        LatencyExperiment(vlm=tiny_vlm).measure_inference_latency(sample, Knobs("low", 1, 2), max_new_tokens=2)
    assert during and during[0] != before  # the hooks were attached while generate ran
    assert _hook_state(tiny_vlm) == before
    assert tiny_vlm.knobs == tiny_vlm.knob_space.full  # the knobs context was restored too


def test_hooks_are_removed_after_a_normal_call(tiny_vlm, sample):
    before = _hook_state(tiny_vlm)
    LatencyExperiment(vlm=tiny_vlm).measure_inference_latency(sample, Knobs("low", 1, 2), max_new_tokens=2)
    assert _hook_state(tiny_vlm) == before


def test_timer_reset_replaces_lists_and_hooks_still_record(tiny_vlm, sample):
    inputs = tiny_vlm.inputs([sample.image], [sample.question], "low")
    timer = PhaseTimer(tiny_vlm)
    with timer:
        timer.reset()
        tiny_vlm.generate(inputs, Knobs("low", 1, 2), max_new_tokens=3, min_new_tokens=3)
    assert len(timer.vision_intervals) == 1 and len(timer.forward_intervals) == 3
    with pytest.raises(RuntimeError):
        with timer:
            timer.attach()
    assert _hook_state(tiny_vlm)[0] == (0, 0)


def test_phase_timing_median_is_per_field():
    runs = [PhaseTiming(1, 2, 3, 7, (1.0, 2.0), 5, 4, 10, 3), PhaseTiming(3, 2, 5, 10, (2.0, 3.0), 6, 4, 10, 3),
            PhaseTiming(2, 4, 4, 12, (1.5, 2.5), 4, 4, 10, 3)]
    m = PhaseTiming.median(runs)
    assert (m.vision, m.prefill, m.decode, m.total, m.forward_ms) == (2, 2, 4, 10, 5)
    assert m.decode_steps_ms == (1.5, 2.5) and m.generated_tokens == 3


class _FakeExperiment:
    def __init__(self):
        self.calls = []

    def measure_inference_latency(self, inputs, knobs, max_new_tokens=None, min_new_tokens=None):
        self.calls.append((max_new_tokens, min_new_tokens))
        total = float(len(self.calls))
        return PhaseTiming(0.0, total, 0.0, total, (0.0,) * (max_new_tokens - 1), 0.0, 4, 10, max_new_tokens)


def test_hooked_provider_interleaves_passes_and_takes_the_median():
    exp = _FakeExperiment()
    provider = HookedLatency(exp, warmup=2, repeats=3)
    reqs = [Request(Knobs("low", 1, 2), 4, 10, 4, {"input_ids": None}),
            Request(Knobs("low", 1, 2), 4, 10, 2, {"input_ids": None})]
    out = provider.latency_ms(reqs)
    assert len(exp.calls) == 10 and all(a == b for a, b in exp.calls)  # forced length: min == max
    # five passes, each runs both requests once (in its own order): the calls alternate pass by pass
    assert all(sorted(exp.calls[2 * p: 2 * p + 2]) == [(2, 2), (4, 4)] for p in range(5))
    # each request's latency is the median of its calls in the three timed passes (calls 5..10)
    for req, value in zip(reqs, out):
        timed = [i + 1 for i, c in enumerate(exp.calls) if i >= 4 and c[0] == req.generated_tokens]
        assert value == float(np.median(timed))
    assert [p.generated_tokens for p in provider.last_phases] == [4, 2]
    with pytest.raises(ValueError, match="inputs"):
        provider.latency_ms([Request(Knobs("low", 1, 2), 4, 10, 2)])


def test_hooked_provider_min_statistic_keeps_each_requests_fastest_run():
    exp = _FakeExperiment()  # the n-th call takes n ms: a request's fastest timed run is its first
    provider = HookedLatency(exp, warmup=1, repeats=3, statistic="min")
    reqs = [Request(Knobs("low", 1, 2), 4, 10, 4, {"input_ids": None}),
            Request(Knobs("low", 1, 2), 4, 10, 2, {"input_ids": None})]
    out = provider.latency_ms(reqs)
    for req, value, phases in zip(reqs, out, provider.last_phases):
        timed = [i + 1 for i, c in enumerate(exp.calls) if i >= 2 and c[0] == req.generated_tokens]
        assert value == min(timed) == phases.total and phases.generated_tokens == req.generated_tokens
    with pytest.raises(ValueError, match="statistic='mean'"):
        HookedLatency(exp, statistic="mean")


def test_hooked_provider_on_the_tiny_model(tiny_vlm, sample):
    provider = HookedLatency(LatencyExperiment(vlm=tiny_vlm), warmup=0, repeats=1)
    knobs = Knobs("high", 2, 3)
    req = Request.for_vlm(tiny_vlm, tiny_vlm.inputs([sample.image], [sample.question], "high"), knobs, 3)
    out = provider.latency_ms([req])
    assert out.shape == (1,) and out[0] > 0
    assert provider.last_phases[0].num_decode_steps == 2 and provider.last_phases[0].total == out[0]


def test_measured_provider_respects_warmup_repeats_and_forced_length(tiny_vlm, sample, monkeypatch):
    calls = []
    original = tiny_vlm.generate

    def counting(inputs, knobs, max_new_tokens=2, min_new_tokens=None, vision=None):
        calls.append((knobs, max_new_tokens, min_new_tokens))
        return original(inputs, knobs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)

    monkeypatch.setattr(tiny_vlm, "generate", counting)
    inputs = tiny_vlm.inputs([sample.image], [sample.question], "low")
    a, b = Knobs("low", 1, 2), Knobs("low", 4, 4)
    provider = MeasuredLatency(tiny_vlm, warmup=2, repeats=3)
    out = provider.latency_ms([Request.for_vlm(tiny_vlm, inputs, a, 3), Request.for_vlm(tiny_vlm, inputs, b, 1)])
    assert sorted(calls) == sorted([(a, 3, 3)] * 5 + [(b, 1, 1)] * 5)
    assert all({c[0] for c in calls[2 * p: 2 * p + 2]} == {a, b} for p in range(5))  # passes over both
    assert out.shape == (2,) and (out > 0).all()
    assert [s.n for s in provider.last_stats] == [3, 3]
    assert out[0] == provider.last_stats[0].p50
    fastest = MeasuredLatency(tiny_vlm, warmup=0, repeats=3, statistic="min")
    out = fastest.latency_ms([Request.for_vlm(tiny_vlm, inputs, a, 3)])
    assert out[0] == fastest.last_stats[0].min <= fastest.last_stats[0].p50


@pytest.mark.parametrize("make", [
    lambda vlm: MeasuredLatency(vlm, warmup=1, repeats=2, threads=1),
    lambda vlm: HookedLatency(LatencyExperiment(vlm=vlm), warmup=1, repeats=2, threads=1),
])
def test_providers_time_with_their_threads_and_restore_the_process_threads(tiny_vlm, sample, monkeypatch, make):
    torch.set_num_threads(2)
    seen = []
    original = tiny_vlm.generate

    def spying(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_vlm, "generate", spying)
    inputs = tiny_vlm.inputs([sample.image], [sample.question], "low")
    make(tiny_vlm).latency_ms([Request.for_vlm(tiny_vlm, inputs, Knobs("low", 1, 2), 2)])
    assert seen == [1, 1, 1] and torch.get_num_threads() == 2


def test_measured_provider_rejects_batches_and_missing_inputs(tiny_vlm):
    samples = GridVQA().split("test", 2)
    batch = tiny_vlm.inputs([s.image for s in samples], [s.question for s in samples], "low")
    provider = MeasuredLatency(tiny_vlm, warmup=0, repeats=1)
    with pytest.raises(ValueError, match="batch"):
        provider.latency_ms([Request(Knobs("low", 1, 2), 4, 10, 2, batch)])
    with pytest.raises(ValueError, match="inputs"):
        provider.latency_ms([Request(Knobs("low", 1, 2), 4, 10, 2)])


def test_request_counts_exclude_padding(tiny_vlm):
    samples = GridVQA().split("test", 8)
    lengths = [len(tiny_vlm.tokenizer.encode(s.question, add_special_tokens=False)) for s in samples]
    short = int(np.argmin(lengths))
    assert min(lengths) < max(lengths)
    batch = tiny_vlm.inputs([s.image for s in samples], [s.question for s in samples], "medium")
    row = {k: v[short:short + 1] for k, v in batch.items()}
    req = Request.for_vlm(tiny_vlm, row, Knobs("medium", 1, 2), 2)
    assert req.image_tokens == 16 and req.prompt_tokens == 1 + 16 + lengths[short]
    assert req.text_tokens == 1 + lengths[short]
