"""The embedded VLM's processor, built locally: a word-level tokenizer from the task vocabulary, a SigLIP image
processor and a chat template, assembled as a stock `LlavaProcessor` (saved with the model, loaded with
`AutoProcessor` like any Llava's)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlavaProcessor, PreTrainedTokenizerFast
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

PAD, BOS, EOS, UNK, IMAGE = "[PAD]", "<s>", "</s>", "[UNK]", "<image>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE)
# <s>, then the image, then the question (no roles: the embedded VLM was trained on bare questions).
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% for part in message['content'] %}"
                 "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
                 "{% endfor %}{% endfor %}")


def words_of(texts: Iterable[str], max_words: int | None = None) -> list[str]:
    """The words `build_tokenizer`'s pre-tokenizer splits `texts` into, most frequent first (ties: first seen)."""
    split = pre_tokenizers.Whitespace().pre_tokenize_str
    counts = Counter(word for text in texts for word, _ in split(text))
    return [word for word, _ in counts.most_common(max_words)]


def build_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*SPECIAL_TOKENS, *words]))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                  unk_token=UNK, extra_special_tokens={"image_token": IMAGE})
    tok.padding_side = "left"
    return tok


def build_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int) -> LlavaProcessor:
    """Images resized to `image_size` and scaled to [-1, 1]; one `<image>` id per patch of the grid."""
    images = SiglipImageProcessorPil(size={"height": image_size, "width": image_size}, do_rescale=True,
                                     rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3,
                                     image_std=[0.5] * 3)
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy="full", chat_template=CHAT_TEMPLATE, image_token=IMAGE)
