"""Supervised fine-tuning: instruction or chat data -> a policy artifact (LoRA adapter or full weights).

    align sft --model runs/tiny/pretrain --data data/synthetic/sft.jsonl --output runs/tiny/sft

Loss is on completion tokens only (prompt tokens get label -100, the EOS that ends each answer is kept),
through TRL's SFTTrainer. Rows longer than `max_length` are dropped and counted, never truncated.
"""

from __future__ import annotations

import torch
from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from align.artifacts import Artifact, ArtifactWriter
from align.config import SFTConfig, to_dict
from align.data import load_data
from align.data.splits import hold_out
from align.models import load_policy, load_tokenizer, resolve_model, save_policy
from align.stages import trl_stage
from align.text.encoding import tokenize_sft


def run(config: SFTConfig, resume: bool = False) -> Artifact:
    data = load_data(config.data, "sft", config.limit)
    held_out = load_data(config.eval_data, "sft") if config.eval_data else None
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    train_rows = tokenize_sft(data, tokenizer, config.max_length, config.truncation)
    eval_rows = tokenize_sft(held_out, tokenizer, config.max_length, config.truncation) if held_out else None
    if eval_rows is None and config.eval_fraction > 0 and len(train_rows) >= 20:
        train_rows, eval_rows = hold_out(train_rows, config.eval_fraction, config.train.seed)

    torch.manual_seed(config.train.seed)
    model = load_policy(source, config.trust_remote_code)
    with ArtifactWriter(config.output, "sft", to_dict(config), resume) as writer:
        fields = {"max_length": config.max_length, "packing": config.packing}
        fields["completion_only_loss"] = config.completion_only_loss
        rows = (train_rows, eval_rows)
        trainer, summary = trl_stage.fit(
            SFTTrainer, TRLSFTConfig, config, model, tokenizer, writer, rows, fields, resume
        )
        summary.update(trl_stage.evaluate_loss(trainer))
        save_policy(trainer.model, tokenizer, writer, source, config.lora.enabled)
        if config.lora.enabled and config.save_merged:  # after the adapter: merging changes the model
            trainer.model.merge_and_unload().save_pretrained(str(writer.work_dir / "merged"))
            tokenizer.save_pretrained(str(writer.work_dir / "merged"))
        writer.record_data(data, held_out)
        writer.metrics = summary
        return writer.commit()
