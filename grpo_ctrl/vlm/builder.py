"""Builds the embedded default VLM from transformers classes: SigLIP vision tower + Qwen3-MoE text model, with
its locally built processor, as a Llava adapter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import LlavaConfig, LlavaForConditionalGeneration, Qwen3MoeConfig, SiglipVisionConfig

from grpo_ctrl.knobs import KnobSpace
from grpo_ctrl.vlm.llava import LlavaAdapter
from grpo_ctrl.vlm.tokenizer import IMAGE, build_processor


@dataclass
class EmbeddedVLMSize:
    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 2
    text_hidden: int = 256
    text_layers: int = 6
    num_experts: int = 8
    expert_hidden: int = 128
    heads: int = 4
    kv_heads: int = 2


def build_embedded_vlm(vocab_size: int, image_token_id: int, size: EmbeddedVLMSize | None = None,
                       pad_id: int = 0, bos_id: int = 1, eos_id: int = 2) -> LlavaForConditionalGeneration:
    s = size or EmbeddedVLMSize()
    grid = s.image_size // s.patch_size
    vision = SiglipVisionConfig(hidden_size=s.vision_hidden, intermediate_size=4 * s.vision_hidden,
                                num_hidden_layers=s.vision_layers, num_attention_heads=max(1, s.vision_hidden // 64),
                                image_size=s.image_size, patch_size=s.patch_size, vision_use_head=False)
    text = Qwen3MoeConfig(vocab_size=vocab_size, hidden_size=s.text_hidden, intermediate_size=4 * s.text_hidden,
                          moe_intermediate_size=s.expert_hidden, num_hidden_layers=s.text_layers,
                          num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                          head_dim=s.text_hidden // s.heads, num_experts=s.num_experts, num_experts_per_tok=2,
                          max_position_embeddings=512, bos_token_id=bos_id, eos_token_id=eos_id,
                          pad_token_id=pad_id, router_aux_loss_coef=0.0)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                         image_seq_length=grid * grid, vision_feature_select_strategy="full",
                         vision_feature_layer=-1)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = bos_id, eos_id, pad_id
    model = LlavaForConditionalGeneration(config)
    model.generation_config.bos_token_id = bos_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    return model


def embedded_vlm(tokenizer, size: EmbeddedVLMSize, knob_space: KnobSpace,
                 block_drop_order: Sequence[int] | None = None) -> LlavaAdapter:
    """A freshly initialised embedded-style VLM (current torch seed) with its processor. Its tiers pool the patch
    grid inside the tower (it is trained elastically over them: see experiments/pretrain_tiny_vlm.py)."""
    model = build_embedded_vlm(len(tokenizer), tokenizer.convert_tokens_to_ids(IMAGE), size)
    processor = build_processor(tokenizer, size.image_size, size.patch_size)
    return LlavaAdapter(model, processor, knob_space, block_drop_order, {"tier_pooling": "patches"})
