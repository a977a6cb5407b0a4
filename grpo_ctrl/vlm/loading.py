"""Model directories -> family adapters. The family comes from `config.model_type`, read before any weight loads,
and every problem a directory alone shows (missing, not a VLM, unknown family, knob space beyond the model)
stops with one line (`ModelDirError`, `KnobError`) before the weights are touched.

A directory is what transformers saves: config.json, weights, and the processor's files
(`processor.save_pretrained`). Optional grpo-ctrl files next to them: grpo_ctrl.json (knob space, family
settings), block_importance.json (drop order of knob 3), latency_estimator.json (the fitted estimator).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig

from grpo_ctrl.knobs import KnobSpace
from grpo_ctrl.vlm.adapter import ADAPTER_FILE, IMPORTANCE_FILE, VLMAdapter
from grpo_ctrl.vlm.llava import LlavaAdapter
from grpo_ctrl.vlm.qwen3_vl import Qwen3VLMoeAdapter

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "assets" / "embedded_vlm"
ADAPTERS: tuple[type[VLMAdapter], ...] = (LlavaAdapter, Qwen3VLMoeAdapter)
FAMILIES = {t: a for a in ADAPTERS for t in a.model_types}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
SAVE_HINT = "save it with model.save_pretrained(dir) and processor.save_pretrained(dir)"


class ModelDirError(ValueError):
    """A model directory that cannot be used (one line: what, where, how to fix)."""


@dataclass(frozen=True)
class ModelDir:
    """What a model directory holds, read without loading weights."""

    path: Path
    adapter: type[VLMAdapter]
    config: object  # the transformers config
    meta: dict  # grpo_ctrl.json ({} for a plain transformers directory)
    knob_space: KnobSpace
    drop_order: list[int] | None  # from block_importance.json


def supported() -> str:
    return ", ".join(f"{a.family} ({a.model_class.__name__})" for a in ADAPTERS)


def inspect_model_dir(path: str | Path | None = None, knobs: KnobSpace | dict | None = None) -> ModelDir:
    """Family, config and knob space of a model directory (default: the embedded VLM), before any weight loads.

    `knobs`: a KnobSpace, or a dict of overrides (tiers / top_ks / num_blocks; None or empty entries keep the
    saved or derived values), validated against the model's config."""
    path = Path(path) if path else EMBEDDED_DIR
    if not path.is_dir():
        raise ModelDirError(f"model.path={path}: no such directory; point model.path at a saved model directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelDirError(f"model.path={path} has no config.json, so it is not a transformers model directory; "
                            f"{SAVE_HINT}")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ModelDirError(f"{config_file} is not valid JSON ({err}); re-save the model") from None
    model_type = raw.get("model_type")
    adapter = FAMILIES.get(model_type)
    if adapter is None:
        if "vision_config" not in raw:
            raise ModelDirError(f"model.path={path} holds a text-only model (model_type {model_type!r}); grpo-ctrl "
                                f"drives vision-language models: {supported()}")
        raise ModelDirError(f"model.path={path}: model_type {model_type!r} has no grpo-ctrl adapter; supported "
                            f"families: {supported()}")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise ModelDirError(f"model.path={path} has config.json but no weights ({' / '.join(WEIGHT_FILES[::2])}); "
                            f"{SAVE_HINT}")
    if not any((path / f).is_file() for f in PROCESSOR_FILES):
        raise ModelDirError(f"model.path={path} has no processor files ({' or '.join(PROCESSOR_FILES)}): grpo-ctrl "
                            "builds inputs with the model's own processor; save it with "
                            "AutoProcessor/LlavaProcessor(...).save_pretrained(dir)")
    meta = json.loads((path / ADAPTER_FILE).read_text()) if (path / ADAPTER_FILE).is_file() else {}
    if meta.get("family", adapter.family) != adapter.family:
        raise ModelDirError(f"{path / ADAPTER_FILE} is for family {meta['family']!r} but config.json says "
                            f"{model_type!r}; delete the stale {ADAPTER_FILE}")
    config = AutoConfig.from_pretrained(path)
    space = KnobSpace(**meta["knob_space"]) if "knob_space" in meta else adapter.default_knob_space(config)
    if isinstance(knobs, KnobSpace):
        space = knobs
    elif knobs:
        overrides = {k: v for k, v in dict(knobs).items() if v is not None and len(v)}
        space = KnobSpace(**{**space.to_dict(), **overrides})
    adapter.check_knob_space(config, space)
    importance = path / IMPORTANCE_FILE
    order = json.loads(importance.read_text())["drop_order"] if importance.is_file() else None
    return ModelDir(path, adapter, config, meta, space, order)


def load_vlm(path: str | Path | None = None, knob_space: KnobSpace | dict | None = None,
             dtype: torch.dtype = torch.float32, device_map=None, **kwargs) -> VLMAdapter:
    """The adapter of a model directory (default: the embedded VLM): checks first, then weights and processor."""
    spec = inspect_model_dir(path, knob_space)
    return load_inspected(spec, dtype=dtype, device_map=device_map, **kwargs)


def load_inspected(spec: ModelDir, dtype: torch.dtype = torch.float32, device_map=None, **kwargs) -> VLMAdapter:
    model = spec.adapter.model_class.from_pretrained(spec.path, dtype=dtype, device_map=device_map, **kwargs)
    processor = spec.adapter.load_processor(spec.path)
    vlm = spec.adapter(model, processor, spec.knob_space, spec.drop_order, spec.meta)
    vlm.source = spec.path
    return vlm


def write_to_model_dir(model_dir: Path, name: str, write: Callable[[Path], object], overwrite_shipped: bool) -> bool:
    """`write(model_dir / name)`, unless the model dir is the embedded VLM shipped in the package and
    `overwrite_shipped` is false (then one line says where the result stays). True when written."""
    target = Path(model_dir) / name
    if Path(model_dir).resolve() == EMBEDDED_DIR.resolve() and not overwrite_shipped:
        print(f"not replacing the shipped {target} (pass overwrite_shipped=true to replace it); this run's copy is "
              "in its output dir", flush=True)
        return False
    write(target)
    print(f"wrote {target}", flush=True)
    return True
