"""align: instruction tuning, reward models, PPO and DPO for GPT-2-style models.

Every CLI command is a thin wrapper over a function here, so notebooks call the same code:

    import align
    sft = align.sft(align.SFTConfig(model="runs/tiny/pretrain", data="data/synthetic/sft.jsonl", output="runs/me/sft"))
    scores = align.RewardModel.load("runs/tiny/rm").score_messages([[{"role": "user", "content": "Add 2 and 3."}]],
                                                                   ["5<|endoftext|>"])
    figures = align.evaluate(align.EvalConfig(model="runs/tiny/ppo", reward_model="runs/tiny/rm"))
    report_md = align.build_report("runs/tiny")

Each stage of `align.registry.STAGES` is `align.<stage>(config, resume=False)`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Heavy imports (torch, transformers, trl) happen on first use, so `align --help` stays fast.
_EXPORTS = {
    "Artifact": "align.artifacts",
    "load_artifact": "align.artifacts",
    "RewardModel": "align.rewards",
    "build_config": "align.config",
    "evaluate": "align.evaluation:run",
    "compare": "align.evaluation:compare",
    "export_policy": "align.export:run",
    "build_report": "align.report:build",
    "Conversation": "align.conversation",
}
_CONFIGS = ("PretrainConfig", "SFTConfig", "RMConfig", "PairsConfig", "PPOConfig", "DPOConfig", "GRPOConfig")
_CONFIGS += ("RLOOConfig", "RoundsConfig", "EvalConfig")

__all__ = ["__version__", *_EXPORTS, *_CONFIGS]


def __getattr__(name: str) -> Any:
    from align.registry import STAGES

    if name in STAGES:
        return STAGES[name].run
    if name in _CONFIGS:
        return getattr(importlib.import_module("align.config"), name)
    if name not in _EXPORTS:
        raise AttributeError(f"module 'align' has no attribute {name!r}")
    module_name, _, attr = _EXPORTS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr or name)
