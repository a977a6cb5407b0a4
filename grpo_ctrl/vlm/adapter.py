"""`VLMAdapter`: the one boundary between grpo-ctrl and a VLM family; the three knobs change the computation.

Everything outside `grpo_ctrl/vlm/` (rollouts, latency hooks, controller features, experiments) talks to a
model through this protocol only:

- knobs: `apply(knobs)` / `set_knobs`, `knob_space`, `kept_blocks`;
- inputs: `inputs(images, questions, tier)`, batch-1 or batched, built by the model's own processor and chat
  template, with exactly the tier's number of image tokens;
- vision: `encode_vision(inputs, tier)` (one dict per image, batched) once per (sample, tier), reused by
  `generate(..., vision=)` for every top-k / block setting; `question_features` (before the vision encoder) and
  `vision_summary` (after it) for the controller;
- per-row counts of left-padded batches: `image_tokens`, `prompt_tokens` (from the masks), `row`;
- `generate`, `first_token_logits`, `decode`;
- `phase_modules()`: where the hooked timer stamps the vision phase.

The knob mechanics shared by every family live here: top-k is written to every MoE router (found by capability:
a module under a block's MLP with `top_k`, `num_experts` and a routing `weight`), and the decoder's layer list is
rebuilt from the kept blocks (dropped in a precomputed importance order; block 0, and blocks a family protects,
always kept), so dropped blocks run no forward in prefill or decode. A family subclass says what a tier means.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from grpo_ctrl.artifacts import write_json
from grpo_ctrl.knobs import KnobError, Knobs, KnobSpace

ADAPTER_FILE = "grpo_ctrl.json"
IMPORTANCE_FILE = "block_importance.json"
ALIGNMENT = 64  # bytes: torch's CPU allocator aligns every tensor it makes to this


@dataclass
class Generation:
    answers: list[str]
    new_tokens: torch.Tensor  # (B, T) generated ids, padded after EOS
    num_generated: list[int]  # tokens generated per row, EOS included
    ended_with_eos: list[bool]
    first_logits: torch.Tensor | None = None  # (B, V) logits of the first new token (generate(return_first_logits))


@dataclass(frozen=True)
class PhaseModules:
    """Where the hooked timer stamps: vision runs from `vision_start`'s pre-hook to `vision_end`'s hook; each call
    of `forward` (the top-level model) is one LM forward (#0 prefill, then one per decoded token)."""

    vision_start: nn.Module
    vision_end: nn.Module
    forward: nn.Module


def find_routers(blocks: Sequence[nn.Module]) -> list[nn.Module]:
    """The MoE router of each block that has one: the module under its MLP that reads `top_k` when routing
    (Qwen3-MoE, Qwen2-MoE, OLMoE, Mixtral all route in a `*TopKRouter`; Mixtral's block also carries an
    unused `top_k`, which this skips because the block holds no routing weight of its own)."""
    routers = []
    for block in blocks:
        mlp = getattr(block, "mlp", None)
        found = [m for m in (mlp.modules() if mlp is not None else ())
                 if hasattr(m, "top_k") and hasattr(m, "num_experts")
                 and isinstance(getattr(m, "weight", None), nn.Parameter)]
        routers += found[:1]
    return routers


class VLMAdapter:
    """Base of the family adapters; see the module docstring. Subclasses set `family`, `model_types`,
    `model_class` and implement the tier (`_set_tier`, `_tier_processor_kwargs`), vision encoding and phases."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # config.model_type values this adapter serves
    model_class: ClassVar[type]

    def __init__(self, model: nn.Module, processor, knob_space: KnobSpace,
                 block_drop_order: Sequence[int] | None = None, meta: dict | None = None):
        self.model = model.eval()
        _own_aligned_weights(model)
        self.processor = processor
        self.meta = dict(meta or {})
        self.source: Path | None = None  # the directory it was loaded from (set by `load_vlm`)
        self.signature = model_signature(model.config)
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"  # generated tokens follow every prompt directly
        self.language_model = model.model.language_model
        self.blocks = list(self.language_model.layers)
        self._layer_types = list(getattr(self.language_model.config, "layer_types", None) or [])
        self.routers = find_routers(self.blocks)
        self.block_drop_order = self._check_drop_order(block_drop_order)
        self._install()
        self.set_knob_space(knob_space)

    # ---------------------------------------------------------------- family hooks (override)
    def _install(self) -> None:
        """Attach whatever the family's tier needs (hooks); called once."""

    @classmethod
    def protected_blocks(cls, config) -> int:
        """Leading blocks that are never dropped (block 0 at least)."""
        return 1

    @classmethod
    def check_knob_space(cls, config, space: KnobSpace) -> None:
        """Raise KnobError (one line) if `space` asks for more than the model (from its config alone) has."""
        text = config.get_text_config()
        layers, experts = text.num_hidden_layers, _num_experts(text)
        if max(space.num_blocks) > layers:
            raise KnobError(f"knobs.num_blocks {list(space.num_blocks)} exceed the model's {layers} blocks")
        low = cls.protected_blocks(config)
        if min(space.num_blocks) < low:
            raise KnobError(f"knobs.num_blocks {list(space.num_blocks)}: this model keeps its first {low} blocks; "
                            f"use values >= {low}")
        if experts and max(space.top_ks) > experts:
            raise KnobError(f"knobs.top_k {list(space.top_ks)} exceed the model's {experts} experts")
        if not experts and space.top_ks != (1,):
            raise KnobError(f"knobs.top_k {list(space.top_ks)}: the model is dense (no MoE routers), so top_k "
                            "has one value; set model.knobs.top_ks=[1]")
        cls._check_tiers(config, space.tiers)

    @classmethod
    def _check_tiers(cls, config, tiers: dict[str, int]) -> None:
        raise NotImplementedError

    @classmethod
    def default_knob_space(cls, config) -> KnobSpace:
        """Knob values for a model saved without grpo_ctrl.json: three tiers, top-k around the model's own,
        from half to all of the blocks."""
        text = config.get_text_config()
        layers, experts = text.num_hidden_layers, _num_experts(text)
        k = getattr(text, "num_experts_per_tok", 1) if experts else 1
        top_ks = sorted({max(1, k // 2), k, min(experts, 2 * k)}) if experts else [1]
        low = cls.protected_blocks(config)
        blocks = sorted({max(low, -(-layers // 2)), max(low, -(-3 * layers // 4)), layers})
        return KnobSpace(cls._default_tiers(config), top_ks, blocks)

    @classmethod
    def _default_tiers(cls, config) -> dict[str, int]:
        raise NotImplementedError

    def _set_tier(self, value: int) -> None:
        """Make the model compute at a tier (a no-op where the tier lives in the inputs only)."""

    def _tier_processor_kwargs(self, value: int) -> dict:
        """Keyword arguments of the processor call at a tier."""
        return {}

    def _processor_for_tier(self, value: int):
        return self.processor

    def encode_vision(self, inputs: dict[str, torch.Tensor], tier: str) -> list[dict[str, torch.Tensor]]:
        """The vision encoder's outputs for (batched) `inputs` built at `tier`, one dict per image in row order, as
        `generate(vision=)` takes them (a list) and `vision_summary` (one dict); computed once per (sample, tier)
        and reused across top-k / blocks."""
        raise NotImplementedError

    def _vision_kwargs(self, vision: Sequence[dict[str, torch.Tensor]]) -> dict:
        """generate() keyword arguments that hand it the pre-encoded vision of each row."""
        raise NotImplementedError

    def phase_modules(self) -> PhaseModules:
        raise NotImplementedError

    pixel_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)  # inputs that only the vision encoder reads

    # ---------------------------------------------------------------- loading and saving
    @classmethod
    def load_processor(cls, path: Path):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path)

    def __reduce__(self):
        """Pickle as config + weights + processor (the model's own hooks are local functions, which pickle cannot
        carry): how rollout worker processes get the model; under torch.multiprocessing the weights travel
        through shared memory."""
        with self.apply(self.knob_space.full):  # the config then counts every block
            config = copy.deepcopy(self.model.config)
        return (_rebuild, (type(self), config, self.model.state_dict(), self.processor, self.knob_space,
                           self.block_drop_order, self.meta))

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None, extra: dict | None = None) -> None:
        """Model, processor and grpo_ctrl.json (knob space and family settings): a directory `load_vlm` reads."""
        path = Path(path)
        with self.apply(self.knob_space.full):
            model = self.model if dtype is None else self.model.to(dtype)
            model.save_pretrained(path)
            if dtype is not None:
                self.model.float()
        self.processor.save_pretrained(path)
        meta = {**self.meta, "family": self.family, "knob_space": self.knob_space.to_dict(), **(extra or {})}
        write_json(path / ADAPTER_FILE, meta)

    # ---------------------------------------------------------------- knobs
    @property
    def num_blocks_total(self) -> int:
        return len(self.blocks)

    @property
    def feature_dim(self) -> int:
        """Width of `question_features` and `vision_summary` (the LM's hidden size)."""
        return self.language_model.config.hidden_size

    @property
    def image_token_id(self) -> int:
        return self.processor.image_token_id

    def kept_blocks(self, num_blocks: int) -> list[int]:
        dropped = set(self.block_drop_order[: self.num_blocks_total - num_blocks])
        return [i for i in range(self.num_blocks_total) if i not in dropped]

    def set_knob_space(self, space: KnobSpace) -> None:
        """Use another knob space (e.g. a restriction from the config); the model is reset to its full setting."""
        self.keep_blocks(range(len(self.blocks)))  # the config counts every block again
        self.check_knob_space(self.model.config, space)
        self.knob_space = space
        self.knobs = space.full
        self.set_knobs(space.full)

    def set_knobs(self, knobs: Knobs) -> None:
        self.knob_space.validate(knobs)
        self._set_tier(self.knob_space.tiers[knobs.tier])
        self.set_top_k(knobs.top_k)
        self.keep_blocks(self.kept_blocks(knobs.num_blocks))
        self.knobs = knobs

    @contextlib.contextmanager
    def apply(self, knobs: Knobs) -> Iterator[VLMAdapter]:
        previous = self.knobs
        self.set_knobs(knobs)
        try:
            yield self
        finally:
            self.set_knobs(previous)

    # Low-level setters: block importance and elastic pretraining also visit settings outside the knob space.
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

    @contextlib.contextmanager
    def blocks_kept(self, keep: Sequence[int]) -> Iterator[None]:
        """Run with an arbitrary block subset (outside the knob space), restored afterwards."""
        self.keep_blocks(keep)
        try:
            yield
        finally:
            self.set_knobs(self.knobs)

    def _check_drop_order(self, order: Sequence[int] | None) -> list[int]:
        n, low = len(self.blocks), self.protected_blocks(self.model.config)
        if order is None:
            return list(range(n - 1, low - 1, -1))
        order = [int(i) for i in order]
        if sorted(order) != list(range(low, n)):
            raise ValueError(f"block drop order {order} must be a permutation of blocks {low}..{n - 1} "
                             f"(the first {low} stay)")
        return order

    # ---------------------------------------------------------------- compute
    def inputs(self, images, questions: Sequence[str], tier: str) -> dict[str, torch.Tensor]:
        """Model inputs for (image, question) pairs at `tier` from the model's own processor and chat template
        (left-padded when batched): the prompt carries exactly the tier's number of image tokens."""
        value = self.knob_space.tiers[tier]
        processor = self._processor_for_tier(value)
        texts = [self.prompt(q) for q in questions]
        out = processor(images=list(images), text=texts, return_tensors="pt", padding=True,
                        **self._tier_processor_kwargs(value))
        return dict(out)

    def prompt(self, question: str) -> str:
        """The chat-formatted prompt of one question about one image (the processor's chat template)."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return f"{self.processor.image_token}{question}"

    def image_tokens(self, inputs: dict[str, torch.Tensor]) -> list[int]:
        """Image tokens of each row of `inputs` (what the LM reads from the vision encoder)."""
        return (inputs["input_ids"] == self.image_token_id).sum(dim=1).tolist()

    @staticmethod
    def prompt_tokens(inputs: dict[str, torch.Tensor]) -> list[int]:
        """Input length of each row of left-padded `inputs`, from the attention mask (not the padded width)."""
        return inputs["attention_mask"].sum(dim=1).tolist()

    @staticmethod
    def row(inputs: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
        """Row `i` of left-padded text `inputs` as its own batch-1 inputs, padding removed."""
        start = int(inputs["input_ids"].shape[1] - inputs["attention_mask"][i].sum())
        return {k: v[i:i + 1, start:] if v.dim() == 2 and v.shape == inputs["input_ids"].shape else v[i:i + 1]
                for k, v in inputs.items()}

    def text_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`inputs` without what only the vision encoder reads (kept alongside `encode_vision`'s outputs)."""
        return {k: v for k, v in inputs.items() if k not in self.pixel_keys}

    @torch.no_grad()
    def question_features(self, questions: Sequence[str]) -> torch.Tensor:
        """Mean token embedding of each question (B, H), on the CPU where the controller runs: what a controller
        may read before the vision encoder."""
        embed = self.model.get_input_embeddings()
        weight = embed.weight
        ids = [self.tokenizer.encode(q, add_special_tokens=False) for q in questions]
        if type(embed) is nn.Embedding and weight.device.type == "cpu" and weight.dtype == torch.float32:
            # The same rows and mean, gathered from a numpy view: at batch 1 torch's per-op dispatch is most of
            # the controller's decision time.
            table = weight.detach().numpy()
            return torch.from_numpy(np.stack([table[i].mean(axis=0) for i in ids]))
        return torch.stack([embed(torch.tensor(i, device=weight.device)).mean(0).float().cpu() for i in ids])

    @staticmethod
    def vision_summary(vision: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean of the vision tokens (H,): what a controller may read after the vision encoder."""
        return vision["image_features"].float().mean(dim=0).cpu()

    @torch.no_grad()
    def generate(self, inputs: dict[str, torch.Tensor], knobs: Knobs, max_new_tokens: int = 2,
                 min_new_tokens: int | None = None, vision: Sequence[dict[str, torch.Tensor]] | None = None,
                 return_first_logits: bool = False, **generate_kwargs) -> Generation:
        """Greedy generation under `knobs` (left-padded rows). Pass `vision` (`encode_vision`'s list, one per row) to
        skip the vision encoder;
        `return_first_logits` keeps the raw logits of the first generated token (off when timing); other keyword
        arguments go to the model's generate() (e.g. `logits_processor`)."""
        kwargs = dict(inputs) if vision is None else {**self.text_inputs(inputs), **self._vision_kwargs(vision)}
        eos = self.tokenizer.eos_token_id
        with self.apply(knobs):
            out = self.model.generate(**kwargs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                      do_sample=False, eos_token_id=eos, pad_token_id=self.tokenizer.pad_token_id,
                                      return_dict_in_generate=True, output_logits=return_first_logits,
                                      **generate_kwargs)
        new = out.sequences[:, inputs["input_ids"].shape[1]:]
        is_eos = new == eos
        ended = is_eos.any(dim=1)
        lengths = torch.where(ended, is_eos.int().argmax(dim=1) + 1, new.shape[1])
        first = out.logits[0] if return_first_logits else None
        return Generation(self.decode(new), new, lengths.tolist(), ended.tolist(), first)

    @torch.no_grad()
    def first_token_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B, V) of the first answer token under the current knobs: one forward, no generate loop."""
        return self.model(**inputs, logits_to_keep=1).logits[:, -1]

    @torch.no_grad()
    def answer_probability(self, inputs: dict[str, torch.Tensor], vision: Sequence[dict[str, torch.Tensor]] | None,
                           answer: str, knobs: Knobs, first_logits: torch.Tensor | None = None) -> float:
        """exp(mean token log-prob) of `answer` right after the batch-1 prompt under `knobs` (teacher-forced): how
        sure the model is of it, in [0, 1]. A one-token answer reads the generation's `first_logits` when given;
        a longer one costs one forward over prompt + answer."""
        ids = self.tokenizer.encode(answer, add_special_tokens=False)
        if not ids:
            return 0.0
        if len(ids) == 1 and first_logits is not None:
            return float(first_logits[0].float().softmax(dim=-1)[ids[0]])
        forced = continued(inputs, ids[:-1])
        kwargs = forced if vision is None else {**self.text_inputs(forced), **self._vision_kwargs(vision)}
        with self.apply(knobs):
            logits = self.model(**kwargs, logits_to_keep=len(ids)).logits[0]
        log_probs = logits.float().log_softmax(dim=-1)[torch.arange(len(ids)), torch.tensor(ids)]
        return float(log_probs.mean().exp())

    def decode(self, generated: torch.Tensor) -> list[str]:
        return [s.strip() for s in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]

    def answer_first_token(self, answer: str) -> int:
        """Id of the first token of `answer` as the tokenizer encodes it alone."""
        return self.tokenizer.encode(answer, add_special_tokens=False)[0]

    def answer(self, images, questions: Sequence[str], knobs: Knobs, **kwargs) -> Generation:
        return self.generate(self.inputs(images, questions, knobs.tier), knobs, **kwargs)


def continued(inputs: dict[str, torch.Tensor], ids: Sequence[int]) -> dict[str, torch.Tensor]:
    """Batch-1 `inputs` with the text tokens `ids` appended: per-token tensors grow with them (attention mask 1,
    token-type ids such as `mm_token_type_ids` 0: text)."""
    length, n = inputs["input_ids"].shape[1], len(ids)
    out = {}
    for key, value in inputs.items():
        if key == "input_ids":
            value = torch.cat([value, value.new_tensor([list(ids)])], dim=1)
        elif value.dim() == 2 and value.shape == (1, length):
            value = torch.cat([value, value.new_full((1, n), 1 if key == "attention_mask" else 0)], dim=1)
        out[key] = value
    return out


def model_signature(config) -> dict:
    """What identifies a model's architecture (an estimator fitted on one model is refused for another)."""
    text = config.get_text_config()
    vision = getattr(config, "vision_config", None)
    return {"model_type": config.model_type, "layers": text.num_hidden_layers, "hidden": text.hidden_size,
            "experts": _num_experts(text), "vision_hidden": getattr(vision, "hidden_size", None)}


def _num_experts(text_config) -> int:
    for key in ("num_experts", "num_local_experts"):
        if getattr(text_config, key, None):
            return int(getattr(text_config, key))
    return 0


def _rebuild(cls: type[VLMAdapter], config, state: dict, processor, space: KnobSpace, order: list[int],
             meta: dict) -> VLMAdapter:
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation must not move the run's RNG
        model = cls.model_class(config)
    model.load_state_dict(state, assign=True)
    model.tie_weights()
    return cls(model, processor, space, order, meta)


@torch.no_grad()
def _own_aligned_weights(model: nn.Module) -> None:
    """Copy CPU weights that do not start on an ALIGNMENT boundary (e.g. memory-mapped from a safetensors file).
    Vectorised CPU kernels split their loops by address, so the same weights at another alignment give other
    last bits; owned, aligned weights make a copy of the model (a replica, a worker's) compute what it does."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "cpu" and tensor.data_ptr() % ALIGNMENT:
            tensor.data = tensor.data.clone()
