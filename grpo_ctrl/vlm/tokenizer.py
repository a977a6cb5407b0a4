"""A word-level tokenizer built locally from the task vocabulary, and the processor that builds VLM inputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK, IMAGE = "[PAD]", "<s>", "</s>", "[UNK]", "<image>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE)


def build_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*SPECIAL_TOKENS, *words]))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                  unk_token=UNK, extra_special_tokens={"image_token": IMAGE})
    tok.padding_side = "left"
    return tok


class VLMProcessor:
    """Turns (images, questions) into left-padded `input_ids`, `attention_mask` and `pixel_values`.

    The number of `<image>` ids per prompt always equals the number of vision tokens of the tier.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, patch_grid: int):
        self.tokenizer = tokenizer
        self.patch_grid = patch_grid
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)

    def num_image_tokens(self, pool: int) -> int:
        if self.patch_grid % pool:
            grid = self.patch_grid
            raise ValueError(f"pooling factor {pool} does not divide the {grid}x{grid} patch grid")
        return (self.patch_grid // pool) ** 2

    def pixel_values(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        px = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
        return px / 127.5 - 1.0

    def question_ids(self, questions: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer.encode(q, add_special_tokens=False) for q in questions]

    def text_inputs(self, questions: Sequence[str], pool: int) -> dict[str, torch.Tensor]:
        prefix = [self.tokenizer.bos_token_id] + [self.image_token_id] * self.num_image_tokens(pool)
        seqs = [prefix + q for q in self.question_ids(questions)]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def __call__(self, images: Sequence[np.ndarray], questions: Sequence[str], pool: int) -> dict[str, torch.Tensor]:
        return {**self.text_inputs(questions, pool), "pixel_values": self.pixel_values(images)}

    def decode_answers(self, generated: torch.Tensor) -> list[str]:
        return [s.strip() for s in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]
