"""GRPO maths as pure functions: group-relative advantages and the clipped surrogate loss."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch


class Advantage(StrEnum):
    """How a group's centred rewards are scaled (`advantages`)."""

    group = "group"
    batch = "batch"
    none = "none"


def advantages(rewards: torch.Tensor, mode: str = "group", eps: float = 1e-6,
               batch_std: float | None = None) -> torch.Tensor:
    """Advantages for rewards shaped (prompts, group_size).

    group: (r - group mean) / (group std + eps)      -- the GRPO default
    batch: (r - group mean) / (std of all rewards + eps); pass `batch_std` when the batch spans ranks
    none:  r - group mean
    """
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if mode == "group":
        return centred / (rewards.std(dim=1, unbiased=False, keepdim=True) + eps)
    if mode == "batch":
        std = rewards.std(unbiased=False) if batch_std is None else batch_std
        return centred / (std + eps)
    if mode == "none":
        return centred
    raise ValueError(f"grpo.advantage={mode!r} is unknown; use group, batch or none")


def frac_zero_std(rewards: torch.Tensor, tol: float = 1e-9) -> float:
    """Fraction of groups whose rewards are all equal: they carry no learning signal."""
    return float((rewards.std(dim=1, unbiased=False) <= tol).float().mean())


@dataclass
class LossParts:
    loss: torch.Tensor
    surrogate: torch.Tensor
    kl: torch.Tensor
    entropy: torch.Tensor
    clip_frac: torch.Tensor


def grpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, epsilon: float = 0.2,
              entropy: torch.Tensor | None = None, entropy_coef: float = 0.0, logp_ref: torch.Tensor | None = None,
              beta: float = 0.0) -> LossParts:
    """-mean(min(rho A, clip(rho, 1-eps, 1+eps) A)) + beta KL(pi || ref) - entropy_coef H, rho = exp(logp - logp_old).

    KL uses the k3 estimator exp(ref - logp) - (ref - logp) - 1 (unbiased, >= 0).
    """
    ratio = torch.exp(logp - logp_old)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - epsilon, 1 + epsilon) * adv
    surrogate = -torch.minimum(unclipped, clipped).mean()
    clip_frac = ((ratio - 1).abs() > epsilon).float().mean()
    zero = logp.new_zeros(())
    kl = zero
    if beta > 0 and logp_ref is not None:
        d = logp_ref - logp
        kl = (torch.exp(d) - d - 1).mean()
    ent = entropy.sum(-1).mean() if entropy is not None else zero
    loss = surrogate + beta * kl - entropy_coef * ent
    return LossParts(loss, surrogate.detach(), kl.detach(), ent.detach(), clip_frac.detach())
