"""Budgets in either unit resolve to the same milliseconds and the same controller input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import small_cfg

from grpo_ctrl.app import train
from grpo_ctrl.budget import BudgetError, BudgetScale, ReachWarning, warn_unreachable
from grpo_ctrl.parallel import ParallelContext


def test_fractions_and_ms_resolve_to_the_same_budgets():
    frac, ms = BudgetScale("fraction", 20.0), BudgetScale("ms", 20.0)
    assert np.allclose(frac.ms([0.5, 1.0]), ms.ms([10.0, 20.0]))
    assert np.allclose(frac.fraction([0.5, 1.0]), ms.fraction([10.0, 20.0]))  # what the controller reads
    assert frac.of_request(budget_fraction=0.5) == ms.of_request(budget_ms=10.0) == (10.0, 0.5)


@pytest.mark.parametrize("kwargs,message", [
    ({}, "exactly one of"),
    ({"budget_ms": 5.0, "budget_fraction": 0.5}, "exactly one of"),
    ({"budget_ms": 0.0}, "must be > 0"),
    ({"budget_fraction": float("nan")}, "must be > 0"),
])
def test_a_bad_request_budget_is_one_line(kwargs, message):
    with pytest.raises(BudgetError, match=message) as err:
        BudgetScale("fraction", 20.0).of_request(**kwargs)
    assert "\n" not in str(err.value)


def test_bad_scales_are_refused():
    with pytest.raises(BudgetError, match="unknown"):
        BudgetScale("seconds", 1.0)
    with pytest.raises(BudgetError, match="must be > 0"):
        BudgetScale("ms", -4.0)


def test_unreachable_budgets_warn_once_naming_them():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_unreachable([0.001, 5.0, 30.0], cheapest_ms=8.0, where="budgets.val")
        assert not warn_unreachable([10.0], cheapest_ms=8.0, where="budgets.val")
    assert len(caught) == 1 and issubclass(caught[0].category, ReachWarning)
    assert "0.001, 5" in str(caught[0].message) and "8 ms" in str(caught[0].message)


def test_training_in_ms_matches_training_in_fractions(tiny_model_dir, tmp_path):
    """The same budgets stated in ms give the controller the same inputs and the same validation report."""
    common = ["steps=2", "val_every=2"]
    by_fraction = train(small_cfg(tiny_model_dir, *common, "budgets.val=[0.5,1.0]", "budgets.train_min=0.4",
                                  "budgets.train_max=1.0"), tmp_path / "fraction", ParallelContext())
    ref = by_fraction["reference_latency_ms"]
    by_ms = train(small_cfg(tiny_model_dir, *common, "budgets.unit=ms", f"budgets.val=[{0.5 * ref!r},{ref!r}]",
                            f"budgets.train_min={0.4 * ref!r}", f"budgets.train_max={ref!r}"),
                  tmp_path / "ms", ParallelContext())
    assert by_ms["reference_latency_ms"] == ref  # measured in both units: the controller's unit of budgets
    for a, (m, b) in zip(by_fraction["budgets"].values(), by_ms["budgets"].items()):
        assert b["budget_ms"] == pytest.approx(a["budget_ms"]) == pytest.approx(float(m))
        assert a["controller"]["knobs"] == b["controller"]["knobs"]
        assert a["controller"]["accuracy"] == b["controller"]["accuracy"]
