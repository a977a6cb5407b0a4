"""Every knob setting on the same prompts: the outcomes through the rollout engine (read from the outcome store
where it holds them) and a batch-1 latency per pair from one latency provider call, as `baselines.Profile`s.

Latency depends on a request's work signature (knobs, image / prompt / generated token counts), not on its pixels,
so each distinct signature is timed once, on the first request that has it, and the time goes to all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from grpo_ctrl.baselines import Profile
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.latency import Request
from grpo_ctrl.outcomes import Outcome
from grpo_ctrl.parallel import ParallelContext
from grpo_ctrl.rollout import Prompt, RolloutEngine


def signature(knobs: Knobs, outcome: Outcome) -> tuple:
    return knobs, outcome.image_tokens, outcome.prompt_tokens, outcome.generated_tokens


def requests(vlm, provider, pairs: Sequence[tuple[Prompt, Knobs, Outcome]]) -> list[Request]:
    """Batch-1 latency requests for (prompt, knobs, outcome) triples; model inputs only for a measuring provider."""
    out = []
    for p, k, o in pairs:
        inputs = vlm.inputs([p.sample.image], [p.sample.question], k.tier) if provider.needs_inputs else None
        out.append(Request(k, o.image_tokens, o.prompt_tokens, o.generated_tokens, inputs))
    return out


@dataclass
class KnobGrid:
    """`outcomes[pool][knobs][i]`: prompt i of `pools[pool]` answered under `knobs`, for every setting."""

    engine: RolloutEngine
    pools: dict[str, list[Prompt]]
    settings: tuple[Knobs, ...]
    outcomes: dict[str, dict[Knobs, list[Outcome]]]
    ctx: ParallelContext

    @classmethod
    def answer(cls, engine: RolloutEngine, pools: Mapping[str, Sequence[Prompt]], ctx: ParallelContext | None = None,
               settings: Sequence[Knobs] | None = None) -> KnobGrid:
        """Each rank answers its shard of every pool (`ParallelContext.shard`); all get the whole grid."""
        ctx = ctx or ParallelContext()
        settings = tuple(settings or engine.vlm.knob_space.all())
        outcomes = {}
        for name, prompts in pools.items():
            mine = ctx.shard(list(prompts))
            answered = {k: engine.run(mine, [k] * len(mine)) for k in settings}
            rows = ctx.unshard([[answered[k][i] for k in settings] for i in range(len(mine))])
            outcomes[name] = {k: [row[s] for row in rows] for s, k in enumerate(settings)}
        return cls(engine, {n: list(p) for n, p in pools.items()}, settings, outcomes, ctx)

    def scores(self, pool: str) -> np.ndarray:
        return np.array([[o.score for o in self.outcomes[pool][k]] for k in self.settings], dtype=float)

    def latency(self, provider) -> dict[str, np.ndarray]:
        """(settings, prompts) latency matrix of every pool from one provider call per rank over the distinct
        work signatures (shared between ranks, then gathered), so a measuring provider interleaves them all."""
        first: dict[tuple, tuple[Prompt, Knobs, Outcome]] = {}
        for name, prompts in self.pools.items():
            for k in self.settings:
                for p, o in zip(prompts, self.outcomes[name][k]):
                    first.setdefault(signature(k, o), (p, k, o))
        keys = list(first)
        mine = self.ctx.shard(keys)
        timed = provider.latency_ms(requests(self.engine.vlm, provider, [first[key] for key in mine])) if mine else []
        ms = dict(zip(keys, self.ctx.unshard([float(t) for t in timed])))
        return {name: np.array([[ms[signature(k, o)] for o in self.outcomes[name][k]] for k in self.settings])
                for name in self.pools}

    def distinct_requests(self) -> int:
        return len({signature(k, o) for pool in self.outcomes.values() for k, row in pool.items() for o in row})

    def profiles(self, provider) -> dict[str, Profile]:
        latency = self.latency(provider)
        tiers = tuple(self.engine.vlm.knob_space.tier_names)
        return {name: Profile(self.settings, self.scores(name), latency[name], tiers) for name in self.pools}
