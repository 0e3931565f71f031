"""Data rows to token ids with the model's chat template; rows longer than the stage's max_length are
dropped and counted in the dataset (never silently truncated)."""

from __future__ import annotations

from typing import Any

from align.data import Dataset
from align.errors import DataError
from align.text.chat import encode_prompt_completion, prompt_text


def tokenize_sft(data: Dataset, tokenizer: Any, max_length: int) -> list[dict[str, list[int]]]:
    """Chat-formatted token ids with completion masks; over-long rows are dropped and counted."""
    rows, too_long = [], set()
    for index, row in enumerate(data.rows):
        encoded = encode_prompt_completion(tokenizer, row["prompt"], row["completion"])
        if len(encoded["input_ids"]) > max_length:
            too_long.add(index)
        else:
            rows.append(encoded)
    data.drop(too_long, f"longer than max_length={max_length} tokens")
    if not rows:
        raise DataError(f"{data.source.name}: every row is longer than max_length={max_length} tokens")
    return rows


def tokenize_pairs(data: Dataset, tokenizer: Any, max_length: int, margin: float) -> list[dict[str, Any]]:
    """Token ids of prompt+chosen and prompt+rejected (chat-formatted, EOS included) per pair."""
    rows, too_long = [], set()
    for index, row in enumerate(data.rows):
        chosen = encode_prompt_completion(tokenizer, row["prompt"], row["chosen"])["input_ids"]
        rejected = encode_prompt_completion(tokenizer, row["prompt"], row["rejected"])["input_ids"]
        if max(len(chosen), len(rejected)) > max_length:
            too_long.add(index)
            continue
        encoded = {
            "chosen_ids": chosen,
            "rejected_ids": rejected,
            "group": row["group"],
            "prompt_text": prompt_text(tokenizer, row["prompt"]),
            "chosen_text": row["chosen"][0]["content"] + tokenizer.eos_token,
            "rejected_text": row["rejected"][0]["content"] + tokenizer.eos_token,
        }
        if margin:
            encoded["margin"] = margin
        rows.append(encoded)
    data.drop(too_long, f"longer than max_length={max_length} tokens")
    if not rows:
        raise DataError(f"{data.source.name}: every pair is longer than max_length={max_length} tokens")
    return rows
