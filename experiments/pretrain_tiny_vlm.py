"""Elastic pretraining of the embedded MoE VLM on grid-VQA.

Every step trains under a random knob setting (tier, router top-k, random subset of blocks that keeps
block 0), so every setting of the knob space is a working model. Resumable: rerun with the same
`hydra.run.dir` and it continues from `state.pt`.

    python experiments/pretrain_tiny_vlm.py export_dir=grpo_ctrl/assets/embedded_vlm
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from grpo_ctrl.data import GridVQA, vocabulary
from grpo_ctrl.knobs import KnobSpace
from grpo_ctrl.vlm.builder import EmbeddedVLMSize, embedded_vlm
from grpo_ctrl.vlm.llava import LlavaAdapter
from grpo_ctrl.vlm.tokenizer import build_tokenizer


def build(cfg: DictConfig) -> LlavaAdapter:
    torch.manual_seed(cfg.seed)
    space = KnobSpace(**OmegaConf.to_container(cfg.knobs))
    return embedded_vlm(build_tokenizer(vocabulary()), EmbeddedVLMSize(**cfg.size), space)


def packed_batch(vlm: LlavaAdapter, groups: list[list], pool: int):
    """One sequence per image: [bos, image tokens, q1 a1 eos, q2 a2 eos, ...], right-padded.

    A custom 4D mask lets each question see only the image prefix and itself, and its positions restart
    right after the image, so every question is computed exactly as it would be alone at inference.
    Returns the model inputs, the (row, position) of each prediction and its target id.
    """
    tok = vlm.tokenizer
    prefix = [tok.bos_token_id] + [vlm.image_token_id] * vlm.num_image_tokens(pool)
    rows, segs, poss, pred_at, targets = [], [], [], [], []
    for b, group in enumerate(groups):
        ids, seg, pos = list(prefix), [0] * len(prefix), list(range(len(prefix)))
        for j, sample in enumerate(group, start=1):
            q = tok.encode(sample.question, add_special_tokens=False)
            answer = tok.convert_tokens_to_ids(sample.answer)
            start = len(ids)
            ids += q + [answer, tok.eos_token_id]
            seg += [j] * (len(q) + 2)
            pos += list(range(len(prefix), len(prefix) + len(q) + 2))
            last_q = start + len(q) - 1
            pred_at += [(b, last_q), (b, last_q + 1)]
            targets += [answer, tok.eos_token_id]
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
    where = torch.tensor(pred_at)
    return inputs, where, torch.tensor(targets)


def prediction_logits(vlm: LlavaAdapter, inputs, where: torch.Tensor) -> torch.Tensor:
    hidden = vlm.model.model(**inputs).last_hidden_state
    return vlm.model.lm_head(hidden[where[:, 0], where[:, 1]])


def region_colour_targets(groups: list[list], pool: int, n_colours: int) -> torch.Tensor:
    """Colour histogram of the cells under each (pooled) vision token: (B, tokens, colours)."""
    cells = torch.from_numpy(np.stack([g[0].cells for g in groups]))
    onehot = F.one_hot(cells, n_colours).permute(0, 3, 1, 2).float()
    pooled = F.avg_pool2d(onehot, pool)
    return pooled.flatten(2).transpose(1, 2)


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
    top_k = int(rng.choice(space.top_ks))
    n = int(rng.integers(cfg.min_blocks, n_total + 1))
    keep = [0] + sorted(int(i) for i in rng.choice(np.arange(1, n_total), size=n - 1, replace=False))
    return pool, top_k, keep


@torch.no_grad()
def evaluate(vlm: LlavaAdapter, samples, settings: dict) -> dict[str, dict[str, float]]:
    vlm.model.eval()
    report = {}
    for name, knobs in settings.items():
        with vlm.apply(knobs):
            correct = []
            for i in range(0, len(samples), 128):
                groups = [[s] for s in samples[i:i + 128]]
                inputs, where, targets = packed_batch(vlm, groups, vlm.knob_space.tiers[knobs.tier])
                pred = prediction_logits(vlm, inputs, where)[0::2].argmax(-1)
                correct += (pred == targets[0::2]).tolist()
        types = sorted({s.qtype for s in samples})
        row = {t: float(np.mean([c for c, s in zip(correct, samples) if s.qtype == t])) for t in types}
        row["all"] = float(np.mean(correct))
        report[name] = row
    vlm.model.train()
    return report


@hydra.main(version_base="1.3", config_path="../conf/experiments", config_name="pretrain_tiny_vlm")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.threads)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    vlm = build(cfg)
    data = GridVQA(seed=cfg.data.seed, mix=dict(cfg.data.mix))
    val = data.split("val", cfg.eval_samples)
    n_colours = len(data.colour_names)
    # Auxiliary vision-side head (not shipped): each vision token predicts the colours under it and where it is.
    n_cells = vlm.patch_grid**2
    aux_head = torch.nn.Linear(vlm.model.config.text_config.hidden_size, n_colours + n_cells)
    projected = {}
    vlm.vision_token_hook(lambda out: projected.__setitem__("x", out))
    params = [p for p in vlm.model.parameters() if p.requires_grad] + list(aux_head.parameters())
    print(f"params: {sum(p.numel() for p in params) / 1e6:.2f} M; run dir {run_dir}", flush=True)
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
        aux_head.load_state_dict(state["aux_head"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step = state["step"]
        print(f"resumed at step {step}", flush=True)
    settings = {"full": vlm.knob_space.full, "cheapest": vlm.knob_space.cheapest}
    log = open(run_dir / "pretrain_log.jsonl", "a")
    vlm.model.train()
    t0 = time.time()
    while step < cfg.steps:
        rng = np.random.default_rng([cfg.seed, step])
        first = step * cfg.batch_size
        groups = [data.image_questions("train", i, cfg.questions_per_image)
                  for i in range(first, first + cfg.batch_size)]
        pool, top_k, keep = sample_setting(rng, vlm, cfg)
        vlm.set_pool(pool)
        vlm.set_top_k(top_k)
        vlm.keep_blocks(keep)
        inputs, where, targets = packed_batch(vlm, groups, pool)
        answer_loss = F.cross_entropy(prediction_logits(vlm, inputs, where), targets)
        aux_out = aux_head(projected["x"])
        colours = region_colour_targets(groups, pool, n_colours)
        aux_loss = F.cross_entropy(aux_out[..., :n_colours].flatten(0, 1), colours.flatten(0, 1))
        where = region_cells(vlm.patch_grid, pool).expand(len(groups), -1, -1)
        aux_loss = aux_loss + F.cross_entropy(aux_out[..., n_colours:].flatten(0, 1), where.flatten(0, 1))
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
            tmp = state_file.with_suffix(".tmp")
            torch.save({"model": vlm.model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "aux_head": aux_head.state_dict(),
                        "step": step}, tmp)
            os.replace(tmp, state_file)
    vlm.model.eval()
    recipe = {"recipe": {"script": "experiments/pretrain_tiny_vlm.py", **OmegaConf.to_container(cfg)}}
    vlm.save_pretrained(run_dir / "model", dtype=torch.float16, extra=recipe)
    if cfg.export_dir:
        vlm.save_pretrained(cfg.export_dir, dtype=torch.float16, extra=recipe)
        print(f"exported to {cfg.export_dir}")


if __name__ == "__main__":
    main()
