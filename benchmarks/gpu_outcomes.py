"""Batch-1 rollouts against the chunked outcome store on a random-weight Qwen3-VL-MoE built from its config class
(default: text hidden 1024, 16 layers, 32 experts, top-4, a small vision tower: about 0.64 B parameters), in bf16
on CUDA by default: rollouts/s of both on the same (prompt, knob setting) pairs, their ratio, and the share of
pairs whose answers differ between the two (the flip rate).

    .venv/bin/python benchmarks/gpu_outcomes.py [prompts=64] [batch_size=32] [settings=3] [device=cuda]
    .venv/bin/python benchmarks/gpu_outcomes.py tiny=true     # a few M parameters, float32, CPU: a smoke test
    bash benchmarks/gpu_outcomes.sh [key=value ...]            # the same on a GPU machine (see that script)

(`--help` lists every key: new_tokens, gold_prob, dtype, experts_impl, tiers and the model sizes hidden, layers,
experts, top_k, moe_width, vision_depth, vision_hidden.)

Both engines are fresh (an empty in-memory store each) and compute every pair: `RolloutEngine(batch_size=1)` one
request at a time, `RolloutEngine(batch_size=B)` each chunk of B consecutive prompts at one setting as one
left-padded batch. Each first computes one warm-up chunk per setting on other prompts (another split), which is not
timed. The clocks are read after synchronising the device; the timed span covers everything `engine.run` does
(processor, vision encoder, generation, scoring).
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration
from transformers.utils import logging as hf_logging

from grpo_ctrl.cli import parse_key_values
from grpo_ctrl.data import GridVQA
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.rollout import PromptPool, RolloutEngine, Scoring
from grpo_ctrl.vlm import load_vlm
from grpo_ctrl.vlm.tiny import HEAD_DIM, QWEN_IDS, TINY_KNOBS, write_qwen3_vl_moe_dir

# Model sizes: (text hidden, layers, experts, top-k, expert width, vision depth, vision hidden).
FULL = dict(hidden=1024, layers=16, experts=32, top_k=4, moe_width=384, vision_depth=4, vision_hidden=256)
TINY = dict(hidden=128, layers=4, experts=8, top_k=2, moe_width=128, vision_depth=2, vision_hidden=64)


@dataclass
class Args:
    tiny: bool = False  # a tiny model (a few M params), float32 on CPU, 8 prompts, batch 4 (a smoke test)
    prompts: int | None = None  # prompts per setting (default 64; tiny=true: 8)
    batch_size: int | None = None  # rows per chunk (default 32; tiny=true: 4)
    settings: int = 3  # knob settings, spread over the space, the full one included
    new_tokens: int = 2  # max new tokens per rollout (the config default)
    # also score p(gold answer): a multi-token gold answer (every answer here: the tokenizer is byte-level without
    # merges) costs one batch-1 forward per row in both engines
    gold_prob: bool = False
    device: str | None = None  # default: cuda if available, else cpu (tiny=true: cpu)
    dtype: str | None = None  # default: bfloat16 on cuda, float32 on cpu
    # experts kernel (grouped_mm, eager; never batched_mm on CPU); default: the model's (grouped_mm)
    experts_impl: str | None = None
    # pixels per image of the tiers low,medium,high (default: the model's, 64 / 256 / 1024 image tokens;
    # tiny=true: 16 / 64 / 256), e.g. 16384,65536,262144
    tiers: str | None = None
    # model sizes (FULL / TINY above)
    hidden: int | None = None  # default 1024 (tiny=true: 128)
    layers: int | None = None  # default 16 (tiny=true: 4)
    experts: int | None = None  # default 32 (tiny=true: 8)
    top_k: int | None = None  # default 4 (tiny=true: 2)
    moe_width: int | None = None  # default 384 (tiny=true: 128)
    vision_depth: int | None = None  # default 4 (tiny=true: 2)
    vision_hidden: int | None = None  # default 256 (tiny=true: 64)


def moe_vlm_config(hidden: int, layers: int, experts: int, top_k: int, moe_width: int, vision_depth: int,
                   vision_hidden: int) -> Qwen3VLMoeConfig:
    """`grpo_ctrl.vlm.tiny`'s Qwen3-VL-MoE config (its tokenizer's ids, M-RoPE on 32-wide heads, DeepStack on 2
    levels) at other sizes."""
    if hidden % HEAD_DIM or vision_hidden % 32:
        raise SystemExit(f"hidden={hidden} and vision_hidden={vision_hidden} must be multiples of 32")
    heads = hidden // HEAD_DIM
    return Qwen3VLMoeConfig(
        vision_config=dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=4 * vision_hidden,
                           num_heads=vision_hidden // 32, patch_size=16, temporal_patch_size=2, spatial_merge_size=2,
                           out_hidden_size=hidden, num_position_embeddings=256,
                           deepstack_visual_indexes=[vision_depth // 2 - 1, vision_depth - 1]),
        text_config=dict(vocab_size=320, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=min(4, heads), head_dim=HEAD_DIM,
                         moe_intermediate_size=moe_width, num_experts=experts, num_experts_per_tok=top_k,
                         max_position_embeddings=4096,
                         rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[6, 5, 5],
                                              mrope_interleaved=True),
                         pad_token_id=QWEN_IDS["<|endoftext|>"], eos_token_id=QWEN_IDS["<|im_end|>"]),
        image_token_id=QWEN_IDS["<|image_pad|>"], video_token_id=QWEN_IDS["<|video_pad|>"],
        vision_start_token_id=QWEN_IDS["<|vision_start|>"], vision_end_token_id=QWEN_IDS["<|vision_end|>"])


def write_model_dir(path: Path, sizes: dict, dtype: torch.dtype, seed: int = 0) -> int:
    """A saved random-weight Qwen3-VL-MoE directory at `sizes`: the tiny writer's processor and tokenizer files,
    then this config's weights in place of its model. Returns the parameter count."""
    write_qwen3_vl_moe_dir(path, seed=seed, width=sizes["hidden"])  # processor, tokenizer, chat template
    for stale in ("model.safetensors", "model.safetensors.index.json"):
        (path / stale).unlink(missing_ok=True)
    torch.manual_seed(seed)
    model = Qwen3VLMoeForConditionalGeneration(moe_vlm_config(**sizes)).to(dtype)
    model.generation_config.eos_token_id = QWEN_IDS["<|im_end|>"]
    model.generation_config.pad_token_id = QWEN_IDS["<|endoftext|>"]
    model.save_pretrained(path)
    count = sum(p.numel() for p in model.parameters())
    del model
    return count


def pick_settings(space, n: int) -> list[Knobs]:
    """`n` settings spread over the knob space (cheapest first), always including the full one."""
    every = space.all()
    picks = np.linspace(len(every) - 1, 0, num=min(n, len(every))).round().astype(int)
    return [every[i] for i in sorted(set(picks.tolist()))]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseClock:
    """Seconds spent in the adapter's processor call (`inputs`), vision encoder and `generate` while installed on
    `vlm` (instance attributes shadowing its methods; the device is synchronised before each reading)."""

    PHASES = ("inputs", "encode_vision", "generate")

    def __init__(self, vlm):
        self.vlm, self.seconds = vlm, dict.fromkeys(self.PHASES, 0.0)
        for name in self.PHASES:
            setattr(vlm, name, self._wrap(name, getattr(vlm, name)))

    def _wrap(self, name, method):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = method(*args, **kwargs)
            sync(self.vlm.model.device)
            self.seconds[name] += time.perf_counter() - start
            return out
        return timed

    def remove(self) -> None:
        for name in self.PHASES:
            delattr(self.vlm, name)


def timed_run(vlm, batch_size: int, prompts: list, knobs: list[Knobs], warm: list, settings: list[Knobs],
              new_tokens: int, scoring: Scoring) -> tuple[list, float, int, dict]:
    """A fresh engine: one warm-up chunk per setting on `warm`, then every (prompt, knobs) pair timed.
    Returns (outcomes, seconds, outcomes computed in the timed run, seconds per phase)."""
    engine = RolloutEngine(vlm, max_new_tokens=new_tokens, batch_size=batch_size, scoring=scoring)
    for k in settings:
        engine.run(warm[:batch_size], [k] * min(batch_size, len(warm)))
    device = vlm.model.device
    clock = PhaseClock(vlm)
    sync(device)
    before = engine.store.computed
    start = time.perf_counter()
    outcomes = engine.run(prompts, knobs)
    sync(device)
    seconds = time.perf_counter() - start
    clock.remove()
    computed = engine.store.computed - before
    engine.close()
    return outcomes, seconds, computed, clock.seconds


def main() -> None:
    program = "benchmarks/gpu_outcomes.py"
    args = parse_key_values(Args, program, f"python {program} [key=value ...]")

    sizes = {k: getattr(args, k) or (TINY if args.tiny else FULL)[k] for k in FULL}
    device = torch.device(args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda"))
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if args.experts_impl == "batched_mm" and device.type == "cpu":
        print(f"{program}: experts_impl=batched_mm gathers a weight copy per token: never on a CPU; use one of "
              "['grouped_mm', 'eager'] there", file=sys.stderr)
        sys.exit(2)
    if sizes["hidden"] % HEAD_DIM or sizes["vision_hidden"] % 32:
        print(f"{program}: hidden={sizes['hidden']} and vision_hidden={sizes['vision_hidden']} must be multiples of "
              "32", file=sys.stderr)
        sys.exit(2)
    n = args.prompts or (8 if args.tiny else 64)
    batch = min(args.batch_size or (4 if args.tiny else 32), n)
    scoring = Scoring(gold_prob=args.gold_prob)
    hf_logging.disable_progress_bar()

    knob_overrides = TINY_KNOBS["qwen3_vl_moe"] if args.tiny else None
    if args.tiers:
        knob_overrides = {"tiers": dict(zip(("low", "medium", "high"), map(int, args.tiers.split(","))))}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        params = write_model_dir(Path(tmp), sizes, dtype)
        built = time.perf_counter() - start
        extra = {"experts_implementation": args.experts_impl} if args.experts_impl else {}
        vlm = load_vlm(tmp, knob_space=knob_overrides, dtype=dtype, **extra)
    vlm.model.to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}")
    print(f"model: random-weight Qwen3-VL-MoE, {params / 1e9:.3f} B parameters ({params:,}), {dtype}, "
          f"text hidden {sizes['hidden']}, {sizes['layers']} layers, {sizes['experts']} experts (top-{sizes['top_k']},"
          f" width {sizes['moe_width']}), vision depth {sizes['vision_depth']} hidden {sizes['vision_hidden']}; "
          f"experts kernel {vlm.model.config.get_text_config()._experts_implementation}; built and saved in "
          f"{built:.1f} s")

    settings = pick_settings(vlm.knob_space, args.settings)
    data = GridVQA()
    pool, warm = PromptPool(data.split("test", n), "test"), PromptPool(data.split("val", batch), "val")
    prompts = [pool[i] for _ in settings for i in range(n)]
    knobs = [k for k in settings for _ in range(n)]
    warm_list = [warm[i] for i in range(batch)]
    tiers = {t: vlm.knob_space.tiers[t] for t in dict.fromkeys(k.tier for k in settings)}
    print(f"{len(prompts)} pairs: {n} grid-VQA test prompts x settings {[str(k) for k in settings]} (tiers {tiers}); "
          f"{args.new_tokens} new tokens, gold_prob {'on' if args.gold_prob else 'off'}")

    runs = {}
    for label, size in (("batch-1 sequential", 1), (f"chunked (batch {batch})", batch)):
        outcomes, seconds, computed, phases = timed_run(vlm, size, prompts, knobs, warm_list, settings,
                                                        args.new_tokens, scoring)
        runs[label] = (outcomes, seconds)
        print(f"{label:<22}: {len(prompts) / seconds:9.2f} rollouts/s ({seconds:.2f} s, {computed} outcomes computed; "
              f"processor {phases['inputs']:.2f} s, vision encoder {phases['encode_vision']:.2f} s, generate "
              f"{phases['generate']:.2f} s, rest {seconds - sum(phases.values()):.2f} s)", flush=True)
    (one, t_one), (chunked, t_chunked) = runs.values()
    flips = [a.answer != b.answer for a, b in zip(one, chunked)]
    answers = [o.answer for o in chunked]
    print(f"answers: {len(set(answers))} distinct, e.g. {answers[:3]}")
    print(f"ratio chunked / batch-1: {t_one / t_chunked:.2f}x (target on a GPU: >= 10x)")
    per_setting = ", ".join(f"{k} {sum(flips[i * n:(i + 1) * n])}/{n}" for i, k in enumerate(settings))
    print(f"flip rate (answers that differ between the two): {sum(flips)}/{len(flips)} = "
          f"{np.mean(flips):.1%} ({per_setting})")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
