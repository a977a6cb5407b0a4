"""The `key=value` grammar of serving and the benchmarks (`grpo_ctrl.cli.key_values`): typed, one line per mistake."""

import pytest

from grpo_ctrl.cli import CommandLineError, key_values
from grpo_ctrl.serve import ServeConfig

REQUIRED = ["run_dir=runs/a", "image=x.png"]


@pytest.mark.parametrize("question", ["what colour is cell #7", "yes", "Q: is it 3?", "null", "[1, 2]", "a=b",
                                      "cost ${x}?"])
def test_text_is_taken_verbatim(question):
    assert key_values(ServeConfig, [*REQUIRED, f"question={question}"]).question == question


def test_values_are_typed():
    cfg = key_values(ServeConfig, [*REQUIRED, "question=q", "budget_ms=12", "threads=2", "device=null"])
    assert (cfg.budget_ms, cfg.threads, cfg.device, cfg.budget_fraction) == (12.0, 2, None, None)
    assert key_values(ServeConfig, [*REQUIRED, "question=q", "budget_fraction=null"]).budget_fraction is None


@pytest.mark.parametrize("args,message", [
    ([*REQUIRED, "question=q", "budget=3"], "budget is not a key (did you mean budget_ms?)"),
    ([*REQUIRED, "question=q", "budget_ms=fast"], "budget_ms=fast: Value 'fast'"),
    ([*REQUIRED, "question=q", "threads=1.5"], "threads=1.5"),
    (["run_dir=runs/a", "question=q"], "image=... missing"),
    ([*REQUIRED, "question"], "'question' is not key=value"),
])
def test_mistakes_are_one_line(args, message):
    with pytest.raises(CommandLineError) as err:
        key_values(ServeConfig, args)
    assert message in str(err.value) and "\n" not in str(err.value)
