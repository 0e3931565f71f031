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

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from align.artifacts import Artifact, ArtifactWriter
from align.config import PretrainConfig, to_dict
from align.data import load_data
from align.models import fuse_activations
from align.stages import trl_stage
from align.text.bpe import train_tokenizer


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
        rows = ([{"text": text} for text in train_texts], [{"text": text} for text in eval_texts])
        fields = {"max_length": config.block_size, "packing": True, "packing_strategy": "wrapped"}
        fields["eval_packing"] = True
        trainer, summary = trl_stage.fit(
            SFTTrainer, TRLSFTConfig, config, model, tokenizer, writer, rows, fields, resume
        )
        summary.update(trl_stage.evaluate_loss(trainer))
        summary["uniform_perplexity"] = len(tokenizer)
        summary["parameters"] = sum(p.numel() for p in model.parameters())
        trainer.model.save_pretrained(str(writer.model_dir))
        tokenizer.save_pretrained(str(writer.model_dir))
        writer.record_data(data)
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
