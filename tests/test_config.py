"""Config composition for every group option, and bad configs rejected with one line."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, HydraException

from grpo_ctrl.cli import describe
from grpo_ctrl.config import ConfigError, register_configs, validate

CONF = str(Path(__file__).resolve().parent.parent / "conf")
register_configs()

GROUP_OPTIONS = {
    "model": ["embedded", "hf"],
    "data": ["grid_vqa", "hf_vqa"],
    "controller": ["default"],
    "reward": ["constrained", "default", "seed"],
    "latency": ["estimator", "measured", "hooked"],
    "parallel": ["single", "dp", "ddp"],
    "logger": ["wandb", "none"],
    "rollout": ["default"],
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
    ("budgets.max_violation=0", "budgets.max_violation=0.0 must be in (0, 1)"),
    ("budgets.max_violation=1.0", "budgets.max_violation=1.0 must be in (0, 1)"),
    ("model.knobs.top_ks=[0,2]", "model.knobs.top_ks"),
    ("lr=0", "lr=0"),
    ("latency.threads=0", "latency.threads=0"),
    ("reward.gold_prob_weight=1.5", "reward.gold_prob_weight=1.5"),
    ("rollout.workers=0", "rollout.workers=0"),
    ("rollout.batch_size=0", "rollout.batch_size=0"),
    ("latency.train=hooked", "latency.train=hooked"),
    ("parallel.name=ddp", "parallel.name=ddp: the parallel option sets it"),
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


@pytest.mark.parametrize("override,allowed", [
    ("grpo.advantage=rank", "[group, batch, none]"),
    ("latency.val=wallclock", "[estimator, measured, hooked]"),
    ("latency.statistic=mean", "[median, min]"),
    ("logger.mode=cloud", "[online, offline, disabled]"),
    ("data.metric=bleu", "[vqa, exact_match, anls]"),
    ("budgets.unit=s", "[fraction, ms]"),
    ("model.dtype=int8", "[float32, float16, bfloat16]"),
    ("parallel=ddp parallel.backend=mpi", "[auto, gloo, nccl]"),
    ("data=hf_vqa data.format=xml", "[auto, disk, parquet, json, csv, imagefolder]"),
])
def test_closed_values_are_enums_refused_at_composition_in_one_line(override, allowed):
    with pytest.raises(HydraException) as err:
        _compose(override.split())
    line = describe(err.value, Path(CONF), "config")
    assert "Invalid value" in line and allowed in line and "\n" not in line


@pytest.mark.parametrize("override,option", [
    ("data.path=/x", "data=hf_vqa"), ("reward.alpha=2", "reward=seed"), ("parallel.devices=[cpu,cpu]", "parallel=dp"),
    ("data=hf_vqa data.grid=4", "data=grid_vqa"), ("parallel=dp parallel.nproc=2", "parallel=ddp"),
])
def test_each_option_has_its_own_keys_and_a_key_of_another_names_it(override, option):
    with pytest.raises(HydraException) as err:
        _compose(override.split())
    assert f"is a key of {option}" in describe(err.value, Path(CONF), "config")


def test_every_default_has_one_source():
    """Option files state only what their option changes: no key of a yaml file repeats its schema's default."""
    from omegaconf import OmegaConf

    from grpo_ctrl.config import GROUP_SCHEMAS

    for group, options in GROUP_SCHEMAS.items():
        for option, schema in options.items():
            text = OmegaConf.load(Path(CONF) / group / f"{option}.yaml")
            defaults = OmegaConf.structured(schema)
            for key, value in text.items():
                if key != "defaults":
                    assert value != defaults.get(key), f"conf/{group}/{option}.yaml repeats {key}: {value}"
