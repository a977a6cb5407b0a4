"""Command lines: one `key=value` grammar with one-line errors for every entry point.

train.py and the scripts in experiments/ are Hydra apps: `check_command_line` composes their command line once
first and turns what Hydra cannot compose (an unknown key, a value of the wrong type, an unknown group option)
into one line (what, where, how to fix) with exit status 2, before anything loads. Serving and the benchmarks
take the same `key=value` arguments into a typed dataclass (`parse_key_values`), with the same one-line errors."""

from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import StringNode

CONF = Path(__file__).resolve().parent.parent / "conf"
_OWN_CONFIG_FLAGS = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")


def check_command_line(config_name: str, args: Sequence[str] | None = None, config_dir: Path = CONF) -> None:
    """Compose `config_name` with the command line's overrides (every value of a sweep); on failure print
    `config error: <one line>` and exit 2."""
    args = list(sys.argv[1:] if args is None else args)
    if any(a.split("=")[0] in _OWN_CONFIG_FLAGS for a in args):
        return  # another config than ours: Hydra reports on it
    try:
        values = [_sweep_values(a) for a in args if not a.startswith("-")]
        firsts = [v[0] for v in values]
        _compose(config_dir, config_name, firsts)
        for i, options in enumerate(values):  # each further value of a sweep, with the others at their first
            for option in options[1:]:
                _compose(config_dir, config_name, [*firsts[:i], option, *firsts[i + 1:]])
    except HydraException as err:
        print(f"config error: {describe(err, config_dir, config_name)}", file=sys.stderr)
        sys.exit(2)


def _compose(config_dir: Path, config_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


def _sweep_values(arg: str) -> list[str]:
    """`key=a,b,c` -> [`key=a`, `key=b`, `key=c`]; any other override -> [itself]."""
    override = OverridesParser.create().parse_override(arg)
    if not override.is_sweep_override():
        return [arg]
    return [f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()]


def describe(err: HydraException, config_dir: Path, config_name: str) -> str:
    """The error as one line naming the key and the fix."""
    text = str(err)
    cause = str(err.__cause__ or "").splitlines()
    if isinstance(err, MissingConfigException) and "Could not find '" in text:
        missing = text.split("Could not find '")[1].split("'")[0]
        group, _, option = missing.rpartition("/")
        options = sorted({o for o in err.options or [] if not o.endswith("_schema")})
        if group:
            return f"{group}={option} is not an option of {group}; use one of {options}"
        return f"config {missing!r} does not exist; use one of {options}"
    if text.startswith("Could not override '"):
        key = text.split("'")[1]
        if _is_node(key, config_dir, config_name):
            return f"{key} is a group of keys here, not a value; set its keys instead ({key}.<key>=<value>)"
        if owners := _options_with_key(key):
            return f"{key} is a key of {' / '.join(owners)}, not of the option chosen; choose it ({owners[0]})"
        hint = _close_key(key, config_dir, config_name)
        return f"{key} is not a config key{hint}; fix the name, or add a new key with +{key}=<value>"
    if text.startswith("Error merging override "):
        override = text[len("Error merging override "):]
        reason = cause[0] if cause else "the value does not fit the key's type"
        return f"{override}: {reason}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _options_with_key(key: str) -> list[str]:
    """`group=option` for each option of the key's group whose schema has the key (e.g. data.path: data=hf_vqa)."""
    from grpo_ctrl.config import GROUP_SCHEMAS

    group, _, name = key.partition(".")
    return [f"{group}={option}" for option, schema in GROUP_SCHEMAS.get(group, {}).items()
            if "." not in name and name in {f.name for f in dataclasses.fields(schema)}]


def _is_node(key: str, config_dir: Path, config_name: str) -> bool:
    try:
        return isinstance(OmegaConf.select(_compose(config_dir, config_name, []), key), DictConfig)
    except HydraException:
        return False


def _close_key(key: str, config_dir: Path, config_name: str) -> str:
    parent, _, name = key.rpartition(".")
    try:
        base = _compose(config_dir, config_name, [])
        node = OmegaConf.select(base, parent) if parent else base
        keys = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    except HydraException:
        return ""
    close = difflib.get_close_matches(name, keys, n=1)
    return f" (did you mean {'.'.join([*filter(None, [parent]), close[0]])}?)" if close else ""


def check_minimums(cfg: DictConfig, minimums: dict[str, int | float], script: str) -> None:
    """Each `key` of an experiment's config (every element of a list) at least its minimum; else
    `config error: <one line>` and exit 2, before anything loads."""
    for key, low in minimums.items():
        values = OmegaConf.select(cfg, key)
        for value in values if OmegaConf.is_list(values) else [values]:
            if value is None or value < low:
                print(f"config error: {script}: {key}={values} must be >= {low}", file=sys.stderr)
                sys.exit(2)


T = TypeVar("T")


class CommandLineError(ValueError):
    """A `key=value` argument that does not fit the schema (one line)."""


def key_values(schema: type[T], args: Sequence[str]) -> T:
    """`key=value` arguments (dotted keys reach nested fields) as an instance of the dataclass `schema`. A text
    field takes its value verbatim (`question=is it #7: yes?` stays that string; `null` unsets an optional one);
    other values are read as YAML (`sizes=[1000,10000]`, `tiny=true`) and checked against the field's type."""
    cfg = OmegaConf.structured(schema)
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise CommandLineError(f"{arg!r} is not key=value")
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        node = parent._get_node(leaf) if isinstance(parent, DictConfig) and leaf in parent.keys() else None
        if node is None:
            names = [f.name for f in dataclasses.fields(schema)]
            close = difflib.get_close_matches(key, names, n=1)
            raise CommandLineError(f"{key} is not a key" + (f" (did you mean {close[0]}?)" if close else "")
                                   + f"; keys: {', '.join(names)}")
        try:
            verbatim = isinstance(node, StringNode) and not (node._is_optional() and value == "null")
            text = value.replace("${", "\\${")  # literal text, not an OmegaConf interpolation
            OmegaConf.update(cfg, key, text if verbatim else yaml.safe_load(value), merge=False)
        except (OmegaConfBaseException, yaml.YAMLError) as err:
            raise CommandLineError(f"{arg}: {str(err).splitlines()[0]}") from None
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        missing = [f.name for f in dataclasses.fields(schema) if OmegaConf.is_missing(cfg, f.name)]
        raise CommandLineError(f"{', '.join(f'{k}=...' for k in missing)} missing" if missing
                               else str(err).splitlines()[0]) from None


def parse_key_values(schema: type[T], program: str, usage: str, args: Sequence[str] | None = None) -> T:
    """`key_values` of this process's arguments; on a bad one print `<program>: <what>; usage: <usage>` and exit 2.
    `--help` prints the usage and the keys with their defaults."""
    args = list(sys.argv[1:] if args is None else args)
    if any(a in ("-h", "--help") for a in args):
        defaults = OmegaConf.to_yaml(OmegaConf.structured(schema)).strip()
        keys = "\n".join(f"  {line}" for line in defaults.splitlines())
        print(f"usage: {usage}\nkeys (key=value; defaults):\n{keys}")
        sys.exit(0)
    try:
        return key_values(schema, args)
    except CommandLineError as err:
        print(f"{program}: {err}; usage: {usage}", file=sys.stderr)
        sys.exit(2)
