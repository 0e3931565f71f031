"""Stage configs: one pydantic model per stage, filled from defaults < recipe YAML < CLI flags < --set.

`--set section.field=value` reaches any field; values are parsed as YAML scalars, so `--set
train.learning_rate=3e-4` is a float, `--set lora.enabled=false` a bool and `--set reward_model=null`
unsets a field. pydantic checks every key and type; its errors become one line naming the key, with a
"did you mean" suggestion for an unknown one. A flag given for one of two alternatives (`--reward`
against a recipe's `reward_model`) replaces the recipe's choice of the other. Keys that were renamed
keep working with a one-line notice naming the new one.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from align.config.settings import *  # noqa: F403 - the config API is this package's
from align.config.settings import Settings
from align.config.stages import *  # noqa: F403
from align.config.stages import EvalConfig, PPOConfig
from align.errors import ConfigError

C = TypeVar("C", bound=Settings)
logger = logging.getLogger("align")

# Old key -> new key, per config: recipes and scripts in the wild keep working (with a notice).
RENAMED: dict[type, dict[str, str]] = {
    EvalConfig: {"write_manifest": "record"},
    PPOConfig: {
        "ppo.steps": "train.max_steps",
        "ppo.learning_rate": "train.learning_rate",
        "ppo.seed": "train.seed",
        "ppo.log_every": "train.logging_steps",
        "ppo.save_every": "train.save_steps",
        "ppo.max_grad_norm": "train.max_grad_norm",
    },
}
ALTERNATIVES = (("reward_model", "reward"),)  # giving one unsets the recipe's other


def build_config(
    cls: type[C],
    recipe: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> C:
    """Merge defaults, a recipe file, CLI flags (dotted keys; None means not given) and `--set` overrides."""
    values = rename_keys(cls, load_recipe(recipe) if recipe else {})
    given = {key: value for key, value in (flags or {}).items() if value is not None}
    for item in sets or []:
        key, value = parse_set(item)
        given[key] = value
    return make_config(cls, merge(values, rename_keys(cls, given, dotted=True)))


def merge(values: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`values` with the dotted keys of `given` set in them; a key of an alternative pair unsets the other
    when `given` does not set that too."""
    for key, value in given.items():
        for pair in ALTERNATIVES:
            other = pair[1 - pair.index(key)] if key in pair else None
            if other is not None and value is not None and other not in given:
                values.pop(other, None)
    for key, value in given.items():
        set_path(values, key, value)
    return values


def make_config(cls: type[C], values: dict[str, Any]) -> C:
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(cls, exc.errors()[0])) from None


MAX_ALIASES = 16  # YAML aliases a recipe may use: a few keep it DRY, nested ones multiply its size


class AliasBomb(yaml.YAMLError):
    """More aliases than MAX_ALIASES: each may expand what it points at many times over."""


class RecipeLoader(yaml.SafeLoader):
    """`yaml.safe_load`'s loader, refusing a document with more than MAX_ALIASES aliases before any is
    expanded (an alias bomb of nine levels of 9x passes gigabytes otherwise)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise AliasBomb(f"more than {MAX_ALIASES} YAML aliases (line {mark.line + 1})")
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader, with an alias limit


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        values = load_yaml(path.read_text(encoding="utf-8"))
    except AliasBomb as exc:
        raise ConfigError(f"{path}: {exc}; write the values out") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of config fields, got {type(values).__name__}")
    return values


def to_dict(config: Settings) -> dict[str, Any]:
    return config.model_dump()


def parse_set(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects section.field=value, got '{item}'")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except AliasBomb as exc:
        raise ConfigError(f"--set {key.strip()}: {exc}") from None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_path(values: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = values
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"'{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def rename_keys(cls: type, values: dict[str, Any], dotted: bool = False) -> dict[str, Any]:
    """Move renamed keys of `values` (nested, or flat dotted keys) to their new names, with a notice."""
    for old, new in RENAMED.get(cls, {}).items():
        section, _, name = old.partition(".")
        if dotted and old in values:
            value = values.pop(old)
        elif not dotted and name in values.get(section, {}):
            value = values[section].pop(name)
        else:
            continue
        logger.warning(
            "config key '%s' is renamed '%s' (the name every stage uses); reading it as that", old, new
        )
        if dotted:
            values[new] = value
        else:
            set_path(values, new, value)
    return values


_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "literal_error": "must be one of {expected}",
}


def _describe(cls: type, error: dict[str, Any]) -> str:
    """One pydantic error as one line naming the key."""
    key = ".".join(str(part) for part in error["loc"])
    kind, context = error["type"], error.get("ctx", {})
    if kind == "value_error":
        return str(context.get("error", error["msg"]))
    if kind == "extra_forbidden":
        known = _fields(cls, error["loc"][:-1])
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
        return f"unknown config key '{key}'{hint}"
    if kind in _MESSAGES:
        return f"{key} {_MESSAGES[kind].format(**context)} (got {error['input']!r})"
    return f"config key '{key}': {error['msg'][0].lower()}{error['msg'][1:]} (got {error['input']!r})"


def _fields(cls: type, path: tuple) -> list[str]:
    for part in path:
        cls = cls.model_fields[part].annotation
    return list(cls.model_fields)
