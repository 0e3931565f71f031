"""Reward model: preference pairs -> a scalar reward-model artifact that PPO and eval load.

    align rm --model runs/tiny/sft --data data/synthetic/pairs.jsonl --output runs/tiny/rm

The trunk starts from the given policy (an SFT artifact's LoRA is merged first) with a one-output
score head, trained by TRL's RewardTrainer with the Bradley-Terry loss. The artifact always holds
full weights (LoRA merged), so it loads with plain `AutoModelForSequenceClassification`. A tokenizer
whose pad token is its EOS gets a distinct pad token, so the score is read at the EOS that ends a
response (GPT-2 pools the last non-pad token).
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Iterator
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification
from trl import RewardConfig, RewardTrainer

from align.artifacts import Artifact, ArtifactWriter
from align.config import RMConfig, to_dict
from align.data import load_data
from align.data.splits import by_group, hold_out
from align.errors import DataError
from align.evaluation import reward_model_report
from align.models import (
    fuse_activations,
    load_policy,
    load_tokenizer,
    record_base,
    resolve_model,
)
from align.rewards import RewardModel
from align.stages import trl_stage
from align.text.bpe import PAD
from align.text.encoding import tokenize_pairs


def run(config: RMConfig, resume: bool = False) -> Artifact:
    data = load_data(config.data, "pairs", config.limit)
    held_out = load_data(config.eval_data, "pairs") if config.eval_data else None
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD})
    train_rows = tokenize_pairs(data, tokenizer, config.max_length, config.margin, config.truncation)
    eval_rows = (
        tokenize_pairs(held_out, tokenizer, config.max_length, config.margin, config.truncation)
        if held_out
        else None
    )
    if eval_rows is None and config.eval_fraction > 0:
        train_rows, eval_rows = hold_out(train_rows, config.eval_fraction, config.train.seed, by_group)

    torch.manual_seed(config.train.seed)
    policy = load_policy(source, config.trust_remote_code)
    with ArtifactWriter(config.output, "rm", to_dict(config), resume) as writer:
        members = [
            _train_member(config, member, policy, tokenizer, writer, train_rows, eval_rows, resume)
            for member in range(config.ensemble)
        ]
        tokenizer.save_pretrained(str(writer.model_dir))
        writer.record_data(data, held_out)
        writer.metrics = (
            members[0] if config.ensemble == 1 else _ensemble_metrics(writer, members, eval_rows, train_rows)
        )
        writer.extra["model_format"] = "full"
        record_base(writer, source)
        return writer.commit()


def _train_member(
    config: RMConfig,
    member: int,
    policy: Any,
    tokenizer: Any,
    writer: ArtifactWriter,
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]] | None,
    resume: bool,
) -> dict[str, Any]:
    """One reward model: member 0 on the pairs as they are, member i > 0 with seed + i on a bootstrap
    resample of the training groups (Coste et al. 2023). Its model goes to model/ or members/<i>/; a
    member a resumed run finds saved is not trained again."""
    directory = writer.model_dir if member == 0 else writer.work_dir / "members" / str(member)
    done = writer.logs_dir / f"member-{member}.json"
    if resume and done.is_file() and (directory / "config.json").is_file():
        return json.loads(done.read_text())
    seed = config.train.seed + member
    rows = train_rows if member == 0 else _bootstrap(train_rows, seed)
    settings = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
    model = (
        reward_model_from_policy(policy, tokenizer)
        if config.init_reward_model is None
        else _continued(config.init_reward_model, tokenizer)
    )
    fields = {"max_length": config.max_length, "center_rewards_coefficient": config.center_rewards}
    fields["remove_unused_columns"] = False  # the group column orders the batches
    trainer_cls = GroupedRewardTrainer if config.group_rankings else RewardTrainer
    trainer, summary = trl_stage.fit(
        trainer_cls, RewardConfig, settings, model, tokenizer, writer, (rows, eval_rows), fields, resume,
        task_type="SEQ_CLS", part=f"member-{member}" if member else "",
    )  # fmt: skip
    trained = trainer.model.merge_and_unload() if config.lora.enabled else trainer.model
    scorer = RewardModel(trained, tokenizer)
    summary.update(reward_model_report(scorer, eval_rows or [], "eval"))
    train_scores = scorer.score(*_texts(train_rows[:2000]))
    summary["reward_mean"] = float(torch.tensor(train_scores).mean())
    summary["reward_std"] = float(torch.tensor(train_scores).std())
    trained.save_pretrained(str(directory))
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(summary))
    return summary


def _bootstrap(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """As many groups as there are, drawn with replacement, each with all its pairs."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    keys = sorted(groups)
    rng = random.Random(seed)
    return [row for _ in keys for row in groups[rng.choice(keys)]]


def _ensemble_metrics(
    writer: ArtifactWriter,
    members: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]] | None,
    train_rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """The ensemble's own figures (its mean objective on the held-out pairs, the members' disagreement)
    beside each member's, and what the members cost in memory."""
    from align.artifacts import Artifact

    artifact = Artifact(writer.work_dir, {"metrics": {"members": members}})
    ensemble = RewardModel.load(artifact, device="cpu")
    figures = {"members": members, "ensemble": len(members)}
    figures.update(reward_model_report(ensemble, eval_rows or [], "eval"))
    prompts, responses = _texts(train_rows[:2000])
    scores = torch.tensor(ensemble.score(prompts, responses))
    figures.update(reward_mean=float(scores.mean()), reward_std=float(scores.std()))
    figures["member_disagreement"] = statistics.fmean(ensemble.spread)
    figures["member_correlation"] = _mean_correlation(ensemble.member_scores(prompts, responses))
    figures["weights_bytes"] = sum(
        p.numel() * p.element_size() for m, *_ in ensemble.members for p in m.parameters()
    )
    return figures


def _mean_correlation(scores: torch.Tensor) -> float:
    """The mean Pearson correlation between two members' scores: 1 means the members are one model."""
    matrix = torch.corrcoef(scores)
    k = matrix.shape[0]
    return float((matrix.sum() - k) / (k * (k - 1)))


def reward_model_from_policy(policy: Any, tokenizer: Any) -> Any:
    """A one-label sequence classifier sharing the policy's trunk weights; the score head starts at zero."""
    config = policy.config
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    model = fuse_activations(AutoModelForSequenceClassification.from_config(config))
    missing, _ = model.load_state_dict(policy.state_dict(), strict=False)
    if any(not name.startswith("score") for name in missing):
        raise DataError(
            f"cannot build a reward model from {config.model_type}: trunk weights {missing[:3]} missing"
        )
    torch.nn.init.zeros_(model.score.weight)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model


def _continued(name: str, tokenizer: Any) -> Any:
    """An RM artifact's trunk and score head (member 0), to train further: a refresh of iterated RLHF
    that starts from what the last RM knew instead of a zeroed head."""
    from align.artifacts import intact, load_artifact
    from align.models import load_pretrained

    artifact = intact(load_artifact(name, expect_stage="rm"))
    if artifact.manifest.get("model_format") != "full":
        raise DataError(f"init_reward_model {name}: an RM with full weights is needed")
    model = load_pretrained(AutoModelForSequenceClassification, artifact.model_dir, "a reward model")
    if len(tokenizer) != model.get_input_embeddings().num_embeddings:
        raise DataError(f"init_reward_model {name}: its vocabulary is not the policy's tokenizer's")
    return model


def _texts(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    prompts = [r["prompt_text"] for r in rows for _ in (0, 1)]
    responses = [text for r in rows for text in (r["chosen_text"], r["rejected_text"])]
    return prompts, responses


class GroupedRewardTrainer(RewardTrainer):
    """Shuffles groups, not pairs: a ranking's C(K, 2) pairs arrive together, as in InstructGPT."""

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return GroupSampler(dataset["group"], self.args.seed)


class GroupSampler(torch.utils.data.Sampler[int]):
    def __init__(self, groups: list[str], seed: int):
        self.members: dict[str, list[int]] = {}
        for index, group in enumerate(groups):
            self.members.setdefault(group, []).append(index)
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return sum(len(m) for m in self.members.values())

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer each epoch (also when resuming), so the order is reproducible."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = list(self.members)
        random.Random(self.seed + self.epoch).shuffle(order)
        for group in order:
            yield from self.members[group]
