"""Elastic pretraining of a small MoE VLM (the embedded one, or one for your own data) on any data source.

Every step trains under a random knob setting (tier, router top-k, random subset of blocks that keeps
block 0), so every setting of the knob space is a working model. The tokenizer's words come from the task
(grid-VQA's fixed list) or from the training split (any other source); answers may have several tokens
(teacher-forced, then EOS). On grid-VQA each vision token also learns the colours and position under it (an
auxiliary head, not shipped). Resumable: rerun with the same `hydra.run.dir` and it continues from `state.pt`.

    python experiments/pretrain_tiny_vlm.py export_dir=grpo_ctrl/assets/embedded_vlm
    python experiments/pretrain_tiny_vlm.py data=hf_vqa data.path=DIR export_dir=models/mine
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from grpo_ctrl.artifacts import atomic_write
from grpo_ctrl.build import build_data
from grpo_ctrl.cli import check_command_line, check_minimums
from grpo_ctrl.data import GridVQA, VQASource, vocabulary
from grpo_ctrl.knobs import Knobs, KnobSpace
from grpo_ctrl.script_configs import register_script_configs
from grpo_ctrl.vlm.builder import EmbeddedVLMSize, embedded_vlm
from grpo_ctrl.vlm.llava import LlavaAdapter
from grpo_ctrl.vlm.tokenizer import build_tokenizer, words_of

register_script_configs()


def task_words(data: VQASource, train, max_words: int) -> list[str]:
    """Grid-VQA's fixed word list (the shipped model's ids); else the training split's most frequent words."""
    if isinstance(data, GridVQA):
        return vocabulary(data.grid)
    return words_of([text for s in train for text in (s.question, *s.answers)], max_words)


def build(cfg: DictConfig, words: list[str]) -> LlavaAdapter:
    torch.manual_seed(cfg.seed)
    space = KnobSpace(**OmegaConf.to_container(cfg.knobs))
    return embedded_vlm(build_tokenizer(words), EmbeddedVLMSize(**cfg.size), space)


def packed_batch(vlm: LlavaAdapter, groups: list[list], pool: int):
    """One sequence per image: [bos, image tokens, q1 a1 eos, q2 a2 eos, ...], right-padded.

    A custom 4D mask lets each question see only the image prefix and itself, and its positions restart
    right after the image, so every question is computed exactly as it would be alone at inference.
    Returns the model inputs, the (row, position) of each prediction, its target id, and which question each
    answer-token prediction belongs to (-1 for the EOS predictions).
    """
    tok = vlm.tokenizer
    prefix = [tok.bos_token_id] + [vlm.image_token_id] * vlm.num_image_tokens(pool)
    rows, segs, poss, pred_at, targets, owner = [], [], [], [], [], []
    question = 0
    for b, group in enumerate(groups):
        ids, seg, pos = list(prefix), [0] * len(prefix), list(range(len(prefix)))
        for j, sample in enumerate(group, start=1):
            q = tok.encode(sample.question, add_special_tokens=False)
            answer = tok.encode(sample.answer, add_special_tokens=False) or [tok.unk_token_id]
            start = len(ids)
            ids += q + answer + [tok.eos_token_id]
            seg += [j] * (len(q) + len(answer) + 1)
            pos += list(range(len(prefix), len(prefix) + len(q) + len(answer) + 1))
            first = start + len(q) - 1  # the last question token predicts the first answer token
            pred_at += [(b, first + t) for t in range(len(answer) + 1)]
            targets += answer + [tok.eos_token_id]
            owner += [question] * len(answer) + [-1]
            question += 1
        rows.append(ids)
        segs.append(seg)
        poss.append(pos)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    seg = torch.full((len(rows), width), -1)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for b in range(len(rows)):
        ids[b, : len(rows[b])] = torch.tensor(rows[b])
        seg[b, : len(rows[b])] = torch.tensor(segs[b])
        pos[b, : len(rows[b])] = torch.tensor(poss[b])
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same_or_prefix = (seg[:, :, None] == seg[:, None, :]) | (seg[:, None, :] == 0)
    mask = causal & same_or_prefix & (seg[:, None, :] >= 0)
    mask[:, :, 0] = True  # padding rows attend to <s> so softmax stays finite
    images = [group[0].image for group in groups]
    inputs = {"input_ids": ids, "attention_mask": mask[:, None], "position_ids": pos,
              "pixel_values": vlm.processor.image_processor(images, return_tensors="pt")["pixel_values"]}
    return inputs, torch.tensor(pred_at), torch.tensor(targets), torch.tensor(owner)


def prediction_logits(vlm: LlavaAdapter, inputs, where: torch.Tensor) -> torch.Tensor:
    hidden = vlm.model.model(**inputs).last_hidden_state
    return vlm.model.lm_head(hidden[where[:, 0], where[:, 1]])


def region_colour_targets(groups: list[list], pool: int, n_colours: int) -> torch.Tensor:
    """Colour histogram of the cells under each (pooled) vision token: (B, tokens, colours)."""
    cells = torch.from_numpy(np.stack([g[0].meta["cells"] for g in groups]))
    onehot = F.one_hot(cells, n_colours).permute(0, 3, 1, 2).float()
    pooled = F.avg_pool2d(onehot, pool)
    return pooled.flatten(2).transpose(1, 2)


def vision_aux_loss(aux_head, projected: torch.Tensor, groups: list[list], pool: int, n_colours: int,
                    grid: int) -> torch.Tensor:
    out = aux_head(projected)
    colours = region_colour_targets(groups, pool, n_colours)
    loss = F.cross_entropy(out[..., :n_colours].flatten(0, 1), colours.flatten(0, 1))
    where = region_cells(grid, pool).expand(len(groups), -1, -1)
    return loss + F.cross_entropy(out[..., n_colours:].flatten(0, 1), where.flatten(0, 1))


def region_cells(grid: int, pool: int) -> torch.Tensor:
    """Which cells each pooled vision token covers, as a distribution over the grid's cells: (tokens, grid^2).

    Trained as a classification target it gives every vision token a peaked code of where it is, which
    a question naming one cell can match with a single attention lookup.
    """
    onehot = torch.eye(grid * grid).reshape(grid * grid, 1, grid, grid)
    return F.avg_pool2d(onehot, pool).flatten(1).T


def sample_setting(rng: np.random.Generator, vlm: LlavaAdapter, cfg: DictConfig) -> tuple[int, int, list[int]]:
    space = vlm.knob_space
    n_total = vlm.num_blocks_total
    if rng.random() < cfg.p_full:
        return min(space.tiers.values()), max(space.top_ks), list(range(n_total))
    pool = int(rng.choice(list(space.tiers.values())))
    weights = None if cfg.top_k_weights is None else np.asarray(cfg.top_k_weights, float) / sum(cfg.top_k_weights)
    top_k = int(rng.choice(space.top_ks, p=weights))
    n = int(rng.integers(cfg.min_blocks, n_total + 1))
    keep = [0] + sorted(int(i) for i in rng.choice(np.arange(1, n_total), size=n - 1, replace=False))
    return pool, top_k, keep


def probe_settings(space: KnobSpace) -> dict[str, Knobs]:
    """Full, cheapest, and each knob alone at each of its cheaper values (the others at full): which knob binds
    which question type."""
    full = space.full
    settings = {"full": full, "cheapest": space.cheapest}
    settings |= {f"tier={t}": replace(full, tier=t) for t in space.tier_names if t != full.tier}
    settings |= {f"top_k={k}": replace(full, top_k=k) for k in space.top_ks if k != full.top_k}
    settings |= {f"blocks={n}": replace(full, num_blocks=n) for n in space.num_blocks if n != full.num_blocks}
    return settings


@torch.no_grad()
def evaluate(vlm: LlavaAdapter, samples, settings: dict) -> dict[str, dict[str, float]]:
    vlm.model.eval()
    report = {}
    for name, knobs in settings.items():
        with vlm.apply(knobs):
            correct = []  # every answer token right, teacher-forced (the first and only one on grid-VQA)
            for i in range(0, len(samples), 128):
                groups = [[s] for s in samples[i:i + 128]]
                inputs, where, targets, owner = packed_batch(vlm, groups, vlm.knob_space.tiers[knobs.tier])
                right = prediction_logits(vlm, inputs, where).argmax(-1) == targets
                correct += [bool(right[owner == q].all()) for q in range(len(groups))]
        types = sorted({s.qtype for s in samples} - {""})  # "": no type column
        row = {t: float(np.mean([c for c, s in zip(correct, samples) if s.qtype == t])) for t in types}
        row["all"] = float(np.mean(correct))
        report[name] = row
    vlm.model.train()
    return report


def training_groups(data: VQASource, train, cfg: DictConfig, step: int) -> list[list]:
    """One step's images, each with its questions: grid-VQA packs `questions_per_image` fresh questions on each
    generated image; another source walks its training split in a seeded order per epoch, one question each."""
    first = step * cfg.batch_size
    if isinstance(data, GridVQA):
        return [data.image_questions("train", i, cfg.questions_per_image) for i in range(first, first + cfg.batch_size)]
    groups = []
    for i in range(first, first + cfg.batch_size):
        epoch, j = divmod(i, len(train))
        groups.append([train[int(epoch_order(cfg.seed, epoch, len(train))[j])]])
    return groups


@functools.lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


@hydra.main(version_base="1.3", config_path="../conf", config_name="experiments/pretrain_tiny_vlm")
def main(cfg: DictConfig) -> None:
    check_minimums(cfg, {"steps": 1, "batch_size": 1, "questions_per_image": 1, "eval_every": 1,
                         "eval_samples": 1, "ckpt_every": 1, "threads": 1, "min_blocks": 1, "max_words": 1},
                   "pretrain_tiny_vlm.py")
    if cfg.top_k_weights is not None:
        check_minimums(cfg, {"top_k_weights": 0}, "pretrain_tiny_vlm.py")
        if len(cfg.top_k_weights) != len(cfg.knobs.top_ks) or sum(cfg.top_k_weights) <= 0:
            print(f"config error: pretrain_tiny_vlm.py: top_k_weights={list(cfg.top_k_weights)} needs one weight per "
                  f"value of knobs.top_ks={list(cfg.knobs.top_ks)}, not all zero", file=sys.stderr)
            sys.exit(2)
    torch.set_num_threads(cfg.threads)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    data = build_data(cfg.data)
    train = data.split("train", cfg.data.train_size)
    val = data.split("val", cfg.eval_samples)[:]  # scored at every evaluation: built once
    vlm = build(cfg, task_words(data, train, cfg.max_words))
    # Auxiliary vision-side head on grid-VQA (not shipped): each vision token predicts the colours under it and
    # where it is.
    aux = isinstance(data, GridVQA) and cfg.aux_weight > 0
    n_colours, n_cells = (len(data.colour_names), vlm.patch_grid**2) if aux else (0, 0)
    aux_head = torch.nn.Linear(vlm.model.config.text_config.hidden_size, n_colours + n_cells) if aux else None
    projected = {}
    vlm.vision_token_hook(lambda out: projected.__setitem__("x", out))
    params = [p for p in vlm.model.parameters() if p.requires_grad] + (list(aux_head.parameters()) if aux else [])
    print(f"params: {sum(p.numel() for p in params) / 1e6:.2f} M; vocabulary {len(vlm.tokenizer)}; "
          f"{len(train)} training samples; run dir {run_dir}", flush=True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    state_file, step = run_dir / "state.pt", 0
    if state_file.exists():
        state = torch.load(state_file, weights_only=False)
        vlm.model.load_state_dict(state["model"])
        if aux:
            aux_head.load_state_dict(state["aux_head"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step = state["step"]
        print(f"resumed at step {step}", flush=True)
    settings = probe_settings(vlm.knob_space)
    log = open(run_dir / "pretrain_log.jsonl", "a")
    vlm.model.train()
    t0 = time.time()
    while step < cfg.steps:
        rng = np.random.default_rng([cfg.seed, step])
        groups = training_groups(data, train, cfg, step)
        pool, top_k, keep = sample_setting(rng, vlm, cfg)
        vlm.set_pool(pool)
        vlm.set_top_k(top_k)
        vlm.keep_blocks(keep)
        inputs, where, targets, _ = packed_batch(vlm, groups, pool)
        answer_loss = F.cross_entropy(prediction_logits(vlm, inputs, where), targets)
        aux_loss = vision_aux_loss(aux_head, projected["x"], groups, pool, n_colours, vlm.patch_grid) if aux \
            else torch.zeros(())
        loss = answer_loss + cfg.aux_weight * aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        vlm.set_knobs(vlm.knob_space.full)
        step += 1
        if step % 50 == 0:
            ms = (time.time() - t0) / 50 * 1000
            print(f"step {step} loss {answer_loss.item():.3f} aux {aux_loss.item():.3f} {ms:.0f} ms/step", flush=True)
            t0 = time.time()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            report = evaluate(vlm, val, settings)
            print(json.dumps({"step": step, **report}), flush=True)
            log.write(json.dumps({"step": step, "loss": loss.item(), **report}) + "\n")
            log.flush()
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            state = {"model": vlm.model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                     "aux_head": aux_head.state_dict() if aux else None, "step": step}
            atomic_write(state_file, lambda tmp, state=state: torch.save(state, tmp))
    vlm.model.eval()
    recipe = {"recipe": {"script": "experiments/pretrain_tiny_vlm.py", **OmegaConf.to_container(cfg)}}
    vlm.save_pretrained(run_dir / "model", dtype=torch.float16, extra=recipe)
    if cfg.export_dir:
        vlm.save_pretrained(cfg.export_dir, dtype=torch.float16, extra=recipe)
        print(f"exported to {cfg.export_dir}")


if __name__ == "__main__":
    check_command_line("experiments/pretrain_tiny_vlm")
    main()
