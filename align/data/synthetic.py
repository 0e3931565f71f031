"""Synthetic instruction tasks with a programmatic gold reward: the offline default's alignment data.

Six task families (add, reverse, last, count, sort, repeat) for a ~2M-parameter GPT-2 on a CPU;
addition with a carry is the hard one. Everything is generated from one
seed, so regenerating gives bit-identical files:

    align data synth --output data/synthetic

writes a pretraining corpus, imperfect SFT demonstrations (a share verbose, a share with a systematic
slip), gold-labelled preference pairs with label noise (and K-way rankings), PPO prompts and held-out
evaluation prompts, with no prompt shared between the prompt sets.

`gold_reward(prompts, responses)` follows the reward protocol (batched, floats in [0, 1]). It reads
the task from the prompt text (any chat template), so it needs nothing but the two strings:

| response (EOS = the tokenizer's `<|endoftext|>` at the end) | gold |
|---|---|
| exactly the answer, then EOS | 1.0 |
| exactly the answer, cut off before EOS | 0.6 |
| short, one segment (split at . ! ? : ; , newline) is exactly the answer, then EOS | 0.5 |
| the same, cut off before EOS | 0.25 |
| anything else (wrong, rambling, empty) | 0.0 |
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from align.errors import ConfigError

EOS = "<|endoftext|>"
WORDS = [
    "ant",
    "bee",
    "cat",
    "cow",
    "dog",
    "elk",
    "emu",
    "fox",
    "gnu",
    "hen",
    "owl",
    "pig",
    "rat",
    "yak",
    "bat",
    "cod",
    "box",
    "cup",
    "hat",
    "jar",
    "key",
    "map",
    "pen",
    "pot",
    "rug",
    "van",
    "bus",
    "car",
    "jet",
    "sun",
    "sky",
    "sea",
    "red",
    "tan",
    "egg",
    "fig",
    "jam",
    "pie",
    "tea",
    "oak",
    "ivy",
]
VERBOSE_FORMS = ("Sure! {}", "The answer: {}", "{}. Hope this helps!", "Here you go: {}", "Okay, {}. Done.")
_SEGMENT = re.compile(r"[.!?:;,\n]")


@dataclass(frozen=True)
class Task:
    family: str
    prompt: str
    answer: str
    slip: str  # the systematic mistake a careless demonstrator makes


def _add(rng: random.Random) -> Task:
    a, b = rng.randrange(100), rng.randrange(10)
    prompt = rng.choice(("What is {} plus {}?", "Add {} and {}.", "Compute {} + {}."))
    # the slip forgets the carry: 38 + 5 -> 33
    return Task("add", prompt.format(a, b), str(a + b), str(a // 10 * 10 + (a % 10 + b) % 10))


def _reverse(rng: random.Random) -> Task:
    words = rng.sample(WORDS, rng.randint(2, 4))
    return Task(
        "reverse",
        f"Reverse the words: {' '.join(words)}",
        " ".join(reversed(words)),
        " ".join(words[1:] + words[:1]),
    )


def _last(rng: random.Random) -> Task:
    words = rng.sample(WORDS, rng.randint(2, 5))
    return Task("last", f"Last word of: {' '.join(words)}", words[-1], words[0])


def _count(rng: random.Random) -> Task:
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 7))]
    return Task("count", f"How many words: {' '.join(words)}", str(len(words)), str(len(words) + 1))


def _sort(rng: random.Random) -> Task:
    digits = [rng.randrange(10) for _ in range(rng.randint(3, 4))]
    return Task(
        "sort",
        f"Sort the numbers: {' '.join(map(str, digits))}",
        " ".join(map(str, sorted(digits))),
        " ".join(map(str, sorted(digits, reverse=True))),
    )


def _repeat(rng: random.Random) -> Task:
    phrase, n = " ".join(rng.sample(WORDS, rng.randint(1, 2))), rng.randint(2, 3)
    return Task("repeat", f"Repeat {phrase} {n} times", " ".join([phrase] * n), " ".join([phrase] * (n + 1)))


FAMILIES: dict[str, Callable[[random.Random], Task]] = {
    "add": _add,
    "reverse": _reverse,
    "last": _last,
    "count": _count,
    "sort": _sort,
    "repeat": _repeat,
}

# Each family's prompt, recognised anywhere in a rendered prompt (chat template or not).
_PARSERS: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    ("add", re.compile(r"What is (\d+) plus (\d+)\?"), lambda m: str(int(m[1]) + int(m[2]))),
    ("add", re.compile(r"Add (\d+) and (\d+)\."), lambda m: str(int(m[1]) + int(m[2]))),
    ("add", re.compile(r"Compute (\d+) \+ (\d+)\."), lambda m: str(int(m[1]) + int(m[2]))),
    ("reverse", re.compile(r"Reverse the words: ([a-z ]+)"), lambda m: " ".join(reversed(m[1].split()))),
    ("last", re.compile(r"Last word of: ([a-z ]+)"), lambda m: m[1].split()[-1]),
    ("count", re.compile(r"How many words: ([a-z ]+)"), lambda m: str(len(m[1].split()))),
    ("sort", re.compile(r"Sort the numbers: ([\d ]+)"), lambda m: " ".join(sorted(m[1].split()))),
    ("repeat", re.compile(r"Repeat ([a-z ]+?) (\d+) times"), lambda m: " ".join([m[1]] * int(m[2]))),
]


def parse_task(prompt: str) -> tuple[str, str] | None:
    """(family, answer) of the last task stated in `prompt`, or None when it states none."""
    found = None
    for family, pattern, solve in _PARSERS:
        for match in pattern.finditer(prompt):
            if found is None or match.start() >= found[0]:
                found = (match.start(), family, solve(match))
    return None if found is None else (found[1], found[2])


def gold_score(prompt: str, response: str) -> float:
    task = parse_task(prompt)
    if task is None:
        return 0.0
    answer = task[1]
    ended = response.endswith(EOS)
    text = (response[: -len(EOS)] if ended else response).strip()
    if text == answer:
        return 1.0 if ended else 0.6
    short = len(text) <= len(answer) + 40
    if short and any(segment.strip() == answer for segment in _SEGMENT.split(text)):
        return 0.5 if ended else 0.25
    return 0.0


def gold_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """The reward protocol: `--reward align.data.synthetic:gold_reward` in every online stage."""
    return [gold_score(p, r) for p, r in zip(prompts, responses, strict=True)]


def family_of(prompt: str) -> str:
    task = parse_task(prompt)
    return task[0] if task else "unknown"


@dataclass
class SynthSettings:
    """Generator settings; written beside the files so anyone can regenerate them bit-identically."""

    seed: int = 1234
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    pretrain_docs: int = 6000
    sft: int = 4800
    pairs: int = 6000
    rankings: int = 300  # K-way ranking rows (K = 3, distinct gold), expanded into 3 pairs each by the loader
    ppo_prompts: int = 1800
    eval_prompts: int = 1200
    verbose_rate: float = 0.3  # share of SFT demonstrations wrapped in chatter
    slip_rate: float = 0.15  # share of SFT demonstrations with the family's systematic mistake
    label_noise: float = 0.1  # share of preference labels flipped, like inattentive raters

    def validate(self) -> None:

        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown or not self.families:
            raise ConfigError(f"families: unknown {unknown or 'empty list'} (known: {', '.join(FAMILIES)})")
        for name in ("verbose_rate", "slip_rate", "label_noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1]")
        for name in ("pretrain_docs", "sft", "pairs", "rankings", "ppo_prompts", "eval_prompts"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")


def generate(settings: SynthSettings) -> dict[str, list[dict[str, Any]]]:
    """All the data sets, with prompts disjoint between eval, sft, pairs and ppo.

    Each set draws from its own random stream, so resizing one set leaves the others unchanged
    (except that later prompt sets avoid the prompts earlier ones took).
    """
    used: set[str] = set()

    def stream(name: str) -> random.Random:
        return random.Random(f"{settings.seed}:{name}")

    def fresh_tasks(n: int, rng: random.Random) -> list[Task]:
        tasks, attempts = [], 0
        while len(tasks) < n:
            attempts += 1
            if attempts > 50 * n + 1000:
                raise ConfigError(
                    f"the task families ran out of distinct prompts after {len(tasks)} of {n}; ask for fewer rows"
                )
            task = FAMILIES[settings.families[len(tasks) % len(settings.families)]](rng)
            if task.prompt not in used:
                used.add(task.prompt)
                tasks.append(task)
        return tasks

    sets: dict[str, list[dict[str, Any]]] = {}
    rng = stream("eval")
    sets["eval"] = [{"prompt": t.prompt, "family": t.family} for t in fresh_tasks(settings.eval_prompts, rng)]
    rng = stream("sft")
    sets["sft"] = [_demonstration(t, settings, rng) for t in fresh_tasks(settings.sft, rng)]
    rng = stream("pairs")
    sets["pairs"] = [_pair(t, settings, rng) for t in fresh_tasks(settings.pairs, rng)]
    sets["pairs"] += [_ranking(t, settings, rng) for t in fresh_tasks(settings.rankings, rng)]
    rng = stream("ppo")
    sets["ppo"] = [{"prompt": t.prompt, "family": t.family} for t in fresh_tasks(settings.ppo_prompts, rng)]
    rng = stream("pretrain")
    sets["pretrain"] = [{"text": _document(settings, rng)} for _ in range(settings.pretrain_docs)]
    return sets


def write(settings: SynthSettings, output: Path) -> dict[str, str]:
    """Write every set as JSONL (the corpus gzipped, with a fixed timestamp) and a settings record."""
    output.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, rows in generate(settings).items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
        path = output / (f"{name}.jsonl.gz" if name == "pretrain" else f"{name}.jsonl")
        path.write_bytes(gzip.compress(text, mtime=0) if name == "pretrain" else text)
        hashes[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    record = {"generator": "align.data.synthetic", "settings": asdict(settings), "files": hashes}
    (output / "settings.json").write_text(json.dumps(record, indent=2) + "\n")
    return hashes


def _demonstration(task: Task, settings: SynthSettings, rng: random.Random) -> dict[str, Any]:
    answer = task.slip if rng.random() < settings.slip_rate else task.answer
    if rng.random() < settings.verbose_rate:
        answer = rng.choice(VERBOSE_FORMS).format(answer)
    return {"prompt": task.prompt, "completion": answer, "family": task.family}


def _candidates(task: Task, rng: random.Random) -> list[str]:
    """Responses of every quality, so the pairs teach correct > wrong and concise > chatty. Besides the
    systematic slip, wrong answers include random corruptions like those a small policy makes."""
    ramble = " ".join([task.answer] * rng.randint(2, 3))
    corrupt = _corrupt(task.answer, rng)
    return [
        task.answer,
        rng.choice(VERBOSE_FORMS).format(task.answer),
        task.slip,
        corrupt,
        rng.choice(VERBOSE_FORMS).format(rng.choice((task.slip, corrupt))),
        ramble,
    ]


def _corrupt(answer: str, rng: random.Random) -> str:
    """The answer with one token substituted, two swapped or one dropped (never the answer itself)."""
    tokens = answer.split()
    while True:
        edited = list(tokens)
        operation = rng.choice(("substitute", "swap", "drop") if len(tokens) > 1 else ("substitute",))
        i = rng.randrange(len(edited))
        if operation == "substitute":
            edited[i] = (
                str(rng.randrange(100 if len(edited[i]) > 1 else 10))
                if edited[i].isdigit()
                else (rng.choice(WORDS).upper() if edited[i].isupper() else rng.choice(WORDS))
            )
        elif operation == "swap":
            j = (i + 1) % len(edited)
            edited[i], edited[j] = edited[j], edited[i]
        else:
            del edited[i]
        if edited and " ".join(edited) != answer:
            return " ".join(edited)


def _pair(task: Task, settings: SynthSettings, rng: random.Random) -> dict[str, Any]:
    while True:
        first, second = rng.sample(_candidates(task, rng), 2)
        a, b = gold_score(task.prompt, first + EOS), gold_score(task.prompt, second + EOS)
        if a != b:
            break
    chosen, rejected = (first, second) if a > b else (second, first)
    if rng.random() < settings.label_noise:
        chosen, rejected = rejected, chosen
    return {"prompt": task.prompt, "chosen": chosen, "rejected": rejected, "family": task.family}


def _ranking(task: Task, settings: SynthSettings, rng: random.Random) -> dict[str, Any]:
    """One response per gold level (clean, chatty, wrong), so the ranking has no ties."""
    clean, chatty, *wrong = _candidates(task, rng)
    responses = [clean, chatty, rng.choice(wrong)]
    rng.shuffle(responses)
    gold = [gold_score(task.prompt, r + EOS) for r in responses]
    ranking = sorted(range(len(responses)), key=lambda i: -gold[i])
    if rng.random() < settings.label_noise:
        i = rng.randrange(len(ranking) - 1)
        ranking[i], ranking[i + 1] = ranking[i + 1], ranking[i]
    return {"prompt": task.prompt, "responses": responses, "ranking": ranking, "family": task.family}


def _document(settings: SynthSettings, rng: random.Random) -> str:
    """A few sentences of prose that state solved tasks: skills without the chat format."""
    lines = []
    for _ in range(rng.randint(3, 6)):
        task = FAMILIES[rng.choice(settings.families)](rng)
        statement = task.prompt.rstrip("?.")
        lines.append(rng.choice(("{} gives {}.", "{}: {}.", "Q: {} A: {}")).format(statement, task.answer))
    return "\n".join(lines)
