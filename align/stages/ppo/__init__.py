"""Our PPO for RLHF (TRL has none any more): core.py the math, rollout.py trajectories, trainer.py the loop."""

from align.stages.ppo.trainer import run

__all__ = ["run"]
