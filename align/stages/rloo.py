"""RLOO: REINFORCE with a leave-one-out baseline for the SFT policy (TRL RLOOTrainer, no critic).

    align rloo --model runs/tiny/sft --reward-model runs/tiny/rm --prompts data/synthetic/ppo.jsonl \\
               --output runs/tiny/rloo
"""

from __future__ import annotations

from trl import RLOOConfig as TRLRLOOConfig
from trl import RLOOTrainer

from align.artifacts import Artifact
from align.config import RLOOConfig
from align.stages.trl_stage import run_online


def run(config: RLOOConfig, resume: bool = False) -> Artifact:
    return run_online(config, resume, "rloo", RLOOTrainer, TRLRLOOConfig)
