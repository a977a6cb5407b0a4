"""make_latency_provider and BaseExperiment set-up."""

import json

import pytest
from omegaconf import OmegaConf

from grpo_ctrl.config import LatencyConfig
from grpo_ctrl.data import GridVQA
from grpo_ctrl.data.synthetic import GridVQAConfig
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.latency import (
    EstimatorError,
    EstimatorLatency,
    HookedLatency,
    LatencyEstimator,
    LatencyProvider,
    MeasuredLatency,
    Request,
    make_latency_provider,
)
from grpo_ctrl.latency.experiment import BaseExperiment, LatencyExperiment
from grpo_ctrl.latency.providers import estimator_path

COEF = {"vision": [1, 0, 0], "prefill": [1, 0.01, 0, 0, 0.1, 0, 0], "decode_step": [0.5, 0.2, 0, 0],
        "finish": [2, 0.1]}


def _latency_cfg(**kw):
    return OmegaConf.structured(LatencyConfig(**kw))


def test_factory_builds_each_kind(tiny_vlm, tmp_path):
    path = LatencyEstimator(COEF).save(tmp_path / "est.json")
    cfg = _latency_cfg(estimator_path=str(path), warmup=2, repeats=4, threads=1)
    est = make_latency_provider("estimator", tiny_vlm, cfg)
    measured = make_latency_provider("measured", tiny_vlm, cfg)
    hooked = make_latency_provider("hooked", tiny_vlm, cfg)
    assert isinstance(est, EstimatorLatency) and not est.needs_inputs
    assert isinstance(measured, MeasuredLatency) and (measured.warmup, measured.repeats, measured.threads) == (2, 4, 1)
    assert isinstance(hooked, HookedLatency) and isinstance(hooked.experiment, LatencyExperiment)
    assert hooked.threads == 1 and make_latency_provider("measured", tiny_vlm, _latency_cfg()).threads is None
    assert hooked.experiment.vlm is tiny_vlm and measured.needs_inputs and hooked.needs_inputs
    for p in (est, measured, hooked):
        assert isinstance(p, LatencyProvider)
    exp = LatencyExperiment(vlm=tiny_vlm)
    assert make_latency_provider("hooked", tiny_vlm, cfg, experiment=exp).experiment is exp
    req = Request(Knobs("low", 1, 2), 4, 12, 3)
    assert est.latency_ms([req])[0] == pytest.approx(1 + 1 + 0.12 + 0.2 + 2 * (0.5 + 0.4) + 2 + 0.2)


def test_factory_errors(tiny_vlm, tmp_path):
    with pytest.raises(EstimatorError, match="experiments/profile_latency.py"):
        make_latency_provider("estimator", tiny_vlm, _latency_cfg(estimator_path=str(tmp_path / "missing.json")))
    with pytest.raises(ValueError, match="unknown"):
        make_latency_provider("stopwatch", tiny_vlm, _latency_cfg())


def test_estimator_path_follows_the_model_dir_and_never_falls_back(tmp_path):
    LatencyEstimator(COEF).save(tmp_path / "latency_estimator.json")
    assert estimator_path(_latency_cfg(), tmp_path) == tmp_path / "latency_estimator.json"
    explicit = tmp_path / "mine.json"
    assert estimator_path(_latency_cfg(estimator_path=str(explicit)), tmp_path) == explicit
    with pytest.raises(EstimatorError, match="no latency estimator for the model at .*profile_latency.py") as err:
        estimator_path(_latency_cfg(), tmp_path / "elsewhere")
    assert "\n" not in str(err.value)
    with pytest.raises(EstimatorError, match="set latency.estimator_path"):
        estimator_path(_latency_cfg(), None)


def test_an_estimator_fitted_on_another_model_is_refused(tiny_vlm, tmp_path):
    path = LatencyEstimator(COEF, {"model": {**tiny_vlm.signature, "layers": 99}}).save(tmp_path / "est.json")
    with pytest.raises(EstimatorError, match="fitted on another model: layers 99 .estimator. vs 4 .model."):
        make_latency_provider("estimator", tiny_vlm, _latency_cfg(estimator_path=str(path)))
    same = LatencyEstimator(COEF, {"model": tiny_vlm.signature}).save(tmp_path / "same.json")
    assert make_latency_provider("estimator", tiny_vlm, _latency_cfg(estimator_path=str(same))).name == "estimator"


def test_base_experiment_builds_data_and_writes_results(tmp_path):
    cfg = OmegaConf.create({"data": OmegaConf.structured(GridVQAConfig())})
    exp = BaseExperiment(cfg, output_dir=tmp_path / "out")
    assert len(exp.data.split("test", 2)) == 2
    path = exp.save_results("report", {"a": 1, "path": tmp_path})
    assert path == tmp_path / "out" / "report.json"
    assert json.loads(path.read_text()) == {"a": 1, "path": str(tmp_path)}
    with pytest.raises(ValueError, match="model"):
        _ = BaseExperiment(cfg, output_dir=tmp_path).vlm


def test_experiment_builds_the_model_from_cfg(tiny_vlm, tmp_path):
    tiny_vlm.save_pretrained(tmp_path / "vlm")
    cfg = OmegaConf.create({"model": {"path": str(tmp_path / "vlm"), "knobs": {"tiers": None, "top_ks": [1, 2],
                                      "num_blocks": None}, "dtype": "float32", "device": "cpu",
                                      "max_new_tokens": 3}})
    exp = LatencyExperiment(cfg, output_dir=tmp_path / "out")
    assert exp.vlm.knob_space.top_ks == (1, 2)
    sample = GridVQA().split("test", 1)[0]
    timing = exp.measure_inference_latency(sample, Knobs("low", 2, 3))
    assert timing.num_decode_steps == timing.generated_tokens - 1 and timing.generated_tokens <= 3
