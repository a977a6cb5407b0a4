"""Every baseline and comparison of budget policies: the controller against the best static setting (the lookup
table), oracles and random knobs, on a `Profile`.

Pure numpy on a `Profile` (every static knob setting run on the same requests, `grpo_ctrl.knob_grid`). A policy is
one setting index per request, so every policy (controller, static table, oracle) is scored by indexing the same
profile, and any two are compared request by request. One rule for meeting a budget (`budget.meets_budget`: at most
alpha of the requests over it), one tie rule (`best_static`: the faster on average) and one statistic (`paired_vs`:
a bootstrap interval of the per-request difference) for every report: validation, `experiments/evaluate.py`,
`experiments/evaluate_knobs.py` and the sweep report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from grpo_ctrl.budget import MAX_VIOLATION, meets_budget, overshoot
from grpo_ctrl.knobs import Knobs

POLICIES = ("controller", "lut", "oracle_static", "per_request_oracle", "random", "full")


@dataclass(frozen=True, eq=False)
class Profile:
    """Every static knob setting on the same N requests: `scores[s, i]` in [0, 1] and the batch-1 `latency_ms[s, i]`
    of request i under `settings[s]`. `tier_order` names the tiers cheapest first (a `KnobSpace.tier_names`); empty
    means their order of first appearance in `settings`, which is the space's when they come from `KnobSpace.all()`.
    """

    settings: tuple[Knobs, ...]
    scores: np.ndarray
    latency_ms: np.ndarray
    tier_order: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        settings = tuple(self.settings)
        scores = np.array(self.scores, dtype=float)
        latency = np.array(self.latency_ms, dtype=float)
        if scores.ndim != 2 or latency.shape != scores.shape or len(scores) != len(settings) or not scores.shape[1]:
            raise ValueError(f"profile: scores {scores.shape} and latency_ms {latency.shape} must both be "
                             f"(settings={len(settings)}, requests>=1)")
        if len(set(settings)) != len(settings):
            raise ValueError(f"profile: settings repeat: {[str(k) for k in settings]}")
        if not ((scores >= 0) & (scores <= 1)).all() or not (np.isfinite(latency) & (latency >= 0)).all():
            raise ValueError("profile: scores must lie in [0, 1] and latency_ms be finite and >= 0")
        tiers = tuple(self.tier_order) or tuple(dict.fromkeys(k.tier for k in settings))
        if missing := sorted({k.tier for k in settings} - set(tiers)):
            raise ValueError(f"profile: tiers {missing} of the settings are not in tier_order {list(tiers)}")
        scores.setflags(write=False)
        latency.setflags(write=False)
        for name, value in (("settings", settings), ("scores", scores), ("latency_ms", latency), ("tier_order", tiers)):
            object.__setattr__(self, name, value)

    @property
    def mean_latency_ms(self) -> np.ndarray:
        return self.latency_ms.mean(axis=1)

    @property
    def accuracy(self) -> np.ndarray:
        return self.scores.mean(axis=1)

    def index(self, knobs: Knobs) -> int:
        if knobs not in self.settings:
            raise ValueError(f"profile: {knobs} is not one of its {len(self.settings)} settings")
        return self.settings.index(knobs)

    def requests(self, keep: np.ndarray) -> Profile:
        """The same settings on the requests `keep` selects (a boolean mask or indices)."""
        return Profile(self.settings, self.scores[:, keep], self.latency_ms[:, keep], self.tier_order)


def budget_points(budgets: int | Sequence[float], cheapest_ms: float, most_ms: float,
                  reference_ms: float) -> list[float]:
    """Budgets (ms): `budgets` evenly spaced from the cheapest setting's latency to the largest, or, given a
    list, those fractions of the full-knob reference."""
    if isinstance(budgets, int):
        return [float(b) for b in np.linspace(cheapest_ms, most_ms, budgets)]
    return [float(f) * reference_ms for f in budgets]


def best_static(profile: Profile, budget_ms: float, alpha: float = MAX_VIOLATION) -> int | None:
    """The most accurate setting that meets the budget (at most `alpha` of its requests over it; ties: the faster on
    average), or None when none does. Chosen on val it is the static lookup table a deployment would ship; on
    test, the static oracle."""
    fits = meets_budget(profile.latency_ms, budget_ms, alpha)
    if not fits.any():
        return None
    accuracy = np.where(fits, profile.accuracy, -np.inf)
    tied = fits & np.isclose(accuracy, accuracy.max())
    return int(np.where(tied, profile.mean_latency_ms, np.inf).argmin())


def per_request_oracle(profile: Profile, budget_ms: float) -> np.ndarray:
    """Per request, the best-scoring setting that meets the budget on it (ties: the fastest on it), else its fastest
    setting: the most any controller choosing among these settings can score within the budget."""
    fits = profile.latency_ms <= budget_ms
    scores = np.where(fits, profile.scores, -np.inf)
    best = fits & (scores == scores.max(axis=0))
    pick = np.where(best, profile.latency_ms, np.inf).argmin(axis=0)
    return np.where(fits.any(axis=0), pick, profile.latency_ms.argmin(axis=0))


def crossfit_accuracy(profile: Profile, budget_ms: float, alpha: float = MAX_VIOLATION) -> float | None:
    """Accuracy of the best static setting (`best_static`) chosen on one half of the requests and scored on the
    other, both ways round: the best static setting a user could pick without seeing the requests it is scored on
    (the in-sample best of many settings is optimistic). None when no setting meets the budget on either half."""
    even = np.arange(profile.scores.shape[1]) % 2 == 0
    accs = []
    for pick, score in ((even, ~even), (~even, even)):
        if not pick.any() or not score.any():
            continue
        chosen = best_static(profile.requests(pick), budget_ms, alpha)
        if chosen is not None:
            accs.append(float(profile.scores[chosen, score].mean()))
    return float(np.mean(accs)) if accs else None


def cheapest_correct(profile: Profile) -> np.ndarray:
    """Per request, the setting cheapest on average that answers it right (score > 0.5), or -1 when none does: the
    headroom a per-request controller has over any one static setting."""
    order = np.argsort(profile.mean_latency_ms, kind="stable")
    right = profile.scores[order] > 0.5
    return np.where(right.any(axis=0), order[right.argmax(axis=0)], -1)


def accuracy_by_type(scores: np.ndarray, qtypes: Sequence[str]) -> dict[str, float]:
    """Mean of one setting's per-request `scores` overall ("all") and per question type ("": no type)."""
    scores, qtypes = np.asarray(scores, dtype=float), np.asarray(qtypes)
    return {"all": float(scores.mean()), **{t: float(scores[qtypes == t].mean()) for t in sorted(set(qtypes) - {""})}}


def type_routing(profile: Profile, qtypes: Sequence[str], budget_ms: float,
                 alpha: float = MAX_VIOLATION) -> float | None:
    """Accuracy when each question type goes to the setting that answers it best among those meeting the budget
    on that type's requests (so the routed policy meets it too): what a controller that knows the question type
    and nothing else can reach. One setting per type, not per request, so answers a setting gets right by chance
    lift it far less than the per-request oracle. None when some type has no setting meeting the budget."""
    qtypes = np.asarray(qtypes)
    right = 0.0
    for t in np.unique(qtypes):
        mine = qtypes == t
        fits = meets_budget(profile.latency_ms[:, mine], budget_ms, alpha)
        if not fits.any():
            return None
        right += profile.scores[fits][:, mine].sum(axis=1).max()
    return float(right / len(qtypes))


def headroom(profile: Profile, qtypes: Sequence[str], budgets_ms: Sequence[float],
             alpha: float = MAX_VIOLATION) -> list[dict]:
    """Per budget, where a controller has something to win, in accuracy: the best static setting meeting it, routing
    by question type (`type_routing`) and the per-request oracle (within the budget on every request where any
    setting is)."""
    out = []
    for budget in budgets_ms:
        best = best_static(profile, budget, alpha)
        oracle = evaluate_choice(profile, per_request_oracle(profile, budget), budget, alpha)
        out.append({"budget_ms": float(budget), "best_static": None if best is None else float(profile.accuracy[best]),
                    "best_static_knobs": None if best is None else str(profile.settings[best]),
                    "type_routing": type_routing(profile, qtypes, budget, alpha),
                    "per_request_oracle": oracle.accuracy, "per_request_oracle_violation_rate": oracle.violation_rate})
    return out


def random_choice(n_settings: int, n_requests: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(n_settings, size=n_requests)


@dataclass
class PolicyResult:
    """One policy's choice scored on a profile at one budget; `scores` and `latency_ms` are per request, for paired
    comparisons, and stay out of `to_dict()`."""

    accuracy: float
    violation_rate: float
    budgeted_accuracy: float
    mean_latency_ms: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    overshoot_p90: float
    overshoot_p99: float
    meets_budget: bool
    mean_tier: float
    mean_top_k: float
    mean_num_blocks: float
    histogram: dict[str, int]
    scores: np.ndarray = field(repr=False)
    latency_ms: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("scores", "latency_ms")}
        return {**out, "histogram": dict(self.histogram)}


def evaluate_choice(profile: Profile, choice: np.ndarray, budget_ms: float,
                    alpha: float = MAX_VIOLATION) -> PolicyResult:
    """Score setting `choice[i]` on request i. A request counts towards `budgeted_accuracy` only within the budget.
    `mean_tier` is the mean index in `profile.tier_order` (0 = cheapest tier)."""
    choice = np.asarray(choice)
    n = profile.scores.shape[1]
    in_range = choice.dtype.kind in "iu" and ((choice >= 0) & (choice < len(profile.settings))).all()
    if choice.shape != (n,) or not in_range:
        raise ValueError(f"choice: need {n} integer setting indices in [0, {len(profile.settings)}), got "
                         f"shape {choice.shape} dtype {choice.dtype}")
    scores = profile.scores[choice, np.arange(n)]
    latency = profile.latency_ms[choice, np.arange(n)]
    knob_values = np.array([(profile.tier_order.index(k.tier), k.top_k, k.num_blocks) for k in profile.settings])
    tier, top_k, num_blocks = knob_values[choice].mean(axis=0)
    counts = np.bincount(choice, minlength=len(profile.settings))
    return PolicyResult(**policy_metrics(scores, latency, budget_ms, alpha),
                        mean_tier=float(tier), mean_top_k=float(top_k), mean_num_blocks=float(num_blocks),
                        histogram={str(profile.settings[s]): int(c) for s, c in enumerate(counts) if c},
                        scores=scores, latency_ms=latency)


def policy_metrics(scores: np.ndarray, latency_ms: np.ndarray, budget_ms: float,
                   alpha: float = MAX_VIOLATION) -> dict[str, float | bool]:
    """Accuracy and latency of one policy's requests at one budget: a request over the budget is a violation and
    scores 0 in `budgeted_accuracy`; `overshoot_p90` / `_p99` are quantiles of (L - B)+ / B; `meets_budget` is the
    one rule (`budget.meets_budget`)."""
    scores, latency = np.asarray(scores, dtype=float), np.asarray(latency_ms, dtype=float)
    within = latency <= budget_ms
    p50, p90, p99 = np.percentile(latency, [50, 90, 99])
    return {"accuracy": float(scores.mean()), "violation_rate": float((~within).mean()),
            "budgeted_accuracy": float((scores * within).mean()), "mean_latency_ms": float(latency.mean()),
            "latency_p50_ms": float(p50), "latency_p90_ms": float(p90), "latency_p99_ms": float(p99),
            "overshoot_p90": overshoot(latency, budget_ms, 0.9), "overshoot_p99": overshoot(latency, budget_ms, 0.99),
            "meets_budget": bool(meets_budget(latency, budget_ms, alpha))}


def bootstrap_interval(values: np.ndarray, draws: int = 10000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (per-request paired differences: the requests are the
    sampling unit, and no normal approximation is needed for 0/±1 differences)."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or not len(values) or draws < 1 or not 0 < level < 1:
        raise ValueError(f"bootstrap: need 1-d non-empty values, draws >= 1 and 0 < level < 1; got shape "
                         f"{values.shape}, draws={draws}, level={level}")
    rng = np.random.default_rng(seed)
    # In chunks of draws, so the resampled index matrix stays ~32 MB however many requests there are.
    chunk = max(1, 2**22 // len(values))
    means = np.concatenate([values[rng.integers(len(values), size=(min(chunk, draws - start), len(values)))].mean(1)
                            for start in range(0, draws, chunk)])
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def paired_vs(reference: PolicyResult, other: PolicyResult, seed: int = 0) -> dict:
    """Mean per-request score difference other - reference, its 95 % bootstrap interval, and requests won/lost."""
    if reference.scores.shape != other.scores.shape:
        raise ValueError(f"paired_vs: policies scored on {reference.scores.shape} and {other.scores.shape} requests")
    diff = other.scores - reference.scores
    low, high = bootstrap_interval(diff, seed=seed)
    return {"diff": float(diff.mean()), "ci_low": low, "ci_high": high, "wins": int((diff > 0).sum()),
            "losses": int((diff < 0).sum())}


def budget_comparison(profile: Profile, choice: np.ndarray, budget_ms: float, random: np.ndarray,
                      seed: int = 0, alpha: float = MAX_VIOLATION) -> dict:
    """The controller's `choice` at one budget against the best static setting meeting it (`best_static`, chosen
    and scored on the same requests, with its cross-fitted accuracy) and against uniformly random knobs: one
    budget of the validation report. The controller beats the static setting only when it meets the budget and
    the paired interval lies above 0."""
    ctrl = evaluate_choice(profile, choice, budget_ms, alpha)
    best = best_static(profile, budget_ms, alpha)
    static, vs = None, None
    keys = ("accuracy", "violation_rate", "budgeted_accuracy", "latency_p50_ms", "latency_p90_ms", "overshoot_p90",
            "overshoot_p99", "meets_budget")
    if best is not None:
        result = evaluate_choice(profile, np.full(len(choice), best), budget_ms, alpha)
        vs = paired_vs(result, ctrl, seed=seed)
        static = {"knobs": str(profile.settings[best]), "mean_latency_ms": result.mean_latency_ms,
                  **{k: getattr(result, k) for k in keys if k != "meets_budget"},
                  "crossfit_accuracy": crossfit_accuracy(profile, budget_ms, alpha), "controller_minus_static": vs}
    rand = evaluate_choice(profile, random, budget_ms, alpha)
    return {"controller": {k: getattr(ctrl, k) for k in keys}
            | {"knobs": dict(sorted(ctrl.histogram.items(), key=lambda kv: -kv[1]))},
            "best_static": static,
            "random": {k: getattr(rand, k) for k in ("accuracy", "violation_rate", "budgeted_accuracy")},
            "controller_beats_best_static": ctrl.meets_budget and (vs is None or vs["ci_low"] > 0)}


def oracle_gap_closed(policy_acc: float, lut_acc: float, oracle_acc: float) -> float:
    """The share of the lookup table -> per-request oracle gap the policy closes: 0 = no better than the table,
    1 = as good as the oracle, < 0 worse than the table. NaN when oracle == LUT: with no gap the ratio is 0/0 or
    ±inf, and the table is already as good as any per-request choice could be."""
    if math.isclose(oracle_acc, lut_acc, rel_tol=0.0, abs_tol=1e-12):
        return math.nan
    return (policy_acc - lut_acc) / (oracle_acc - lut_acc)


def pareto_front(latency: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point dominates (as fast or faster and as accurate or more, strictly better
    in one), fastest first. Identical points do not dominate each other, so both stay."""
    lat, acc = np.asarray(latency, dtype=float), np.asarray(accuracy, dtype=float)
    if lat.ndim != 1 or lat.shape != acc.shape:
        raise ValueError(f"pareto_front: latency {lat.shape} and accuracy {acc.shape} must be equal-length 1-d")
    no_worse = (lat[:, None] <= lat) & (acc[:, None] >= acc)  # [j, i]: j is no worse than i
    better = (lat[:, None] < lat) | (acc[:, None] > acc)
    front = np.flatnonzero(~(no_worse & better).any(axis=0))
    return [int(i) for i in front[np.argsort(lat[front], kind="stable")]]


def evaluate_budgets(test: Profile, val: Profile, budgets_ms: Sequence[float], controller: Mapping[float, np.ndarray],
                     full: Knobs | None = None, seed: int = 0, alpha: float = MAX_VIOLATION) -> dict:
    """Every policy per budget on the test requests, as a JSON-able dict. The lookup table ("lut") is chosen on
    `val` and scored on test; "oracle_static" and "per_request_oracle" see the test requests. `full` defaults to
    the setting slowest on average on val. "random" is one seeded uniform draw, the same requests' settings at
    every budget. Static policies meet the budget by `budget.meets_budget` (at most `alpha` of val's requests
    over it, for the table). `controller_beats_lut`: the controller meets the budget and the paired interval lies
    above 0. `oracle_gap_closed` is in budgeted accuracy: within the budget the per-request oracle is an upper
    bound on every policy, while on plain accuracy a policy can pass it by running over the budget."""
    if missing := [b for b in budgets_ms if b not in controller]:
        raise ValueError(f"evaluate_budgets: no controller choice for budgets {missing}")
    n = test.scores.shape[1]
    full = full if full is not None else val.settings[int(val.mean_latency_ms.argmax())]
    rand = random_choice(len(test.settings), n, np.random.default_rng(seed))
    front = set(pareto_front(test.mean_latency_ms, test.accuracy))
    out = {"full": str(full), "budgets": [],
           "settings": [{"knobs": str(k), "accuracy": float(a), "mean_latency_ms": float(t), "pareto_front": s in front}
                        for s, (k, a, t) in enumerate(zip(test.settings, test.accuracy, test.mean_latency_ms))]}
    for budget in budgets_ms:
        lut = best_static(val, budget, alpha)
        statics = {"lut": None if lut is None else test.index(val.settings[lut]),
                   "oracle_static": best_static(test, budget, alpha), "full": test.index(full)}
        results = {"controller": evaluate_choice(test, controller[budget], budget, alpha),
                   "per_request_oracle": evaluate_choice(test, per_request_oracle(test, budget), budget, alpha),
                   "random": evaluate_choice(test, rand, budget, alpha)}
        results |= {name: None if s is None else evaluate_choice(test, np.full(n, s), budget, alpha)
                    for name, s in statics.items()}
        policies = {name: None if results[name] is None else results[name].to_dict() for name in POLICIES}
        for name, s in statics.items():
            if s is not None:
                policies[name]["knobs"] = str(test.settings[s])
        ctrl, table, oracle = results["controller"], results["lut"], results["per_request_oracle"]
        gap = math.nan if table is None else oracle_gap_closed(ctrl.budgeted_accuracy, table.budgeted_accuracy,
                                                               oracle.budgeted_accuracy)
        vs = None if table is None else paired_vs(table, ctrl, seed=seed)
        out["budgets"].append({"budget_ms": float(budget), "policies": policies, "controller_vs_lut": vs,
                               "controller_beats_lut": ctrl.meets_budget and (vs is None or vs["ci_low"] > 0),
                               "oracle_gap_closed": None if math.isnan(gap) else gap})
    return out
