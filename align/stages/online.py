"""Critic-free online RL through TRL (GRPO and RLOO share everything but the trainer class).

The reward comes from an RM artifact or a Python `module:function` through the project's reward
protocol; `trl_reward` adapts it to TRL's `f(prompts, completions, completion_ids=...)` signature,
passing rendered prompts and responses that keep the EOS text when the policy stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets
import torch

from align import training
from align.artifacts import Artifact, ArtifactWriter
from align.chat import prompt_text
from align.config import OnlineConfig, to_dict
from align.data import load_data
from align.generation import decode_response
from align.models import (
    load_policy,
    load_tokenizer,
    lora_config,
    pick_device,
    resolve_model,
    save_policy,
)
from align.rewards import RewardFn, load_judge


def run_online(
    config: OnlineConfig, resume: bool, stage: str, trainer_cls: type, config_cls: type
) -> Artifact:
    prompts = load_data(config.prompts, "prompts", config.limit)
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    rm_artifact, reward = load_judge(config.reward_model, config.reward, pick_device())
    torch.manual_seed(config.train.seed)
    model = load_policy(source, config.trust_remote_code)
    with ArtifactWriter(config.output, stage, to_dict(config), resume) as writer:
        trainer = trainer_cls(
            model=model,
            reward_funcs=trl_reward(reward, tokenizer),
            args=training.trainer_config(
                config_cls,
                config.train,
                writer,
                has_eval=False,
                num_generations=config.num_generations,
                max_completion_length=config.max_new_tokens,
                temperature=config.temperature,
                beta=config.beta,
                top_k=0,
                top_p=1.0,
            ),
            train_dataset=datasets.Dataset.from_list([{"prompt": row["prompt"]} for row in prompts.rows]),
            processing_class=tokenizer,
            peft_config=lora_config(config.lora, model) if config.lora.enabled else None,
            callbacks=training.callbacks(writer),
        )
        summary = training.train(trainer, writer, resume)
        rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
        summary.update({"first_reward": rewards[0], "last_reward": rewards[-1]} if rewards else {})
        save_policy(trainer.model, tokenizer, writer, source, config.lora.enabled)
        writer.data = prompts.info()
        writer.metrics = summary
        writer.extra["reward"] = config.reward or {"stage": "rm"}
        if rm_artifact is not None:
            writer.add_parent(rm_artifact)
        return writer.commit()


def trl_reward(reward: RewardFn, tokenizer: Any) -> Callable[..., list[float]]:
    """Our reward protocol as a TRL reward function."""

    def align_reward(
        prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **_: Any
    ) -> list[float]:
        rendered = [prompt_text(tokenizer, p) if isinstance(p, list) else p for p in prompts]
        return reward(rendered, [decode_response(tokenizer, ids) for ids in completion_ids])

    return align_reward
