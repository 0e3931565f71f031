"""Data rows to token ids with the model's chat template. A row longer than the stage's max_length is,
by `truncation`: dropped and counted (`drop`, the default); cut from the left of its prompt so the
response stays whole (`keep_end`, as TRL and LLaMA-Factory do); or cut at the end (`keep_start`). Kept
rows are counted as truncated; a row whose response alone does not fit is dropped either way. Each data
set announces what it kept on the console."""

from __future__ import annotations

from typing import Any, Literal

from align.data import Dataset
from align.errors import DataError
from align.text.chat import encode_prompt_completion, prompt_text

Truncation = Literal["drop", "keep_end", "keep_start"]


def tokenize_sft(
    data: Dataset, tokenizer: Any, max_length: int, truncation: Truncation = "drop"
) -> list[dict[str, list[int]]]:
    """Chat-formatted token ids with completion masks."""
    rows, too_long = [], set()
    for index, row in enumerate(data.rows):
        encoded = encode_prompt_completion(tokenizer, row["prompt"], row["completion"])
        fitted = _fit([encoded["input_ids"]], encoded["completion_mask"].count(0), max_length, truncation)
        if fitted is None:
            too_long.add(index)
            continue
        (ids,), prompt_length, cut = fitted
        data.truncated += cut
        rows.append(
            {"input_ids": ids, "completion_mask": [0] * prompt_length + [1] * (len(ids) - prompt_length)}
        )
    _finish(data, too_long, max_length, "row")
    return rows


def tokenize_pairs(
    data: Dataset, tokenizer: Any, max_length: int, margin: float, truncation: Truncation = "drop"
) -> list[dict[str, Any]]:
    """Token ids of prompt+chosen and prompt+rejected (chat-formatted, EOS included) per pair; kept
    over-long pairs lose the same prompt tokens on both sides."""
    rows, too_long = [], set()
    for index, row in enumerate(data.rows):
        chosen = encode_prompt_completion(tokenizer, row["prompt"], row["chosen"])
        fitted = _fit(
            [
                chosen["input_ids"],
                encode_prompt_completion(tokenizer, row["prompt"], row["rejected"])["input_ids"],
            ],
            chosen["completion_mask"].count(0),
            max_length,
            truncation,
        )
        if fitted is None:
            too_long.add(index)
            continue
        (chosen_ids, rejected_ids), _, cut = fitted
        data.truncated += cut
        encoded = {
            "chosen_ids": chosen_ids,
            "rejected_ids": rejected_ids,
            "group": row["group"],
            "prompt_text": prompt_text(tokenizer, row["prompt"]),
            "chosen_text": row["chosen"][0]["content"] + tokenizer.eos_token,
            "rejected_text": row["rejected"][0]["content"] + tokenizer.eos_token,
        }
        if margin:
            encoded["margin"] = margin
        rows.append(encoded)
    _finish(data, too_long, max_length, "pair")
    return rows


def _fit(
    sequences: list[list[int]], prompt_length: int, max_length: int, truncation: Truncation
) -> tuple[list[list[int]], int, bool] | None:
    """Sequences sharing their first `prompt_length` tokens, fitted into max_length: (sequences, the
    prompt length left, whether anything was cut), or None when the row is dropped."""
    excess = max(len(s) for s in sequences) - max_length
    if excess <= 0:
        return sequences, prompt_length, False
    if truncation == "keep_end" and excess < prompt_length:
        return [s[excess:] for s in sequences], prompt_length - excess, True
    if truncation == "keep_start" and prompt_length < max_length:
        return [s[:max_length] for s in sequences], prompt_length, True
    return None


def _finish(data: Dataset, too_long: set[int], max_length: int, what: str) -> None:
    data.drop(too_long, f"longer than max_length={max_length} tokens")
    data.announce()
    if not data.rows:
        if not too_long:
            raise DataError(f"{data.source.name}: no {what} rows to train on")
        raise DataError(f"{data.source.name}: every {what} is longer than max_length={max_length} tokens")
