"""Supervised fine-tuning: instruction or chat data -> a policy artifact (LoRA adapter or full weights).

    align sft --model runs/tiny/pretrain --data data/synthetic/sft.jsonl --output runs/tiny/sft

Loss is on completion tokens only (prompt tokens get label -100, the EOS that ends each answer is kept),
through TRL's SFTTrainer. Rows longer than `max_length` are dropped and counted, never truncated.
"""

from __future__ import annotations

import random
from typing import Any

import datasets
import torch
from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from align import training
from align.artifacts import Artifact, ArtifactWriter
from align.config import SFTConfig, to_dict
from align.data import load_data
from align.models import (
    load_policy,
    load_tokenizer,
    lora_config,
    resolve_model,
    save_policy,
)
from align.tokenize import tokenize_sft


def run(config: SFTConfig, resume: bool = False) -> Artifact:
    data = load_data(config.data, "sft", config.limit)
    held_out = load_data(config.eval_data, "sft") if config.eval_data else None
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    train_rows = tokenize_sft(data, tokenizer, config.max_length)
    eval_rows = tokenize_sft(held_out, tokenizer, config.max_length) if held_out else None
    if eval_rows is None and config.eval_fraction > 0 and len(train_rows) >= 20:
        train_rows, eval_rows = _split(train_rows, config.eval_fraction, config.train.seed)

    torch.manual_seed(config.train.seed)
    model = load_policy(source, config.trust_remote_code)
    with ArtifactWriter(config.output, "sft", to_dict(config), resume) as writer:
        trainer = SFTTrainer(
            model=model,
            args=training.trainer_config(
                TRLSFTConfig,
                config.train,
                writer,
                has_eval=eval_rows is not None,
                max_length=config.max_length,
                packing=config.packing,
                completion_only_loss=config.completion_only_loss,
            ),
            train_dataset=datasets.Dataset.from_list(train_rows),
            eval_dataset=datasets.Dataset.from_list(eval_rows) if eval_rows else None,
            processing_class=tokenizer,
            peft_config=lora_config(config.lora, model) if config.lora.enabled else None,
            callbacks=training.callbacks(writer),
        )
        summary = training.train(trainer, writer, resume)
        summary.update(training.evaluate_loss(trainer))
        save_policy(trainer.model, tokenizer, writer, source, config.lora.enabled)
        if config.lora.enabled and config.save_merged:  # after the adapter: merging changes the model
            trainer.model.merge_and_unload().save_pretrained(str(writer.work_dir / "merged"))
            tokenizer.save_pretrained(str(writer.work_dir / "merged"))
        writer.data = data.info()
        if held_out:
            writer.data["eval"] = held_out.info()
        writer.metrics = summary
        return writer.commit()


def _split(rows: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(len(rows) * fraction))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]
