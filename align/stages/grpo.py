"""GRPO: group-relative policy optimisation of the SFT policy (TRL GRPOTrainer, no critic).

    align grpo --model runs/tiny/sft --reward align.data.synthetic:gold_reward --prompts data/synthetic/ppo.jsonl \\
               --output runs/tiny/grpo
"""

from __future__ import annotations

from trl import GRPOConfig as TRLGRPOConfig
from trl import GRPOTrainer

from align.artifacts import Artifact
from align.config import GRPOConfig
from align.stages.trl_stage import run_online


def run(config: GRPOConfig, resume: bool = False) -> Artifact:
    return run_online(config, resume, "grpo", GRPOTrainer, TRLGRPOConfig)
