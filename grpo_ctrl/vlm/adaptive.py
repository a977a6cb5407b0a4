"""`AdaptiveVLM`: a Llava-style MoE VLM whose three knobs change the computation for real.

- tier: the patch grid is average-pooled right after the patch embedding, so the vision encoder and the
  language model both see fewer tokens (and `input_ids` carries exactly that many `<image>` ids);
- top_k: written to the router of every sparse-MoE block (the router reads it in every forward);
- num_blocks: the decoder's layer list is rebuilt from the kept blocks (dropped in a precomputed
  importance order, block 0 always kept), so dropped blocks run no forward in prefill or decode.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, LlavaForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from grpo_ctrl.knobs import KnobError, Knobs, KnobSpace
from grpo_ctrl.vlm.tokenizer import VLMProcessor

ADAPTER_FILE = "grpo_ctrl.json"
IMPORTANCE_FILE = "block_importance.json"
EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "assets" / "embedded_vlm"
ALIGNMENT = 64  # bytes: torch's CPU allocator aligns every tensor it makes to this


@dataclass
class Generation:
    answers: list[str]
    new_tokens: torch.Tensor  # (B, T) generated ids, padded after EOS
    num_generated: list[int]  # tokens generated per row, EOS included
    ended_with_eos: list[bool]
    first_logits: torch.Tensor | None = None  # (B, V) logits of the first new token (generate(return_first_logits))


class AdaptiveVLM:
    def __init__(self, model: LlavaForConditionalGeneration, processor: VLMProcessor, knob_space: KnobSpace,
                 block_drop_order: Sequence[int] | None = None):
        self.model = model.eval()
        _own_aligned_weights(model)
        self.processor = processor
        self.language_model = model.model.language_model
        self.blocks = list(self.language_model.layers)
        self._layer_types = list(getattr(self.language_model.config, "layer_types", None) or [])
        self.routers = [b.mlp.gate for b in self.blocks if hasattr(getattr(b.mlp, "gate", None), "top_k")]
        self.block_drop_order = self._check_drop_order(block_drop_order)
        self._pool = 1
        model.model.vision_tower.embeddings.register_forward_hook(self._pool_patch_grid)
        self.set_knob_space(knob_space)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, knob_space: KnobSpace | None = None,
                        dtype: torch.dtype = torch.float32, **kwargs) -> AdaptiveVLM:
        """Load a saved VLM directory (default: the embedded one shipped in the package)."""
        path = Path(path) if path is not None else EMBEDDED_DIR
        meta_file = path / ADAPTER_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file} not found: point model.path at a directory written by "
                                    "AdaptiveVLM.save_pretrained (or experiments/pretrain_tiny_vlm.py)")
        meta = json.loads(meta_file.read_text())
        model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
        grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
        space = knob_space or KnobSpace(**meta["knob_space"])
        importance = path / IMPORTANCE_FILE
        order = json.loads(importance.read_text())["drop_order"] if importance.is_file() else None
        return cls(model, VLMProcessor(tokenizer, grid), space, order)

    def __reduce__(self):
        """Pickle as config + weights + processor (the model's own hooks are local functions, which pickle cannot
        carry): how rollout worker processes get the model; under torch.multiprocessing the weights travel
        through shared memory."""
        return (_rebuild, (self.model.config, self.model.state_dict(), self.processor, self.knob_space,
                           self.block_drop_order))

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None, extra: dict | None = None) -> None:
        path = Path(path)
        with self.apply(self.knob_space.full):
            model = self.model if dtype is None else self.model.to(dtype)
            model.save_pretrained(path)
            if dtype is not None:
                self.model.float()
        self.processor.tokenizer.save_pretrained(path)
        meta = {"knob_space": self.knob_space.to_dict(), **(extra or {})}
        (path / ADAPTER_FILE).write_text(json.dumps(meta, indent=2))

    # ---------------------------------------------------------------- knobs
    @property
    def num_blocks_total(self) -> int:
        return len(self.blocks)

    def kept_blocks(self, num_blocks: int) -> list[int]:
        dropped = set(self.block_drop_order[: self.num_blocks_total - num_blocks])
        return [i for i in range(self.num_blocks_total) if i not in dropped]

    def set_knob_space(self, space: KnobSpace) -> None:
        """Use another knob space (e.g. a restriction from the config); the model is reset to its full setting."""
        num_experts = self.routers[0].num_experts if self.routers else 0
        if max(space.num_blocks) > len(self.blocks):
            raise KnobError(f"knobs.num_blocks {list(space.num_blocks)} exceed the model's {len(self.blocks)} blocks")
        if num_experts and max(space.top_ks) > num_experts:
            raise KnobError(f"knobs.top_k {list(space.top_ks)} exceed the model's {num_experts} experts")
        for pool in space.tiers.values():
            self.processor.num_image_tokens(pool)
        self.knob_space = space
        self.knobs = space.full
        self.set_knobs(space.full)

    def set_knobs(self, knobs: Knobs) -> None:
        self.knob_space.validate(knobs)
        self.set_pool(self.knob_space.tiers[knobs.tier])
        self.set_top_k(knobs.top_k)
        self.keep_blocks(self.kept_blocks(knobs.num_blocks))
        self.knobs = knobs

    @contextlib.contextmanager
    def apply(self, knobs: Knobs) -> Iterator[AdaptiveVLM]:
        previous = self.knobs
        self.set_knobs(knobs)
        try:
            yield self
        finally:
            self.set_knobs(previous)

    def num_image_tokens(self, tier: str) -> int:
        return self.processor.num_image_tokens(self.knob_space.tiers[tier])

    # Low-level setters: elastic pretraining also visits block subsets outside the knob space.
    def set_pool(self, pool: int) -> None:
        self.processor.num_image_tokens(pool)
        self._pool = pool

    def set_top_k(self, top_k: int) -> None:
        for router in self.routers:
            router.top_k = top_k

    def keep_blocks(self, keep: Sequence[int]) -> None:
        config = self.language_model.config
        self.language_model.layers = nn.ModuleList([self.blocks[i] for i in keep])
        for new_idx, block in enumerate(self.language_model.layers):
            block.self_attn.layer_idx = new_idx  # the KV cache is indexed by position in the list
        config.num_hidden_layers = len(keep)
        if self._layer_types:
            config.layer_types = [self._layer_types[i] for i in keep]

    def _pool_patch_grid(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        if self._pool == 1:
            return output
        grid = self.processor.patch_grid
        prefix = output[:, : output.shape[1] - grid * grid]  # a class token, where the tower has one
        patches = output[:, prefix.shape[1]:]
        b, _, d = patches.shape
        pooled = F.avg_pool2d(patches.transpose(1, 2).reshape(b, d, grid, grid), self._pool)
        return torch.cat([prefix, pooled.flatten(2).transpose(1, 2)], dim=1)

    def _check_drop_order(self, order: Sequence[int] | None) -> list[int]:
        n = len(self.blocks)
        if order is None:
            return list(range(n - 1, 0, -1))
        order = [int(i) for i in order]
        if sorted(order) != list(range(1, n)):
            raise ValueError(f"block drop order {order} must be a permutation of blocks 1..{n - 1} (block 0 stays)")
        return order

    # ---------------------------------------------------------------- compute
    def inputs(self, images, questions: Sequence[str], tier: str) -> dict[str, torch.Tensor]:
        return self.processor(images, questions, self.knob_space.tiers[tier])

    @torch.no_grad()
    def encode_vision(self, pixel_values: torch.Tensor, tier: str) -> torch.Tensor:
        """Projected vision tokens (B, N_tier, H) for the tier; reusable across top_k / num_blocks."""
        previous = self._pool
        self._pool = self.knob_space.tiers[tier]
        try:
            out = self.model.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        finally:
            self._pool = previous
        return torch.stack(list(out.pooler_output))

    @torch.no_grad()
    def question_features(self, questions: Sequence[str]) -> torch.Tensor:
        """Mean token embedding of each question (B, H), on the CPU where the controller runs: what a controller
        may read before the vision encoder."""
        embed = self.model.get_input_embeddings()
        device = embed.weight.device
        return torch.stack([embed(torch.tensor(ids, device=device)).mean(0).cpu()
                            for ids in self.processor.question_ids(questions)])

    @staticmethod
    def vision_summary(image_features: torch.Tensor) -> torch.Tensor:
        """Mean-pooled vision tokens (B, H): what a controller may read after the vision encoder."""
        return image_features.mean(dim=1)

    @torch.no_grad()
    def generate(self, inputs: dict[str, torch.Tensor], knobs: Knobs, max_new_tokens: int = 2,
                 min_new_tokens: int | None = None, image_features: torch.Tensor | None = None,
                 return_first_logits: bool = False) -> Generation:
        """Greedy generation under `knobs`. Pass `image_features` (from `encode_vision`) to skip the vision encoder;
        `return_first_logits` keeps the raw logits of the first generated token (off when timing)."""
        kwargs = {k: v for k, v in inputs.items() if k != "pixel_values" or image_features is None}
        if image_features is not None:
            kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=list(image_features))}
        eos = self.processor.tokenizer.eos_token_id
        with self.apply(knobs):
            out = self.model.generate(**kwargs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                      do_sample=False, eos_token_id=eos, return_dict_in_generate=True,
                                      output_logits=return_first_logits)
        new = out.sequences[:, inputs["input_ids"].shape[1]:]
        is_eos = new == eos
        ended = is_eos.any(dim=1)
        lengths = torch.where(ended, is_eos.int().argmax(dim=1) + 1, new.shape[1])
        first = out.logits[0] if return_first_logits else None
        return Generation(self.processor.decode_answers(new), new, lengths.tolist(), ended.tolist(), first)

    def answer_first_token(self, answer: str) -> int:
        """Id of the first token of `answer` as the tokenizer encodes it alone (the whole answer for the embedded
        VLM's one-word answers)."""
        return self.processor.tokenizer.encode(answer, add_special_tokens=False)[0]

    def answer(self, images, questions: Sequence[str], knobs: Knobs, **kwargs) -> Generation:
        return self.generate(self.inputs(images, questions, knobs.tier), knobs, **kwargs)


def _rebuild(config, state: dict, processor: VLMProcessor, space: KnobSpace, order: list[int]) -> AdaptiveVLM:
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation must not move the run's RNG
        model = LlavaForConditionalGeneration(config)
    model.load_state_dict(state, assign=True)
    model.tie_weights()
    return AdaptiveVLM(model, processor, space, order)


@torch.no_grad()
def _own_aligned_weights(model: nn.Module) -> None:
    """Copy CPU weights that do not start on an ALIGNMENT boundary (e.g. memory-mapped from a safetensors file).
    Vectorised CPU kernels split their loops by address, so the same weights at another alignment give other
    last bits; owned, aligned weights make a copy of the model (a replica, a worker's) compute what it does."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "cpu" and tensor.data_ptr() % ALIGNMENT:
            tensor.data = tensor.data.clone()
