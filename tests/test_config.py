"""Config composition for every group option, and bad configs rejected with one line."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from grpo_ctrl.config import ConfigError, register_configs, validate

CONF = str(Path(__file__).resolve().parent.parent / "conf")
register_configs()

GROUP_OPTIONS = {
    "model": ["embedded", "hf"],
    "data": ["grid_vqa", "hf_vqa"],
    "controller": ["default"],
    "reward": ["default", "seed"],
    "latency": ["estimator", "measured", "hooked"],
    "parallel": ["single", "dp", "ddp"],
    "logger": ["wandb", "none"],
}


def _compose(overrides=()):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_every_group_option_has_a_yaml_file():
    for group, options in GROUP_OPTIONS.items():
        assert sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml")) == sorted(options)


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUP_OPTIONS.items() for o in opts])
def test_every_group_option_composes_and_validates(group, option):
    extra = {"hf": ["model.path=/models/x"], "hf_vqa": ["data.path=/data/x"]}.get(option, [])
    cfg = _compose([f"{group}={option}", *extra])
    validate(cfg)
    if group == "latency":
        assert cfg.latency.train == "estimator" and cfg.latency.val == option
    if group == "reward":
        assert cfg.reward.name == option


@pytest.mark.parametrize("override,message", [
    ("group_size=1", "group_size=1"),
    ("prompts_per_step=0", "prompts_per_step=0"),
    ("budgets.train_min=0", "budgets.train_min=0"),
    ("budgets.val=[0.5,-1]", "budgets.val"),
    ("model.knobs.top_ks=[0,2]", "model.knobs.top_ks"),
    ("lr=0", "lr=0"),
    ("grpo.advantage=rank", "grpo.advantage='rank'"),
    ("latency.val=wallclock", "latency.val='wallclock'"),
    ("latency.threads=0", "latency.threads=0"),
    ("latency.statistic=mean", "latency.statistic='mean'"),
    ("reward.gold_prob_weight=1.5", "reward.gold_prob_weight=1.5"),
    ("logger.mode=cloud", "logger.mode='cloud'"),
    ("rollout.workers=0", "rollout.workers=0"),
    ("rollout.batch_size=0", "rollout.batch_size=0"),
    ("data.metric=bleu", "data.metric='bleu'"),
    ("data.val_size=0", "data.val_size=0"),
    ("data.train_size=null", "data.train_size=null with data=grid_vqa"),
    ("data=hf_vqa", "data=hf_vqa needs data.path=DIR"),
])
def test_bad_values_are_rejected_with_one_line(override, message):
    cfg = _compose([override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_dp_replicas_and_rollout_workers_exclude_each_other():
    with pytest.raises(ConfigError, match="rollout.workers=2 with parallel=dp"):
        validate(_compose(["parallel=dp", "rollout.workers=2"]))


def test_prompts_must_divide_across_ranks():
    cfg = _compose(["prompts_per_step=6"])
    validate(cfg, world_size=3)
    with pytest.raises(ConfigError, match="not divisible by the 4 ranks"):
        validate(cfg, world_size=4)


@pytest.mark.parametrize("override", ["group_sise=4", "latency.wall=1", "steps=many"])
def test_unknown_keys_and_wrong_types_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        _compose([override])
