from __future__ import annotations

from pathlib import Path

import pytest

from align.config import (
    DPOConfig,
    GRPOConfig,
    PairsConfig,
    PPOConfig,
    PretrainConfig,
    RLOOConfig,
    RMConfig,
    SFTConfig,
    build_config,
)
from align.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {
    "pretrain": PretrainConfig,
    "sft": SFTConfig,
    "rm": RMConfig,
    "pairs": PairsConfig,
    "ppo": PPOConfig,
    "dpo": DPOConfig,
    "grpo": GRPOConfig,
    "rloo": RLOOConfig,
}


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


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"unknown config key 'train.lerning_rate' \(did you mean 'learning_rate'\?\)"
    ):
        build_config(SFTConfig, None, {"model": "m", "data": "d", "output": "o"}, ["train.lerning_rate=1"])


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.learning_rate=-1", "learning_rate must be > 0"),
        ("lora.r=0", "lora.r must be >= 1"),
        ("train.batch_size=0", "batch_size must be >= 1"),
        ("train.precision=fp8", "precision must be one of"),
        ("train.batch_size=many", "must be int"),
    ],
)
def test_invalid_values_are_refused(setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(SFTConfig, None, {"model": "m", "data": "d", "output": "o"}, [setting])


def test_required_fields_are_named() -> None:
    with pytest.raises(ConfigError, match="'model' is required"):
        build_config(SFTConfig, None, {"data": "d", "output": "o"})


def test_every_tiny_recipe_loads() -> None:
    for path in sorted((REPO / "recipes/tiny").glob("*.yaml")):
        stage = path.stem.split("_")[0]
        if stage != "pipeline":
            build_config(CONFIGS[stage], path)
        assert path.read_text().startswith("# align "), f"{path} must start with the command that runs it"
