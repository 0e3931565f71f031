"""Pretraining from scratch: a byte-level BPE tokenizer and a small GPT-2 -> a base-model artifact.

    align pretrain --recipe recipes/tiny/pretrain.yaml

The offline default's base model: nothing can be downloaded here, so the project makes its own. The
corpus (default: the embedded synthetic corpus) is packed into `block_size`-token sequences and trained
with TRL's SFTTrainer as plain language modelling. The artifact loads with AutoModelForCausalLM and
AutoTokenizer and is a valid `--model` for `align sft`.
"""

from __future__ import annotations

import random
from typing import Any

import datasets
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from align import training
from align.artifacts import Artifact, ArtifactWriter
from align.config import PretrainConfig, to_dict
from align.data import load_data
from align.models import fuse_activations
from align.tokenizer import train_tokenizer


def run(config: PretrainConfig, resume: bool = False) -> Artifact:
    data = load_data(config.data, "text")
    texts = [row["text"] for row in data.rows]
    random.Random(config.train.seed).shuffle(texts)
    n_eval = max(1, int(len(texts) * config.eval_fraction))
    eval_texts, train_texts = texts[:n_eval], texts[n_eval:]

    with ArtifactWriter(config.output, "pretrain", to_dict(config), resume) as writer:
        tokenizer = train_tokenizer(train_texts, config.tokenizer)
        torch.manual_seed(config.train.seed)
        model = fuse_activations(GPT2LMHeadModel(_gpt2_config(config, tokenizer)))
        trainer = SFTTrainer(
            model=model,
            args=training.trainer_config(
                TRLSFTConfig,
                config.train,
                writer,
                has_eval=True,
                max_length=config.block_size,
                packing=True,
                packing_strategy="wrapped",
                eval_packing=True,
            ),
            train_dataset=datasets.Dataset.from_dict({"text": train_texts}),
            eval_dataset=datasets.Dataset.from_dict({"text": eval_texts}),
            processing_class=tokenizer,
            callbacks=training.callbacks(writer),
        )
        summary = training.train(trainer, writer, resume)
        summary.update(training.evaluate_loss(trainer))
        summary["uniform_perplexity"] = len(tokenizer)
        summary["parameters"] = sum(p.numel() for p in model.parameters())
        trainer.model.save_pretrained(str(writer.model_dir))
        tokenizer.save_pretrained(str(writer.model_dir))
        writer.data = data.info()
        writer.metrics = summary
        writer.extra["model_format"] = "full"
        return writer.commit()


def _gpt2_config(config: PretrainConfig, tokenizer: Any) -> GPT2Config:
    arch = config.arch
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=arch.n_positions,
        n_embd=arch.n_embd,
        n_layer=arch.n_layer,
        n_head=arch.n_head,
        resid_pdrop=arch.dropout,
        embd_pdrop=arch.dropout,
        attn_pdrop=arch.dropout,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
