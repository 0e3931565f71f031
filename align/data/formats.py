"""Normalise every accepted row shape into the conversational form the stages (and TRL) use.

| kind    | normalised row |
|---------|----------------|
| text    | {"text": str} |
| sft     | {"prompt": [messages], "completion": [assistant message]} (a pairs file gives its chosen answers) |
| pairs   | {"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message], "group": str} |
| prompts | {"prompt": [messages]} |

A pair's group (its own location, or the `group` its row names) keeps the pairs sharing it together in
held-out splits.

Accepted inputs are listed in README.md ("Data formats"). A row that cannot be read is an error naming
file, line and field; a readable but unusable row (empty text or chosen answer, chosen == rejected) is
dropped and counted by reason in the manifest.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from align.data.sources import Source, open_source, read_rows
from align.errors import DataError

logger = logging.getLogger("align")

KINDS = ("text", "sft", "pairs", "prompts")
Message = dict[str, str]
_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
}
_TRANSCRIPT_TURN = re.compile(r"\n\n(Human|Assistant):")


MAX_ROW_CHARS = 1_000_000  # one row's text: hundreds of times any context a stage trains on


def _text_size(value: Any) -> int:
    """The characters of every string in a row, nested lists and mappings included."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(str(key)) + _text_size(item) for key, item in value.items())
    if isinstance(value, list):
        return sum(_text_size(item) for item in value)
    return 0


class Dropped(Exception):
    """A readable row that carries nothing usable; counted under its reason."""


@dataclass
class Dataset:
    kind: str
    rows: list[dict[str, Any]]
    source: Source
    read: int = 0
    dropped: Counter = field(default_factory=Counter)
    truncated: int = 0  # over-long rows kept, cut to fit (`truncation: keep_end | keep_start`)

    def info(self) -> dict[str, Any]:
        """The manifest's `data` record."""
        return {
            "source": self.source.name,
            "sha256": self.source.sha256,
            "kind": self.kind,
            "rows_read": self.read,
            "rows": len(self.rows),
            "dropped": dict(self.dropped),
            "truncated": self.truncated,
        }

    def announce(self) -> None:
        """One line on the console: rows read, kept, cut and dropped by reason; a warning when more than
        10 % of the rows read were dropped."""
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.dropped.items()) or "none"
        cut = f", {self.truncated} truncated" if self.truncated else ""
        kept = "pairs kept" if self.kind == "pairs" else "kept"  # a ranking row gives several pairs
        logger.info(
            "%s: %d rows read, %d %s%s; dropped: %s",
            self.source.name,
            self.read,
            len(self.rows),
            kept,
            cut,
            reasons,
        )
        dropped = sum(self.dropped.values())
        if dropped > 0.1 * max(self.read, 1):
            logger.warning(
                "%s: %d of %d rows (%.0f %%) were dropped; `truncation: keep_end` keeps over-long rows "
                "whose answer fits, a larger max_length keeps more",
                self.source.name, dropped, self.read, 100 * dropped / max(self.read, 1),
            )  # fmt: skip

    def add(self, values: dict[str, Any], where: str, origin: str) -> None:
        """Normalise one raw row into this data set's rows, or count it under the reason it was dropped.
        `where` is the row's location, `origin` the file (or hub data set) it is in."""
        self.read += 1
        size = _text_size(values)
        if size > MAX_ROW_CHARS:
            raise DataError(f"{where}: a row of {size:,} characters, over the limit of {MAX_ROW_CHARS:,}")
        try:
            rows = _NORMALISERS[self.kind](values, where)
        except Dropped as why:
            self.dropped[str(why)] += 1
            return
        if self.kind == "pairs":
            group = _group(values, where, origin)
            rows = [{**row, "group": group} for row in rows]
        self.rows.extend(rows)

    def drop(self, indices: set[int], reason: str) -> None:
        """Drop rows found unusable by a stage (e.g. longer than its max_length), counting them."""
        if indices:
            self.rows = [row for i, row in enumerate(self.rows) if i not in indices]
            self.dropped[reason] += len(indices)


def load_data(name: str, kind: str, limit: int | None = None) -> Dataset:
    """Read and normalise a data source; raises DataError on the first unreadable row."""
    if kind not in KINDS:
        raise DataError(f"unknown data kind '{kind}' (use one of {', '.join(KINDS)})")
    source = open_source(name)
    dataset = Dataset(kind, [], source)
    for raw in read_rows(source):
        if limit is not None and len(dataset.rows) >= limit:
            break
        dataset.add(raw.values, raw.location, raw.origin)
    if not dataset.rows:
        reasons = ", ".join(f"{n} {r}" for r, n in dataset.dropped.items()) or "no rows"
        raise DataError(f"{name}: no usable {kind} rows ({reasons})")
    return dataset


def text_rows(values: dict[str, Any], where: str) -> list[dict[str, Any]]:
    return [{"text": _text(values, "text", where)}]


def sft_rows(values: dict[str, Any], where: str) -> list[dict[str, Any]]:
    if "instruction" in values:  # Alpaca
        prompt = _text(values, "instruction", where)
        extra = _optional_text(values, "input", where)
        prompt = f"{prompt}\n\n{extra}" if extra else prompt
        return [_sft_row([_user(prompt)], _text(values, "output", where))]
    if "chosen" in values or "responses" in values:  # a pairs file: its preferred answers
        best = pair_rows(values, where)[0]
        return [_sft_row(best["prompt"], best["chosen"][0]["content"])]
    if "prompt" in values:
        return [_sft_row(_prompt_messages(values, where), _response(values, "completion", where))]
    messages = _conversation(values, where)
    if messages is None:
        raise DataError(
            _missing(values, where, "instruction/output, prompt/completion, messages or conversations")
        )
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: field 'messages' must end with an assistant turn")
    return [_sft_row(messages[:-1], messages[-1]["content"])]


def pair_rows(values: dict[str, Any], where: str) -> list[dict[str, Any]]:
    if values.get("judgement") in ("tie", "skip"):  # rows of `align label` / `align arena` with no preference
        raise Dropped(f"{values['judgement']} judgement")
    if "responses" in values or "ranking" in values:
        return _ranking_pairs(values, where)
    for name in ("chosen", "rejected"):
        if name not in values:
            raise DataError(_missing(values, where, name))
    if "conversations" in values:  # ShareGPT: a conversation and two final assistant turns
        prompt = _conversation(values, where)
        chosen, rejected = (_turn_text(values[n], f"{where}: field '{n}'") for n in ("chosen", "rejected"))
    elif "prompt" in values:
        prompt = _prompt_messages(values, where)
        chosen, rejected = (_response(values, n, where) for n in ("chosen", "rejected"))
    elif isinstance(values["chosen"], str):  # HH-RLHF transcripts: the shared prefix is the prompt
        prompt, chosen, rejected = _split_transcripts(values, where)
    else:  # two full message lists sharing their prompt turns
        prompt, chosen, rejected = _split_message_lists(values, where)
    return [_pair_row(prompt, chosen, rejected)]


def _group(values: dict[str, Any], where: str, origin: str) -> str:
    """A pair's own row (all pairs of one ranking row share it), or the `group` the row names (pairs of
    one prompt), scoped to its file."""
    if "group" not in values:
        return where
    group = values["group"]
    if not isinstance(group, (str, int)) or isinstance(group, bool):
        raise DataError(f"{where}: field 'group' must be a string or an integer")
    return f"{origin}: group {group}"


def prompt_rows(values: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """Prompts for online stages; sft and pairs files serve too (their prompts)."""
    if "prompt" in values:
        prompt = _prompt_messages(values, where)
    elif (
        "instruction" in values
        or "messages" in values
        or ("conversations" in values and "chosen" not in values)
    ):
        prompt = sft_rows(values, where)[0]["prompt"]
    elif "chosen" in values or "responses" in values:
        prompt = pair_rows(values, where)[0]["prompt"]
    else:
        raise DataError(_missing(values, where, "prompt"))
    if not prompt:
        raise Dropped("empty prompt")
    return [{"prompt": prompt}]


_NORMALISERS = {"text": text_rows, "sft": sft_rows, "pairs": pair_rows, "prompts": prompt_rows}


def _ranking_pairs(values: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """A K-way ranking (best first) becomes its C(K, 2) pairs, sharing a group id."""
    for name in ("prompt", "responses", "ranking"):
        if name not in values:
            raise DataError(_missing(values, where, name))
    responses, ranking = values["responses"], values["ranking"]
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise DataError(f"{where}: field 'responses' must be a list of strings")
    if len(responses) < 2:
        raise Dropped("fewer than 2 responses")
    if (
        not isinstance(ranking, list)
        or sorted(ranking) != list(range(len(responses)))
        or any(isinstance(i, bool) for i in ranking)
    ):
        raise DataError(f"{where}: field 'ranking' must list every index of 'responses' once, best first")
    prompt = _prompt_messages(values, where)
    ordered = [responses[i] for i in ranking]
    pairs = [
        _pair_row(prompt, better, worse)
        for better, worse in itertools.combinations(ordered, 2)
        if better.strip() != worse.strip()
    ]
    if not pairs:
        raise Dropped("chosen equals rejected")
    return pairs


def _sft_row(prompt: list[Message], completion: str) -> dict[str, Any]:
    if not completion.strip():
        raise Dropped("empty completion")
    if not prompt:
        raise Dropped("empty prompt")
    return {"prompt": prompt, "completion": [_assistant(completion)]}


def _pair_row(prompt: list[Message], chosen: str, rejected: str) -> dict[str, Any]:
    """An empty rejected answer is kept: saying nothing is an answer a policy under RL finds, and the RM
    must have seen it ranked low. An empty chosen one is a broken row."""
    if not chosen.strip():
        raise Dropped("empty chosen")
    if chosen.strip() == rejected.strip():
        raise Dropped("chosen equals rejected")
    if not prompt:
        raise Dropped("empty prompt")
    return {
        "prompt": prompt,
        "chosen": [_assistant(chosen)],
        "rejected": [_assistant(rejected)],
    }


def _prompt_messages(values: dict[str, Any], where: str) -> list[Message]:
    prompt = values["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise Dropped("empty prompt")
        if _TRANSCRIPT_TURN.search(prompt):
            return _parse_transcript(prompt, where, "prompt")
        return [_user(prompt)]
    return _messages(prompt, f"{where}: field 'prompt'")


def _response(values: dict[str, Any], name: str, where: str) -> str:
    """A response given as a string, one message, or a message list ending in an assistant turn."""
    value = values.get(name)
    if value is None:
        raise DataError(_missing(values, where, name))
    return _turn_text(value, f"{where}: field '{name}'")


def _turn_text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    messages = _messages(value if isinstance(value, list) else [value], what)
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{what} must end with an assistant turn")
    return messages[-1]["content"]


def _conversation(values: dict[str, Any], where: str) -> list[Message] | None:
    for name in ("messages", "conversations"):
        if name in values:
            return _messages(values[name], f"{where}: field '{name}'")
    return None


def _messages(value: Any, what: str) -> list[Message]:
    """Accepts OpenAI `{role, content}` and ShareGPT `{from, value}` message lists."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{what} must be a non-empty list of messages")
    messages = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise DataError(f"{what}[{index}] must be an object with role/content")
        role = item.get("role", item.get("from"))
        content = item.get("content", item.get("value"))
        if role is None or content is None:
            raise DataError(
                f"{what}[{index}] needs 'role' and 'content' (or 'from' and 'value'), "
                f"has: {', '.join(map(str, item)) or 'nothing'}"
            )
        if not isinstance(role, str) or role.lower() not in _ROLES:
            raise DataError(f"{what}[{index}]: unknown role {role!r} (use {', '.join(sorted(set(_ROLES)))})")
        if not isinstance(content, str):
            raise DataError(f"{what}[{index}]: 'content' must be a string, got {type(content).__name__}")
        messages.append({"role": _ROLES[role.lower()], "content": content})
    return messages


def _split_transcripts(values: dict[str, Any], where: str) -> tuple[list[Message], str, str]:
    chosen, rejected = (_text(values, n, where, allow_empty=True) for n in ("chosen", "rejected"))
    cut_c, cut_r = chosen.rfind("\n\nAssistant:"), rejected.rfind("\n\nAssistant:")
    if cut_c < 0 or cut_r < 0:
        raise DataError(
            f"{where}: field '{'chosen' if cut_c < 0 else 'rejected'}' is a plain string without a "
            "'\\n\\nAssistant:' turn; give a 'prompt' field or HH-RLHF transcripts"
        )
    if chosen[:cut_c] != rejected[:cut_r]:
        raise Dropped("chosen and rejected transcripts have different prompts")
    prompt = _parse_transcript(chosen[:cut_c], where, "chosen")
    marker = len("\n\nAssistant:")
    return prompt, chosen[cut_c + marker :].strip(), rejected[cut_r + marker :].strip()


def _parse_transcript(text: str, where: str, name: str) -> list[Message]:
    """`\\n\\nHuman: …\\n\\nAssistant: …` into messages; a trailing empty Assistant turn is the generation slot."""
    parts = _TRANSCRIPT_TURN.split(text)
    if parts[0].strip():
        raise DataError(f"{where}: field '{name}' has text before its first 'Human:' turn")
    messages = [
        {"role": "user" if speaker == "Human" else "assistant", "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def _split_message_lists(values: dict[str, Any], where: str) -> tuple[list[Message], str, str]:
    chosen = _messages(values["chosen"], f"{where}: field 'chosen'")
    rejected = _messages(values["rejected"], f"{where}: field 'rejected'")
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[-1]["role"] != "assistant":
            raise DataError(f"{where}: field '{name}' must end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise Dropped("chosen and rejected conversations have different prompts")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def _text(values: dict[str, Any], name: str, where: str, allow_empty: bool = False) -> str:
    if name not in values or values[name] is None:
        raise DataError(_missing(values, where, name))
    value = values[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise Dropped(f"empty {name}")
    return value


def _optional_text(values: dict[str, Any], name: str, where: str) -> str:
    value = values.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    return value.strip()


def _missing(values: dict[str, Any], where: str, name: str) -> str:
    has = ", ".join(map(str, values)) or "no fields"
    return f"{where}: field '{name}' missing (has: {has})"


def _user(content: str) -> Message:
    return {"role": "user", "content": content}


def _assistant(content: str) -> Message:
    return {"role": "assistant", "content": content}
