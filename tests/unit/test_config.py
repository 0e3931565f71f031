"""Configs: defaults < recipe < flags < --set, one-line errors, renamed keys, alternatives, every recipe."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from align.config import PPOConfig, SFTConfig, build_config
from align.errors import ConfigError
from align.pipeline import _stage_config
from align.registry import STAGES
from tests.conftest import invoke

REPO = Path(__file__).resolve().parents[2]
SFT_INPUTS = {"model": "m", "data": "d", "output": "o"}
PPO_INPUTS = {"model": "m", "prompts": "p", "output": "o"}


def test_flags_override_recipe_and_set_overrides_flags(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\ndata: d\noutput: o\ntrain:\n  learning_rate: 1e-4\n  batch_size: 4\n")
    config = build_config(
        SFTConfig,
        recipe,
        {"train.batch_size": 16, "model": None},
        ["train.learning_rate=3e-4", "lora.enabled=false", "lora.target_modules=[c_attn]"],
    )
    assert config.model == "m"  # a None flag does not override the recipe
    assert config.train.batch_size == 16
    assert config.train.learning_rate == pytest.approx(3e-4) and isinstance(config.train.learning_rate, float)
    assert config.lora.enabled is False and config.lora.target_modules == ["c_attn"]


def test_unknown_key_suggests_the_closest() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown config key 'train.lerning_rate' \(did you mean 'learning_rate'\?\)"
    ):
        build_config(SFTConfig, None, SFT_INPUTS, ["train.lerning_rate=1"])


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.learning_rate=-1", r"train.learning_rate must be > 0.0 \(got -1\)"),
        ("lora.r=0", r"lora.r must be >= 1 \(got 0\)"),
        ("train.batch_size=0", "train.batch_size must be >= 1"),
        ("train.precision=fp8", "train.precision must be one of 'auto', 'fp32', 'bf16' or 'fp16'"),
        ("train.batch_size=many", "config key 'train.batch_size': input should be a valid integer"),
        ("train.max_steps=0", "train.max_steps or train.epochs must be > 0"),
    ],
)
def test_invalid_values_are_refused_in_one_line(setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        build_config(
            SFTConfig, None, SFT_INPUTS, [setting, "train.epochs=0"] if "max_steps" in setting else [setting]
        )
    assert "\n" not in str(error.value)


def test_required_fields_are_named() -> None:
    with pytest.raises(ConfigError, match="'model' is required"):
        build_config(SFTConfig, None, {"data": "d", "output": "o"})


def test_renamed_keys_keep_working_with_a_notice(tmp_path: Path, caplog) -> None:
    """PPO's steps, learning rate, seed, logging and checkpoint period moved to `train.*`, as every stage
    names them: a recipe or --set with the old names still runs, with one notice line per key."""
    recipe = tmp_path / "old.yaml"
    recipe.write_text("model: m\nprompts: p\noutput: o\nreward: a:b\nppo:\n  steps: 7\n  save_every: 3\n")
    with caplog.at_level(logging.WARNING, logger="align"):
        config = build_config(PPOConfig, recipe, {}, ["ppo.learning_rate=0.002", "ppo.seed=5"])
    assert (config.train.max_steps, config.train.save_steps) == (7, 3)
    assert (config.train.learning_rate, config.train.seed) == (0.002, 5)
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 4 and "'ppo.steps' is renamed 'train.max_steps'" in notices[0]


def test_a_flag_for_one_alternative_replaces_the_recipes_other_and_null_unsets() -> None:
    tiny = REPO / "recipes/tiny/ppo.yaml"  # names reward_model: runs/tiny/rm
    config = build_config(PPOConfig, tiny, {"reward": "align.data.synthetic:gold_reward"})
    assert config.reward_model is None and config.reward == "align.data.synthetic:gold_reward"
    assert build_config(PPOConfig, tiny, {}, ["reward_model=null", "reward=a:b"]).reward_model is None
    with pytest.raises(ConfigError, match="give exactly one of --reward-model"):
        build_config(PPOConfig, None, {**PPO_INPUTS, "reward": "a:b", "reward_model": "r"})


def test_ppo_takes_the_shared_training_names_and_its_own_defaults() -> None:
    config = build_config(PPOConfig, None, {**PPO_INPUTS, "reward": "a:b", "train.max_steps": 3})
    assert (
        config.train.max_steps == 3 and config.train.weight_decay == 0.01 and config.train.logging_steps == 1
    )


STAGE_RECIPES = sorted(
    p
    for p in (REPO / "recipes").glob("*/*.yaml")
    if p.parent.name != "accelerate" and "pipeline" not in p.stem
)


@pytest.mark.parametrize("recipe", STAGE_RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_stage_recipe_validates_and_starts_with_its_command(recipe: Path, caplog) -> None:
    stage = STAGES[recipe.stem.split("_")[0]]
    with caplog.at_level(logging.WARNING, logger="align"):
        build_config(stage.config, recipe)
    assert not caplog.records, "recipes use the current key names"
    assert recipe.read_text().startswith(f"# align {stage.name} --recipe {recipe.relative_to(REPO)}")


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*/pipeline*.yaml")), ids=lambda p: p.stem)
def test_every_pipeline_recipe_wires_valid_stage_configs(recipe: Path, tmp_path: Path) -> None:
    import yaml

    spec = yaml.safe_load(recipe.read_text())
    for name, stage_recipe in spec["stages"].items():
        config = _stage_config(
            name, REPO / stage_recipe, spec.get("set", {}).get(name, {}), tmp_path, spec["stages"]
        )
        assert config.output == str(tmp_path / name)
        for field, parent in STAGES[name].inputs.items():
            if parent in spec["stages"]:
                assert getattr(config, field) == str(tmp_path / parent)


def test_a_yaml_alias_bomb_is_refused_before_it_expands(runner, tmp_path: Path) -> None:
    """Nine levels of nine aliases under train.trainer would be 9^9 nodes; a few aliases stay fine."""
    import time

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\ntrain:\n  trainer: {x: *a9}\n")
    started = time.perf_counter()
    result = invoke(runner, "sft", "--recipe", bomb, "--dry-run")
    assert result.exit_code == 2 and time.perf_counter() - started < 5
    assert f"{bomb}: more than 16 YAML aliases (line 3)" in result.output
    dry = tmp_path / "dry.yaml"
    dry.write_text("lr: &lr 3.0e-4\ntrain: {learning_rate: *lr}\n")
    assert invoke(runner, "sft", "--recipe", dry, "--dry-run").exit_code == 2  # `lr` is no field, but parsed
    assert "unknown config key 'lr'" in invoke(runner, "sft", "--recipe", dry, "--dry-run").output
