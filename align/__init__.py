"""align: instruction tuning, reward models, PPO and DPO for GPT-2-style models.

Every CLI command is a thin wrapper over a function here, so notebooks call the same code:

    import align
    sft = align.sft(align.SFTConfig(model="runs/tiny/pretrain", data="data/synthetic/sft.jsonl", output="runs/me/sft"))
    scores = align.RewardModel.load("runs/tiny/rm").score_messages([[{"role": "user", "content": "Add 2 and 3."}]],
                                                                   ["5<|endoftext|>"])
    figures = align.evaluate(align.EvalConfig(model="runs/tiny/ppo", reward_model="runs/tiny/rm"))
    report_md = align.build_report("runs/tiny")
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
    **{
        name: "align.config"
        for name in (
            "PretrainConfig",
            "SFTConfig",
            "RMConfig",
            "PPOConfig",
            "DPOConfig",
            "GRPOConfig",
            "RLOOConfig",
            "EvalConfig",
            "build_config",
        )
    },
    **{
        stage: f"align.stages.{stage}:run"
        for stage in ("pretrain", "sft", "rm", "ppo", "dpo", "grpo", "rloo")
    },
    "evaluate": "align.evaluation:run",
    "compare": "align.evaluation:compare",
    "export_policy": "align.export:run",
    "build_report": "align.report:build",
    "Conversation": "align.conversation",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'align' has no attribute {name!r}")
    module_name, _, attr = _EXPORTS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr or name)
