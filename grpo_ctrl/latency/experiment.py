"""Latency experiments: the shared set-up (config, model, data, output dir, JSON results) of a study that times
inference, and `LatencyExperiment.measure_inference_latency`, one generate() split into phases by forward hooks.
Subclass `BaseExperiment` for your own study (the scripts in experiments/ are its users).

    exp = LatencyExperiment(cfg)                 # builds vlm from cfg.model, data from cfg.data (lazily)
    exp = LatencyExperiment(vlm=vlm)             # around a model you already have
    timing = exp.measure_inference_latency(sample_or_inputs, knobs, max_new_tokens=4, min_new_tokens=4)
    exp.save_results("latency", {...})           # -> <output dir>/latency.json
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from grpo_ctrl.artifacts import write_json
from grpo_ctrl.data import VQASample
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.latency.hooked import PhaseTiming, hooked_generate


def hydra_output_dir() -> Path | None:
    """Hydra's runtime output dir when running inside a Hydra app, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    if not HydraConfig.initialized():
        return None
    return Path(HydraConfig.get().runtime.output_dir)


class BaseExperiment:
    """Holds the config and builds what an experiment needs on first use.

    - `vlm`: the one passed in, else `build_vlm(cfg.model)`;
    - `data`: the one passed in, else `build_data(cfg.data)`;
    - `output_dir`: `output_dir` when given, else Hydra's runtime output dir inside a Hydra app, else
      `outputs/<experiment name>/<timestamp>`; created on first use.
    """

    name = "experiment"

    def __init__(self, cfg: Any = None, vlm=None, data=None, output_dir: str | Path | None = None):
        self.cfg = cfg
        self._vlm = vlm
        self._data = data
        self._output_dir = Path(output_dir) if output_dir is not None else None

    @property
    def vlm(self):
        if self._vlm is None:
            from grpo_ctrl.build import build_vlm

            if self.cfg is None or self.cfg.get("model") is None:
                raise ValueError(f"{type(self).__name__}: pass vlm= or a cfg with a `model` node")
            self._vlm = build_vlm(self.cfg.model)
        return self._vlm

    @property
    def data(self):
        if self._data is None:
            from grpo_ctrl.build import build_data

            if self.cfg is None or self.cfg.get("data") is None:
                raise ValueError(f"{type(self).__name__}: pass data= or a cfg with a `data` node")
            self._data = build_data(self.cfg.data)
        return self._data

    @property
    def output_dir(self) -> Path:
        if self._output_dir is None:
            self._output_dir = hydra_output_dir() or Path("outputs") / self.name / time.strftime("%Y-%m-%d_%H-%M-%S")
        self._output_dir.mkdir(parents=True, exist_ok=True)
        return self._output_dir

    def save_results(self, name: str, results: dict) -> Path:
        """Write `results` as JSON to `<output_dir>/<name>.json` (atomically); returns the path."""
        return write_json(self.output_dir / (name if name.endswith(".json") else f"{name}.json"), results,
                          default=_jsonable)


def _jsonable(obj: Any):
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


class LatencyExperiment(BaseExperiment):
    """Experiments that time inference phases with forward hooks (see `grpo_ctrl.latency.hooked`)."""

    name = "latency"

    def default_max_new_tokens(self) -> int:
        model_cfg = self.cfg.get("model") if self.cfg is not None else None
        return int(model_cfg.get("max_new_tokens", 2)) if model_cfg is not None else 2

    def inputs_for(self, sample: VQASample, knobs: Knobs) -> dict[str, torch.Tensor]:
        """Batch-1 model inputs of `sample` at the tier of `knobs`, on the model's device."""
        inputs = self.vlm.inputs([sample.image], [sample.question], knobs.tier)
        return {k: v.to(self.vlm.model.device) for k, v in inputs.items()}

    def measure_inference_latency(self, inputs_or_sample: dict[str, torch.Tensor] | VQASample, knobs: Knobs,
                                  max_new_tokens: int | None = None, min_new_tokens: int | None = None,
                                  vision: dict[str, torch.Tensor] | None = None) -> PhaseTiming:
        """Vision / prefill / decode (+ per-step decode) ms, which sum to the total, and token counts of ONE
        batch-1 generate() call, from forward hooks that are removed afterwards (also when generate raises)."""
        if isinstance(inputs_or_sample, VQASample):
            inputs = self.inputs_for(inputs_or_sample, knobs)
        else:  # moved before the clock starts (a no-op when already there)
            inputs = {k: v.to(self.vlm.model.device) for k, v in inputs_or_sample.items()}
        if max_new_tokens is None:
            max_new_tokens = self.default_max_new_tokens()
        timing, _ = hooked_generate(self.vlm, inputs, knobs, max_new_tokens=max_new_tokens,
                                    min_new_tokens=min_new_tokens, vision=vision)
        return timing
