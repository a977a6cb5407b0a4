"""Latency budgets: as the config or a request states them (a fraction of the reference latency, or ms),
resolved to the milliseconds latency is compared with and to the fraction the controller reads.

The reference is the full-knob latency of a typical request on this machine (measured when training starts,
saved with the controller). The controller's budget encoder is built for fractions around [0, 1], so it always
reads `ms / reference_ms`, whatever unit the budgets were given in.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class Unit(StrEnum):
    """What a budget value means."""

    fraction = "fraction"  # of the reference (full-knob) latency
    ms = "ms"


UNITS = tuple(u.value for u in Unit)
MAX_VIOLATION = 0.05  # alpha of the one rule (`meets_budget`); budgets.max_violation


def violation_rate(latency_ms, budget_ms: float) -> np.ndarray:
    """Share of requests (the last axis) that take longer than the budget."""
    return (np.asarray(latency_ms, dtype=float) > budget_ms).mean(axis=-1)


def meets_budget(latency_ms, budget_ms: float, alpha: float = MAX_VIOLATION) -> np.ndarray:
    """THE rule of every report and baseline: a policy meets budget B when at most `alpha` of its requests
    (the last axis of `latency_ms`) take longer than B."""
    return violation_rate(latency_ms, budget_ms) <= alpha + 1e-12


def overshoot(latency_ms, budget_ms: float, q: float) -> float:
    """The q-quantile over requests of how far past the budget a request runs, as a fraction of it (0: within)."""
    over = np.maximum(np.asarray(latency_ms, dtype=float) - budget_ms, 0.0) / budget_ms
    return float(np.quantile(over, q))


class BudgetError(ValueError):
    """A budget that cannot be resolved (one line)."""


@dataclass(frozen=True)
class BudgetScale:
    unit: str  # what budget values mean: fraction (of reference_ms) | ms
    reference_ms: float

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise BudgetError(f"budget unit {self.unit!r} is unknown; use one of {list(UNITS)}")
        if not self.reference_ms > 0:
            raise BudgetError(f"reference latency {self.reference_ms} ms must be > 0 (re-fit or re-measure it)")

    def ms(self, values) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        return values * self.reference_ms if self.unit == "fraction" else values

    def fraction(self, values) -> np.ndarray:
        """What the controller reads."""
        values = np.asarray(values, dtype=float)
        return values / self.reference_ms if self.unit == "ms" else values

    def of_request(self, budget_ms: float | None = None, budget_fraction: float | None = None) -> tuple[float, float]:
        """(ms, fraction) of one request's budget, given in exactly one of the two forms."""
        if (budget_ms is None) == (budget_fraction is None):
            raise BudgetError("give a request's budget as exactly one of budget_ms=... or budget_fraction=...")
        value = budget_ms if budget_ms is not None else budget_fraction * self.reference_ms
        if not np.isfinite(value) or value <= 0:
            raise BudgetError(f"budget {budget_ms if budget_ms is not None else budget_fraction} must be > 0")
        return float(value), float(value / self.reference_ms)


class ReachWarning(UserWarning):
    """A budget below what the cheapest setting costs: every request at it will run over."""


def warn_unreachable(budgets_ms, cheapest_ms: float, where: str) -> bool:
    """Warn once (per call) about the budgets below `cheapest_ms`; True when there were any."""
    low = sorted(float(b) for b in np.atleast_1d(budgets_ms) if b < cheapest_ms)
    if low:
        shown = ", ".join(f"{b:.3g}" for b in low[:5]) + (" ..." if len(low) > 5 else "")
        warnings.warn(f"{where}: budget(s) {shown} ms are below the cheapest knob setting's {cheapest_ms:.3g} ms; "
                      "requests at them will run over", ReachWarning, stacklevel=2)
    return bool(low)
