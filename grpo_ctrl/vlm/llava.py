"""The Llava family: `LlavaForConditionalGeneration` with any vision tower and any (MoE or dense) text model.

Tier = a pooling factor p of the vision tower's g x g patch grid (g/p x g/p image tokens), applied where
`tier_pooling` (grpo_ctrl.json) says:

- `features` (the default): average-pool the projected vision tokens before they enter the LM. The tower runs
  at full resolution on exactly what it was pretrained on; only the LM's (dominant) cost shrinks. Right for a
  pretrained tower, whose layers have never seen a pooled grid.
- `patches`: pool right after the patch embedding, so the tower also runs on fewer tokens (cheaper vision).
  Only for towers trained that way: the embedded VLM was pretrained elastically over its tiers.

The processor's `patch_size` is scaled by p per tier, so its own prompt expansion gives the tier's count.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlavaForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from grpo_ctrl.knobs import KnobError
from grpo_ctrl.vlm.adapter import PhaseModules, VLMAdapter

TIER_POOLING = ("features", "patches")


def patch_grid(config) -> int:
    vision = config.vision_config
    return vision.image_size // vision.patch_size


class LlavaAdapter(VLMAdapter):
    family = "llava"
    model_types = ("llava",)
    model_class = LlavaForConditionalGeneration

    def _install(self) -> None:
        self.tier_pooling = self.meta.setdefault("tier_pooling", "features")
        if self.tier_pooling not in TIER_POOLING:
            raise ValueError(f"tier_pooling={self.tier_pooling!r} in grpo_ctrl.json; use one of {list(TIER_POOLING)}")
        self.patch_grid = patch_grid(self.model.config)
        self._pool = 1
        inner = self.model.model
        where = inner.vision_tower.embeddings if self.tier_pooling == "patches" else inner.multi_modal_projector
        where.register_forward_hook(self._pool_grid)
        self._tier_processors: dict[int, object] = {}

    @classmethod
    def _check_tiers(cls, config, tiers: dict[str, int]) -> None:
        grid = patch_grid(config)
        bad = {name: p for name, p in tiers.items() if p < 1 or grid % p}
        if bad:
            raise KnobError(f"knobs.tiers {bad}: a Llava tier is a pooling factor that divides the model's "
                            f"{grid}x{grid} patch grid; use divisors of {grid}")

    @classmethod
    def _default_tiers(cls, config) -> dict[str, int]:
        grid = patch_grid(config)
        pools = [p for p in (4, 2, 1) if grid % p == 0] if grid % 2 == 0 else [p for p in (9, 3, 1) if grid % p == 0]
        names = ("low", "medium", "high")[-len(pools):]
        return dict(zip(names, pools))

    # ---------------------------------------------------------------- tier
    def _set_tier(self, pool: int) -> None:
        self.set_pool(pool)

    def set_pool(self, pool: int) -> None:
        """Low-level: pool the grid by `pool` (elastic pretraining visits pools outside the knob space)."""
        if self.patch_grid % pool:
            raise KnobError(f"pooling factor {pool} does not divide the {self.patch_grid}x{self.patch_grid} patch grid")
        self._pool = pool

    def _processor_for_tier(self, pool: int):
        if pool not in self._tier_processors:
            processor = copy.copy(self.processor)
            processor.patch_size = self.processor.patch_size * pool
            self._tier_processors[pool] = processor
        return self._tier_processors[pool]

    def num_image_tokens(self, pool: int) -> int:
        """Image tokens per image at pooling factor `pool`."""
        extra = self.processor.num_additional_image_tokens
        if self.processor.vision_feature_select_strategy == "default":
            extra -= 1
        return (self.patch_grid // pool) ** 2 + extra

    def _pool_grid(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        if self._pool == 1:
            return output
        grid = self.patch_grid
        prefix = output[:, : output.shape[1] - grid * grid]  # a class token, where the tower has one
        patches = output[:, prefix.shape[1]:]
        b, _, d = patches.shape
        pooled = F.avg_pool2d(patches.transpose(1, 2).reshape(b, d, grid, grid), self._pool)
        return torch.cat([prefix, pooled.flatten(2).transpose(1, 2)], dim=1)

    # ---------------------------------------------------------------- vision
    @torch.no_grad()
    def encode_vision(self, inputs: dict[str, torch.Tensor], tier: str) -> list[dict[str, torch.Tensor]]:
        """Projected vision tokens {"image_features": (N_tier, H)} of each image of `inputs` at `tier`."""
        previous = self._pool
        self._pool = self.knob_space.tiers[tier]
        try:
            out = self.model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True)
        finally:
            self._pool = previous
        return [{"image_features": features} for features in out.pooler_output]

    def _vision_kwargs(self, vision: Sequence[dict[str, torch.Tensor]]) -> dict:
        features = [v["image_features"].to(self.model.device) for v in vision]
        return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=features)}}

    def vision_token_hook(self, fn) -> torch.utils.hooks.RemovableHandle:
        """Call `fn(projected_tokens)` on every projector output (pretraining's auxiliary vision loss)."""
        return self.model.model.multi_modal_projector.register_forward_hook(lambda m, a, out: fn(out))

    def phase_modules(self) -> PhaseModules:
        inner = self.model.model
        return PhaseModules(inner.vision_tower, inner.multi_modal_projector, self.model)
