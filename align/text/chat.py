"""Chat formatting: one template for models that have none, and the tokenisation every stage shares.

The template ends each assistant turn with the EOS token (so a trained policy learns to stop) and
marks it with `{% generation %}` (so assistant-only loss masks work). The generation prompt ends in
a newline, which is always a token boundary for byte-level BPE: the prompt's tokens are a prefix of
the prompt+completion tokens, so completion masks are exact.
"""

from __future__ import annotations

from typing import Any

ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{%- else -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)


def ensure_chat_template(tokenizer: Any) -> None:
    """Give a tokenizer without a chat template (e.g. hub GPT-2) the project's template, and a pad token."""
    if not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        # pad = eos is GPT-2's convention; every stage finds padding by attention mask, never by token id.
        tokenizer.pad_token = tokenizer.eos_token


def prompt_text(tokenizer: Any, prompt: list[dict[str, str]]) -> str:
    """The text a policy continues: the conversation so far plus the assistant generation prompt."""
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)


def encode_prompt(tokenizer: Any, prompt: list[dict[str, str]]) -> list[int]:
    return tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def encode_prompt_completion(
    tokenizer: Any, prompt: list[dict[str, str]], completion: list[dict[str, str]]
) -> dict[str, list[int]]:
    """Token ids of prompt + completion and a mask that is 1 on completion tokens (EOS included)."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("the chat template renders the prompt differently inside the conversation")
    return {"input_ids": ids, "completion_mask": [0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids))}


def context_length(model_config: Any) -> int:
    """The longest sequence a model reads, in tokens."""
    for name in ("n_positions", "max_position_embeddings"):
        if getattr(model_config, name, None):
            return int(getattr(model_config, name))
    return 2048


def fitting_prompts(data: Any, tokenizer: Any, room: int) -> list[str]:
    """A prompts data set rendered with the chat template; a prompt longer than `room` tokens (the
    context less the tokens to generate) is dropped from `data` and counted, and the counts announced."""
    texts = [prompt_text(tokenizer, row["prompt"]) for row in data.rows]
    too_long = {
        i for i, t in enumerate(texts) if len(tokenizer(t, add_special_tokens=False)["input_ids"]) > room
    }
    data.drop(too_long, f"prompt longer than context - max_new_tokens = {room} tokens")
    data.announce()
    return [t for i, t in enumerate(texts) if i not in too_long]
