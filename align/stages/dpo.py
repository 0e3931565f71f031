"""Direct preference optimisation: the SFT policy trained on (prompt, chosen, rejected) pairs.

    align dpo --model runs/tiny/sft --data data/synthetic/pairs.jsonl --output runs/tiny/dpo

TRL's DPOTrainer does the work. With LoRA the reference is the SFT policy with the adapter disabled
(an SFT LoRA is merged first, so the reference is the SFT policy, not the base) and no second copy of
the weights exists; full fine-tuning keeps a frozen copy. Watch `logps/chosen` in the logs: when it
falls while the reward accuracy still rises, DPO is over-fitting.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import torch
from trl import DPOConfig as TRLDPOConfig
from trl import DPOTrainer

from align.artifacts import Artifact, ArtifactWriter
from align.config import DPOConfig, to_dict
from align.data import Dataset, load_data
from align.data.splits import by_group, hold_out
from align.errors import ConfigError
from align.models import load_policy, load_tokenizer, pick_device, resolve_model, save_policy
from align.rewards import judge_of
from align.stages import trl_stage
from align.stages.pairs import sample_pairs
from align.text.encoding import tokenize_pairs


def run(config: DPOConfig, resume: bool = False) -> Artifact:
    if config.rounds:
        return run_iterative(config, resume)
    data = load_data(config.data, "pairs", config.limit)
    held_out = load_data(config.eval_data, "pairs") if config.eval_data else None
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    train_rows, eval_rows = _rows(config, tokenizer, data, held_out)
    torch.manual_seed(config.train.seed)
    model = load_policy(source, config.trust_remote_code)
    reference = None if config.lora.enabled else copy.deepcopy(model).eval().requires_grad_(False)
    with ArtifactWriter(config.output, "dpo", to_dict(config), resume) as writer:
        trainer, summary = _fit(config, model, reference, tokenizer, writer, train_rows, eval_rows, resume)
        summary["reference_copies"] = 0 if reference is None else 1
        save_policy(trainer.model, tokenizer, writer, source, config.lora.enabled)
        writer.record_data(data, held_out)
        writer.metrics = summary
        return writer.commit()


def run_iterative(config: DPOConfig, resume: bool = False) -> Artifact:
    """Online DPO: each round samples pairs from the current policy, labels them with the judge, trains
    on them, and the result becomes the next round's policy and reference. Writes full weights (every
    round's LoRA is merged before the next round starts)."""
    if resume:
        raise ConfigError("--resume is not supported with rounds; rerun (each round is short)")
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    device = pick_device()
    judge_artifact, judge = judge_of(config, device)
    prompts_data = load_data(config.prompts, "prompts", config.limit)
    prompts = [row["prompt"] for row in prompts_data.rows]
    random.Random(config.train.seed).shuffle(prompts)
    per_round = min(config.sampling.prompts_per_round or len(prompts), len(prompts))
    offline = load_data(config.data, "pairs") if config.data else None
    torch.manual_seed(config.train.seed)
    policy = load_policy(source, config.trust_remote_code)
    with ArtifactWriter(config.output, "dpo", to_dict(config)) as writer:
        rounds = []
        for number in range(config.rounds):
            start = number * per_round % len(prompts)
            chunk = (prompts + prompts)[start : start + per_round]
            rows, stats = sample_pairs(
                policy.to(device), tokenizer, chunk, judge, config.sampling, config.train.seed + number
            )
            pairs = Dataset("pairs", [], prompts_data.source)
            for i, row in enumerate(rows):
                pairs.add(row, f"round {number + 1}, pair {i + 1}", f"round {number + 1}")
            if number == 0 and offline is not None:
                pairs.rows.extend(offline.rows)
            train_rows, eval_rows = _rows(config, tokenizer, pairs, None)
            reference = None if config.lora.enabled else copy.deepcopy(policy).eval().requires_grad_(False)
            trainer, summary = _fit(
                config, policy, reference, tokenizer, writer, train_rows, eval_rows, False
            )
            policy = trainer.model.merge_and_unload() if config.lora.enabled else trainer.model
            rounds.append({"round": number + 1, **stats, **summary})
        save_policy(policy, tokenizer, writer, source, lora=False)
        writer.record_judge(judge_artifact, config.reward)
        writer.record_data(prompts_data)
        if offline is not None:
            writer.data["offline_pairs"] = offline.info()
        writer.metrics = {
            "rounds": rounds,
            **{f"final_{k}": v for k, v in rounds[-1].items() if k != "round"},
        }
        return writer.commit()


def _rows(
    config: DPOConfig, tokenizer: Any, data: Dataset, held_out: Dataset | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Tokenised-length filtered training rows and the held-out rows (a group-wise split of `data`
    unless a held-out set is given)."""
    for dataset in filter(None, (data, held_out)):
        tokenize_pairs(dataset, tokenizer, config.max_length, 0.0, config.truncation)  # counts them
    train_rows, eval_rows = data.rows, held_out.rows if held_out else None
    if eval_rows is None and config.eval_fraction > 0:
        train_rows, eval_rows = hold_out(train_rows, config.eval_fraction, config.train.seed, by_group)
    return _pairs(train_rows), _pairs(eval_rows) if eval_rows else None


def _pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows]


def _fit(
    config: DPOConfig,
    model: Any,
    reference: Any,
    tokenizer: Any,
    writer: ArtifactWriter,
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]] | None,
    resume: bool,
) -> tuple[DPOTrainer, dict[str, Any]]:
    losses = [config.loss_type] + (["sft"] if config.sft_weight else [])
    fields = {"max_length": config.max_length, "beta": config.beta, "loss_type": losses}
    fields.update(
        loss_weights=[1.0, config.sft_weight][: len(losses)], label_smoothing=config.label_smoothing
    )
    fields["precompute_ref_log_probs"] = config.precompute_ref_log_probs
    if config.truncation != "drop":  # the rows kept over-long are cut by TRL the same way
        fields["truncation_mode"] = config.truncation
    trainer, summary = trl_stage.fit(
        DPOTrainer, TRLDPOConfig, config, model, tokenizer, writer, (train_rows, eval_rows), fields, resume,
        ref_model=reference,
    )  # fmt: skip
    if eval_rows:
        summary.update({k: v for k, v in trainer.evaluate().items() if k.startswith("eval_")})
    return trainer, summary
