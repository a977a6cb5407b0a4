"""Tiny random-weight VLM directories of every supported family, as transformers saves them (config, weights,
processor files), built from config classes and locally built processors: what a user with their own model
brings (no hub, no grpo_ctrl files). For tests and benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    MixtralConfig,
    OlmoeConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3MoeConfig,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    SiglipVisionConfig,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from grpo_ctrl.data import vocabulary
from grpo_ctrl.vlm.qwen3_vl import Qwen3VLImageProcessor

IMAGE_PX, PATCH = 128, 16  # an 8 x 8 patch grid; the grid-VQA images (64 px) are resized by the processor
WIDTH, HEAD_DIM = 64, 32  # text hidden size (a multiple of HEAD_DIM; benchmarks scale it up), attention head size
CHAT_TEMPLATE = ("{{ bos_token }}USER: {% for m in messages %}{% for c in m['content'] %}"
                 "{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
                 " ASSISTANT:")
LLAVA_BACKBONES = {  # text model type -> vision tower
    "qwen3_moe": "siglip",
    "olmoe": "clip",
    "mixtral": "siglip",
    "qwen3": "clip",  # dense: one top-k value
}


def user_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer unlike the embedded VLM's: other special tokens, role words, `<image>` last."""
    words = ["<unk>", "<pad>", "<bos>", "<eos>", "USER", "ASSISTANT", ":", *vocabulary(), "<image>"]
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", extra_special_tokens={"image_token": "<image>"})


def _text_config(kind: str, vocab: int, pad: int, bos: int, eos: int, width: int):
    common = dict(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=4,
                  num_attention_heads=width // HEAD_DIM, num_key_value_heads=1, max_position_embeddings=512,
                  pad_token_id=pad, bos_token_id=bos, eos_token_id=eos)
    if kind == "qwen3_moe":
        return Qwen3MoeConfig(**common, head_dim=HEAD_DIM, moe_intermediate_size=width // 2, num_experts=4,
                              num_experts_per_tok=2)
    if kind == "olmoe":
        return OlmoeConfig(**common, num_experts=4, num_experts_per_tok=2)
    if kind == "mixtral":
        return MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2)
    if kind == "qwen3":
        return Qwen3Config(**common, head_dim=HEAD_DIM)
    raise ValueError(kind)


def write_llava_dir(path: Path, text: str = "qwen3_moe", seed: int = 0, width: int = WIDTH) -> Path:
    """A stock `LlavaForConditionalGeneration` directory with its own `LlavaProcessor`."""
    tower = LLAVA_BACKBONES[text]
    tok = user_tokenizer()
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in
           {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "image": "<image>"}.items()}
    vision_kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     image_size=IMAGE_PX, patch_size=PATCH)
    if tower == "clip":  # a class token, dropped by the "default" feature strategy
        vision, images, strategy, extra = CLIPVisionConfig(**vision_kw), CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_PX}, crop_size={"height": IMAGE_PX, "width": IMAGE_PX}), "default", 1
    else:
        vision, images, strategy, extra = SiglipVisionConfig(**vision_kw), SiglipImageProcessorPil(
            size={"height": IMAGE_PX, "width": IMAGE_PX}), "full", 0
    config = LlavaConfig(vision_config=vision, text_config=_text_config(text, len(tok), ids["pad"], ids["bos"],
                                                                        ids["eos"], width),
                         image_token_index=ids["image"], vision_feature_select_strategy=strategy,
                         vision_feature_layer=-1, image_seq_length=(IMAGE_PX // PATCH) ** 2)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    for key in ("pad", "bos", "eos"):
        setattr(model.generation_config, f"{key}_token_id", ids[key])
    model.save_pretrained(path)
    LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy=strategy,
                   chat_template=CHAT_TEMPLATE, num_additional_image_tokens=extra).save_pretrained(path)
    return path


QWEN_IDS = {"<|endoftext|>": 0, "<|im_end|>": 1, "<|im_start|>": 2, "<|vision_start|>": 3, "<|vision_end|>": 4,
            "<|image_pad|>": 5, "<|video_pad|>": 6}
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_qwen3_vl_moe_dir(path: Path, seed: int = 0, width: int = WIDTH) -> Path:
    """A stock `Qwen3VLMoeForConditionalGeneration` directory (DeepStack on 2 levels) with a byte-level BPE
    tokenizer and a processor config naming the stock `Qwen3VLProcessor`, as real checkpoints do."""
    vocab = dict(QWEN_IDS)
    for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet())):
        vocab[ch] = len(QWEN_IDS) + i
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_IDS])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    config = Qwen3VLMoeConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                           temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=width,
                           num_position_embeddings=256, deepstack_visual_indexes=[0, 1]),
        text_config=dict(vocab_size=320, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=4,
                         num_attention_heads=width // HEAD_DIM, num_key_value_heads=1, head_dim=HEAD_DIM,
                         moe_intermediate_size=width // 2,
                         num_experts=4, num_experts_per_tok=2, max_position_embeddings=4096,
                         rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[6, 5, 5],
                                              mrope_interleaved=True),
                         pad_token_id=0, eos_token_id=1),
        image_token_id=5, video_token_id=6, vision_start_token_id=3, vision_end_token_id=4)
    torch.manual_seed(seed)
    model = Qwen3VLMoeForConditionalGeneration(config)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = 1, 0
    model.save_pretrained(path)
    images = Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=2,
                                      size={"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 64},
                                      image_mean=[0.5] * 3, image_std=[0.5] * 3)
    Qwen3VLImageProcessor(images, tok, chat_template=QWEN_TEMPLATE).save_pretrained(path)
    config_file = path / "processor_config.json"
    saved = json.loads(config_file.read_text())
    saved["processor_class"] = "Qwen3VLProcessor"
    config_file.write_text(json.dumps(saved, indent=2))
    return path


FAMILIES = (*(f"llava-{text}" for text in LLAVA_BACKBONES), "qwen3_vl_moe")
# Tiny tiers for the tiny Qwen3-VL (its defaults, 64 / 256 / 1024 image tokens, are sized for real models).
TINY_KNOBS = {"qwen3_vl_moe": {"tiers": {"low": 64 * 64, "medium": 128 * 128, "high": 256 * 256}}}


def write_family_dir(family: str, path: Path, width: int = WIDTH) -> Path:
    """`family` in FAMILIES: "llava-<text model type>" or "qwen3_vl_moe"; `width`: the text model's hidden size."""
    if width % HEAD_DIM:
        raise ValueError(f"width={width} must be a multiple of {HEAD_DIM} (the attention head size)")
    if family == "qwen3_vl_moe":
        return write_qwen3_vl_moe_dir(path, width=width)
    return write_llava_dir(path, family.split("-", 1)[1], width=width)
