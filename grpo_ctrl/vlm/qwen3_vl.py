"""Qwen3-VL-MoE (`Qwen3VLMoeForConditionalGeneration`).

- tier = pixels per image: the image processor's min and max pixels (`size.shortest_edge` / `longest_edge`)
  are both set to it, so the processor resizes every image, up or down, to about that many pixels in multiples
  of patch x merge. That sets `image_grid_thw` and so the image tokens (t*h*w / merge^2), and the vision tower
  runs on that many patches. The aspect ratio is kept, so two images at one tier can differ by a few tokens
  (token counts always come from the inputs).
- `mm_token_type_ids` stays in every input (without it generate silently drops M-RoPE for 1-D positions).
- top-k: the text routers (`mlp.gate.top_k`), like every MoE family.
- blocks: DeepStack adds level k of the vision features to the output of the k-th layer *in the current list*,
  so the first len(deepstack_visual_indexes) blocks are never dropped: the injections stay on the layers they
  belong to for every block setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, Qwen3VLMoeForConditionalGeneration
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

from grpo_ctrl.knobs import KnobError
from grpo_ctrl.vlm.adapter import PhaseModules, VLMAdapter


class Qwen3VLImageProcessor(Qwen3VLProcessor):
    """Qwen3-VL's processor for images only: the stock one also builds a video processor, which needs torchvision
    (absent from CPU installs); images need only the PIL image processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def _factor(config) -> int:
    vision = config.vision_config
    return vision.patch_size * vision.spatial_merge_size


class Qwen3VLMoeAdapter(VLMAdapter):
    family = "qwen3_vl_moe"
    model_types = ("qwen3_vl_moe",)
    model_class = Qwen3VLMoeForConditionalGeneration

    @classmethod
    def load_processor(cls, path: Path):
        try:
            processor = AutoProcessor.from_pretrained(path)
            if hasattr(processor, "image_processor"):
                return processor
        except (ImportError, OSError):  # the video processor's torchvision, or its missing config
            pass
        template = path / "chat_template.jinja"
        return Qwen3VLImageProcessor(AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                                     chat_template=template.read_text() if template.is_file() else None)

    @classmethod
    def protected_blocks(cls, config) -> int:
        return max(1, len(config.vision_config.deepstack_visual_indexes or ()))

    @classmethod
    def _check_tiers(cls, config, tiers: dict[str, int]) -> None:
        least = _factor(config) ** 2
        bad = {name: v for name, v in tiers.items() if v < least}
        if bad:
            raise KnobError(f"knobs.tiers {bad}: a Qwen3-VL tier is pixels per image; one image token needs "
                            f"{least} pixels ({_factor(config)}x{_factor(config)}), so use values >= {least}")
        values = list(tiers.values())
        if values != sorted(values):
            raise KnobError(f"knobs.tiers {dict(tiers)}: list the tiers cheapest first (increasing pixels)")

    @classmethod
    def _default_tiers(cls, config) -> dict[str, int]:
        per_token = _factor(config) ** 2
        return {"low": 64 * per_token, "medium": 256 * per_token, "high": 1024 * per_token}

    def _tier_processor_kwargs(self, pixels: int) -> dict:
        return {"size": {"shortest_edge": pixels, "longest_edge": pixels}}

    @torch.no_grad()
    def encode_vision(self, inputs: dict[str, torch.Tensor], tier: str) -> list[dict[str, torch.Tensor]]:
        """{"image_features": (N, H), "deepstack_<k>": (N, H) per DeepStack level} of each image of `inputs`."""
        out = self.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
        rows = [{"image_features": features} for features in out.pooler_output]
        for k, level in enumerate(out.deepstack_features or ()):
            for row, features in zip(rows, level):
                row[f"deepstack_{k}"] = features
        return rows

    def _vision_kwargs(self, vision: Sequence[dict[str, torch.Tensor]]) -> dict:
        device = self.model.device
        levels = sorted((k for k in vision[0] if k.startswith("deepstack_")), key=lambda k: int(k.split("_")[1]))
        # A fresh output object per call: generate's input expansion rewrites the one it is given.
        out = BaseModelOutputWithDeepstackFeatures(
            pooler_output=tuple(v["image_features"].to(device) for v in vision),
            deepstack_features=[tuple(v[k].to(device) for v in vision) for k in levels])
        return {"mm_encoder_outputs": {"image": out}}

    def phase_modules(self) -> PhaseModules:
        visual = self.model.model.visual
        return PhaseModules(visual, visual, self.model)
