"""The synthetic data sets of `align.data.synthetic`'s task families, generated deterministically from one
seed (`align data synth`):

| file | region | what |
|---|---|---|
| pretrain.jsonl.gz | train | prose stating solved tasks: the base model's corpus |
| sft.jsonl | train | imperfect demonstrations |
| pairs.jsonl | train | gold-labelled preference pairs and K-way rankings, with label noise |
| ppo.jsonl | train | prompts for the policy stages |
| refresh.jsonl | refresh | prompts kept for iterated RLHF's rounds |
| dev.jsonl | dev | prompts for every design and tuning choice |
| eval.jsonl | eval | prompts for reported figures only |
| fresh.jsonl | eval | the eval set of another generator seed (`fresh_seed`), less eval.jsonl's prompts |

Regions come from a hash of each task's key (`align.data.synthetic.region_of`), never from the seed;
`align data check` verifies the files themselves.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from align.config import Settings
from align.data.synthetic import (
    _CHATTER,
    _CLEAN_CHOSEN,
    EOS,
    FAMILIES,
    PRESETS,
    VERBOSE_FORMS,
    WORDS,
    Task,
    gold_score,
)
from align.errors import ConfigError

PURPOSE = {
    "dev": "every design and tuning choice (data, recipe settings, guards), by gold between runs",
    "eval": "reported figures only: nothing is chosen by looking at it",
    "fresh": "reported figures on prompts of another generator seed",
    "refresh": "prompts iterated RLHF's rounds sample, a fresh slice each round",
}


class SynthSettings(Settings):
    """Generator settings; written beside the files so anyone can regenerate them bit-identically."""

    seed: int = 1234
    preset: Literal["default", "hard"] = "default"  # hard: the earlier, capability-bound mix
    # Left out, the next three take the preset's values: family -> share of flawed demonstrations, the
    # share of demonstrations wrapped in chatter, the share of pairs whose chosen answer is clean
    flaw_rates: dict[str, float] = {}
    verbose_rate: float = Field(0.0, ge=0.0, le=1.0)
    clean_chosen: float | None = Field(None, ge=0.0, le=1.0)
    pretrain_docs: int = Field(6000, ge=0)
    sft: int = Field(4800, ge=0)
    pairs: int = Field(6000, ge=0)
    rankings: int = Field(300, ge=0)  # K-way ranking rows (K = 3, distinct gold), 3 pairs each when loaded
    ppo_prompts: int = Field(1800, ge=0)
    eval_prompts: int = Field(1200, ge=0)  # reported figures only
    dev_prompts: int = Field(600, ge=0)  # every design and tuning choice
    refresh_prompts: int = Field(1600, ge=0)  # iterated RLHF's rounds sample these
    fresh_seed: int | None = 4321  # whose eval set, less eval.jsonl's prompts, is fresh.jsonl
    label_noise: float = Field(0.1, ge=0.0, le=1.0)  # share of preference labels flipped

    @model_validator(mode="before")
    @classmethod
    def _preset_defaults(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("preset", "default") in PRESETS:
            preset = values.get("preset", "default")
            values = {**values}
            if values.get("flaw_rates") is None:
                values["flaw_rates"] = dict(PRESETS[preset])
            if values.get("verbose_rate") is None:
                values["verbose_rate"] = _CHATTER[preset]
            if values.get("clean_chosen") is None:
                values["clean_chosen"] = _CLEAN_CHOSEN[preset]
        return values

    @model_validator(mode="after")
    def _families(self) -> SynthSettings:
        unknown = sorted(set(self.flaw_rates) - set(FAMILIES))
        if unknown or not self.flaw_rates:
            raise ValueError(f"flaw_rates: unknown {unknown or 'empty'} (families: {', '.join(FAMILIES)})")
        if not all(0.0 <= rate <= 1.0 for rate in self.flaw_rates.values()):
            raise ValueError("flaw_rates must be in [0, 1]")
        return self

    @property
    def families(self) -> list[str]:
        return list(self.flaw_rates)


def generate(settings: SynthSettings) -> dict[str, list[dict[str, Any]]]:
    """All the data sets, with prompts disjoint between every two sets and each set in its region.

    Each set draws from its own random stream, so resizing one set leaves the others unchanged
    (except that later prompt sets avoid the prompts earlier ones took).
    """
    used: set[str] = set()

    def stream(name: str) -> random.Random:
        return random.Random(f"{settings.seed}:{name}")

    def draw(rng: random.Random, n: int, region: str = "train") -> list[Task]:
        return _draw_tasks(settings, rng, n, region, used)

    def prompts(tasks: list[Task]) -> list[dict[str, Any]]:
        return [{"prompt": t.prompt, "family": t.family} for t in tasks]

    sets = {"eval": prompts(draw(stream("eval"), settings.eval_prompts, "eval"))}
    rng = stream("sft")
    sets["sft"] = [_demonstration(t, settings, rng) for t in draw(rng, settings.sft)]
    rng = stream("pairs")
    sets["pairs"] = [_pair(t, settings, rng) for t in draw(rng, settings.pairs)]
    sets["pairs"] += [_ranking(t, settings, rng) for t in draw(rng, settings.rankings)]
    sets["ppo"] = prompts(draw(stream("ppo"), settings.ppo_prompts))
    rng = stream("pretrain")
    sets["pretrain"] = [{"text": _document(settings, rng)} for _ in range(settings.pretrain_docs)]
    sets["dev"] = prompts(draw(stream("dev"), settings.dev_prompts, "dev"))
    sets["refresh"] = prompts(draw(stream("refresh"), settings.refresh_prompts, "refresh"))
    if settings.fresh_seed is not None:
        evaluated = {row["prompt"] for row in sets["eval"]}
        other = _draw_tasks(
            settings, random.Random(f"{settings.fresh_seed}:eval"), settings.eval_prompts, "eval", set()
        )
        sets["fresh"] = prompts([t for t in other if t.prompt not in evaluated])
    return sets


def _draw_tasks(
    settings: SynthSettings, rng: random.Random, n: int, region: str, used: set[str]
) -> list[Task]:
    """n tasks of `region` whose prompts are not in `used` (which takes them), families in turn."""
    tasks, attempts = [], 0
    while len(tasks) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ConfigError(
                f"the task families ran out of distinct {region} prompts after {len(tasks)} of {n}; ask for fewer rows"
            )
        task = FAMILIES[settings.families[len(tasks) % len(settings.families)]].make(rng)
        if task.prompt not in used and task.region == region:
            used.add(task.prompt)
            tasks.append(task)
    return tasks


def write(settings: SynthSettings, output: Path) -> dict[str, str]:
    """Write every set as JSONL (the corpus gzipped, with a fixed timestamp) and a settings record."""
    output.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, rows in generate(settings).items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
        path = output / (f"{name}.jsonl.gz" if name == "pretrain" else f"{name}.jsonl")
        path.write_bytes(gzip.compress(text, mtime=0) if name == "pretrain" else text)
        hashes[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    record = {
        "generator": "align.data.synthetic",
        "settings": settings.model_dump(),
        "purpose": PURPOSE,
        "files": hashes,
    }
    (output / "settings.json").write_text(json.dumps(record, indent=2) + "\n")
    return hashes


def _demonstration(task: Task, settings: SynthSettings, rng: random.Random) -> dict[str, Any]:
    answer = task.flaw if rng.random() < settings.flaw_rates[task.family] else task.answer
    if rng.random() < settings.verbose_rate:
        answer = rng.choice(VERBOSE_FORMS).format(answer)
    return {"prompt": task.prompt, "completion": answer, "family": task.family}


def _candidates(task: Task, rng: random.Random) -> list[str]:
    """Responses of every quality, so the pairs teach correct > wrong and concise > chatty. Besides the
    family's flaw, wrong answers include random corruptions like those a small policy makes."""
    ramble = " ".join([task.answer] * rng.randint(2, 3))
    corrupt = _corrupt(task.answer, rng, FAMILIES[task.family].corruptions)
    return [
        task.answer,
        rng.choice(VERBOSE_FORMS).format(task.answer),
        task.flaw,
        corrupt,
        rng.choice(VERBOSE_FORMS).format(rng.choice((task.flaw, corrupt))),
        ramble,
    ]


def _corrupt(answer: str, rng: random.Random, operations: tuple[str, ...]) -> str:
    """The answer with one token substituted, two swapped, one dropped or one inserted (never the answer
    itself)."""
    tokens = answer.split()
    while True:
        edited = list(tokens)
        operation = rng.choice([op for op in operations if len(tokens) > 1 or op not in ("swap", "drop")])
        i = rng.randrange(len(edited))
        if operation in ("substitute", "insert"):
            word = (
                str(rng.randrange(100 if len(edited[i]) > 1 else 10))
                if edited[i].isdigit()
                else (rng.choice(WORDS).upper() if edited[i].isupper() else rng.choice(WORDS))
            )
            edited[i : i + (operation == "substitute")] = [word]
        elif operation == "swap":
            j = (i + 1) % len(edited)
            edited[i], edited[j] = edited[j], edited[i]
        else:
            del edited[i]
        if edited and " ".join(edited) != answer:
            return " ".join(edited)


def _pair(task: Task, settings: SynthSettings, rng: random.Random) -> dict[str, Any]:
    """Two candidates whose gold differs. With `clean_chosen`, that share of pairs compares the clean
    answer with any other, and the rest a chatty right answer with a wrong one (chatty itself half the
    time): most chosen answers then carry chatter, so imitating them does not make a clean policy."""
    if settings.clean_chosen is None:
        while True:
            first, second = rng.sample(_candidates(task, rng), 2)
            a, b = gold_score(task.prompt, first + EOS), gold_score(task.prompt, second + EOS)
            if a != b:
                break
        chosen, rejected = (first, second) if a > b else (second, first)
    else:
        clean, chatty, flaw, corrupt, chatty_wrong, ramble = _candidates(task, rng)
        if rng.random() < settings.clean_chosen:
            chosen, rejected = clean, rng.choice([chatty, flaw, corrupt, chatty_wrong, ramble])
        else:  # half the time chatter on both sides, so chatter alone does not tell which is right
            chosen = chatty
            rejected = chatty_wrong if rng.random() < 0.5 else rng.choice([flaw, corrupt, ramble])
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


CORPUS_FORMS = ("{} gives {}.", "{}: {}.", "Q: {} A: {}")


def _document(settings: SynthSettings, rng: random.Random) -> str:
    """A few sentences of prose that state solved tasks of the train region: skills without the chat
    format, and nothing the held-out regions keep to themselves."""
    lines, count = [], rng.randint(3, 6)
    while len(lines) < count:
        task = FAMILIES[rng.choice(settings.families)].make(rng)
        if task.region == "train":
            statement = task.prompt.rstrip("?.")
            lines.append(rng.choice(CORPUS_FORMS).format(statement, task.answer))
    return "\n".join(lines)
