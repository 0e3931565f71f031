"""Direct preference optimisation: the SFT policy trained on (prompt, chosen, rejected) pairs.

    align dpo --model runs/tiny/sft --data data/synthetic/pairs.jsonl --output runs/tiny/dpo

TRL's DPOTrainer does the work. With LoRA the reference is the SFT policy with the adapter disabled
(an SFT LoRA is merged first, so the reference is the SFT policy, not the base) and no second copy of
the weights exists; full fine-tuning keeps a frozen copy. Watch `logps/chosen` in the logs: when it
falls while the reward accuracy still rises, DPO is over-fitting.
"""

from __future__ import annotations

import copy

import datasets
import torch
from trl import DPOConfig as TRLDPOConfig
from trl import DPOTrainer

from align import training
from align.artifacts import Artifact, ArtifactWriter
from align.config import DPOConfig, to_dict
from align.data import load_data
from align.models import load_policy, load_tokenizer, lora_config, resolve_model, save_policy
from align.stages.rm import split_by_group
from align.tokenize import tokenize_pairs

_PAIR_FIELDS = ("prompt", "chosen", "rejected", "group")


def run(config: DPOConfig, resume: bool = False) -> Artifact:
    data = load_data(config.data, "pairs", config.limit)
    held_out = load_data(config.eval_data, "pairs") if config.eval_data else None
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    for dataset in filter(None, (data, held_out)):
        tokenize_pairs(dataset, tokenizer, config.max_length, 0.0)  # drops and counts over-long pairs
    train_rows = [{k: row[k] for k in _PAIR_FIELDS} for row in data.rows]
    eval_rows = [{k: row[k] for k in _PAIR_FIELDS} for row in held_out.rows] if held_out else None
    if eval_rows is None and config.eval_fraction > 0:
        train_rows, eval_rows = split_by_group(train_rows, config.eval_fraction, config.train.seed)

    torch.manual_seed(config.train.seed)
    model = load_policy(source, config.trust_remote_code)
    reference = None if config.lora.enabled else copy.deepcopy(model).eval().requires_grad_(False)
    losses = [config.loss_type] + (["sft"] if config.sft_weight else [])
    with ArtifactWriter(config.output, "dpo", to_dict(config), resume) as writer:
        trainer = DPOTrainer(
            model=model,
            ref_model=reference,
            args=training.trainer_config(
                TRLDPOConfig,
                config.train,
                writer,
                has_eval=bool(eval_rows),
                max_length=config.max_length,
                beta=config.beta,
                loss_type=losses,
                loss_weights=[1.0, config.sft_weight][: len(losses)],
                label_smoothing=config.label_smoothing,
                precompute_ref_log_probs=config.precompute_ref_log_probs,
            ),
            train_dataset=datasets.Dataset.from_list(train_rows).remove_columns("group"),
            eval_dataset=datasets.Dataset.from_list(eval_rows).remove_columns("group") if eval_rows else None,
            processing_class=tokenizer,
            peft_config=lora_config(config.lora, model) if config.lora.enabled else None,
            callbacks=training.callbacks(writer),
        )
        summary = training.train(trainer, writer, resume)
        if eval_rows:
            summary.update({k: v for k, v in trainer.evaluate().items() if k.startswith("eval_")})
        summary["reference_copies"] = 0 if reference is None else 1
        save_policy(trainer.model, tokenizer, writer, source, config.lora.enabled)
        writer.data = data.info()
        if held_out:
            writer.data["eval"] = held_out.info()
        writer.metrics = summary
        return writer.commit()
