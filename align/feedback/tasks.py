"""What the label and arena pages ask for and record; the web server and the headless judge share it.

Responses are sampled per item with a seed derived from the item, so a restarted server shows the same
responses for an item it had not finished, and a judgement can be checked against what was shown.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from align.decoding.generate import Decoding, sample_texts
from align.errors import DataError
from align.evaluation import win_rate
from align.feedback.store import JudgementLog
from align.models import load_policy, load_tokenizer, pick_device, resolve_model
from align.text.chat import prompt_text

ScoreFn = Callable[[list[str], list[str]], list[float]]


class LabelJudgement(BaseModel):
    """What the label page may post: exact types (an item is an integer, never `true` or `1.0`), and no
    field beyond these."""

    model_config = ConfigDict(extra="forbid", strict=True)
    item: int
    ranking: list[int] | None = None
    best: int | None = None
    worst: int | None = None
    tie: bool = False
    skip: bool = False


class ArenaVote(BaseModel):
    """What the arena page may post."""

    model_config = ConfigDict(extra="forbid", strict=True)
    item: int
    vote: Literal["left", "right", "tie"]


class PolicyAnswers:
    """A policy that answers one prompt n times, deterministically per (prompt item, seed)."""

    def __init__(self, model: str, decoding: Decoding, seed: int = 0):
        source = resolve_model(model)
        self.name, self.decoding, self.seed = model, decoding, seed
        self.tokenizer = load_tokenizer(source)
        self.model = load_policy(source, inference=True).to(pick_device())

    def render(self, prompt: list[dict[str, str]]) -> str:
        return prompt_text(self.tokenizer, prompt)

    def sample(self, prompt: list[dict[str, str]], n: int, item: int) -> list[str]:
        seed = self.seed * 1_000_003 + item
        return sample_texts(self.model, self.tokenizer, [self.render(prompt)], self.decoding, n, seed, n)

    def strip(self, response: str) -> str:
        """The text a person reads and a pairs file stores (training adds the EOS back)."""
        return response.removesuffix(self.tokenizer.eos_token).strip()


RESERVATION_SECONDS = 600.0  # an item handed to an annotator is theirs this long, then offered again


class SavedAnswers:
    """Answers sampled earlier and saved (a round of `align rounds` whose judge is people): the page shows
    exactly what the policy said then, and no model is loaded."""

    def __init__(self, rows: list[dict[str, Any]], eos: str):
        self.rows, self.eos = rows, eos

    def render(self, prompt: list[dict[str, str]]) -> str:
        return next(row["prompt_text"] for row in self.rows if row["prompt"] == prompt)

    def sample(self, prompt: list[dict[str, str]], n: int, item: int) -> list[str]:
        return self.rows[item]["responses"]

    def strip(self, response: str) -> str:
        return response.removesuffix(self.eos).strip()


@dataclass
class FeedbackTask:
    """Shared bookkeeping: the prompts, the log, progress, the reservations that hand each item to one
    annotator at a time, and one lock around generation and writes."""

    prompts: list[list[dict[str, str]]]
    log: JudgementLog
    annotator: str = "anonymous"
    cache: dict[int, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reserved: dict[int, tuple[str, float]] = field(default_factory=dict)  # item -> (annotator, until)
    clock: Callable[[], float] = time.monotonic

    def judgements_needed(self, item: int) -> int:
        """How many annotators judge the item (two where agreement is measured)."""
        return 1

    def complete(self, item: int) -> bool:
        return len(self.log.annotators(item)) >= self.judgements_needed(item)

    def next_item(self, annotator: str | None = None) -> int | None:
        """The first item that still needs a judgement, that this annotator has not judged and that no
        other annotator holds; it is then reserved for this one."""
        who, now = annotator or self.annotator, self.clock()
        for item in range(len(self.prompts)):
            holder, until = self.reserved.get(item, (who, now))
            if self.complete(item) or who in self.log.annotators(item) or (holder != who and until > now):
                continue
            self.reserved[item] = (who, now + RESERVATION_SECONDS)
            return item
        return None

    def progress(self) -> dict[str, int]:
        return {"done": sum(self.complete(i) for i in range(len(self.prompts))), "total": len(self.prompts)}

    def next_payload(self, annotator: str | None = None) -> dict[str, Any]:
        with self.lock:
            item = self.next_item(annotator)
            if item is None:
                finished = self.progress()["done"] == len(self.prompts)
                reveal = self.reveal() if finished else {"waiting": True}  # others hold the items left
                return {"finished": finished, **self.progress(), **self.summary(), **reveal}
            return {"finished": False, **self.show(item), **self.progress(), **self.summary()}

    def submit(self, payload: dict[str, Any], annotator: str | None = None) -> dict[str, Any]:
        """Record one judgement, under `annotator` (the one a token names) or the task's."""
        who = annotator or self.annotator
        with self.lock:
            item = payload.get("item")
            if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item < len(self.prompts):
                raise DataError(f"judgement: field 'item' must be an item number below {len(self.prompts)}")
            if self.complete(item) or who in self.log.annotators(item):
                raise DataError(f"judgement: item {item} is already judged")
            holder, until = self.reserved.get(item, (who, 0.0))
            if holder != who and until > self.clock():
                raise DataError(f"judgement: item {item} is being judged by another annotator")
            self.log.append(self.record(item, payload), who)
            self.reserved.pop(item, None)
            if self.complete(item):
                self.cache.pop(item, None)
            return {**self.progress(), **self.summary()}

    def show(self, item: int) -> dict[str, Any]:
        raise NotImplementedError

    def record(self, item: int, payload: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        return {}

    def reveal(self) -> dict[str, Any]:
        """What may be shown only once every item is judged."""
        return {}


@dataclass
class LabelTask(FeedbackTask):
    """Rank K responses of one policy per prompt (or pick best and worst, or call a tie, or skip)."""

    judgement: ClassVar[type[BaseModel]] = LabelJudgement
    sampler: PolicyAnswers | SavedAnswers | None = None
    k: int = 4
    double: frozenset[int] = frozenset()  # items two annotators judge, for their agreement

    def judgements_needed(self, item: int) -> int:
        return 2 if item in self.double else 1

    def summary(self) -> dict[str, Any]:
        """How often two annotators of one item order a pair of its responses alike (a tie counts as an
        order), over the pairs both judgements order."""
        agree, compared, items = 0, 0, 0
        for item in self.double:
            judgements = [_relations(row) for row in self.log.rows if row["item"] == item]
            if len(judgements) < 2:
                continue
            first, second = judgements[:2]
            shared = first.keys() & second.keys()
            items += bool(shared)
            compared += len(shared)
            agree += sum(first[pair] == second[pair] for pair in shared)
        if not compared:
            return {}
        return {"agreement": agree / compared, "agreement_items": items, "agreement_pairs": compared}

    def raw_responses(self, item: int) -> list[str]:
        """The K sampled responses, with the EOS text where the model ended (what rewards score)."""
        if item not in self.cache:
            self.cache[item] = {"responses": self.sampler.sample(self.prompts[item], self.k, item)}
        return self.cache[item]["responses"]

    def show(self, item: int) -> dict[str, Any]:
        responses = [self.sampler.strip(r) for r in self.raw_responses(item)]
        return {"item": item, "prompt": self.prompts[item][-1]["content"], "responses": responses}

    def record(self, item: int, payload: dict[str, Any]) -> dict[str, Any]:
        responses = [self.sampler.strip(r) for r in self.raw_responses(item)]
        row: dict[str, Any] = {"item": item, "prompt": self.prompts[item], "group": f"item-{item}"}
        given = [k for k in ("ranking", "best") if payload.get(k) is not None]
        given += [k for k in ("tie", "skip") if payload.get(k) is True]
        if len(given) > 1 or (payload.get("worst") is not None and "best" not in given):
            raise DataError(
                f"judgement: give exactly one of 'ranking', 'best' and 'worst', 'tie' or 'skip' (got {', '.join(given)})"
            )
        if payload.get("tie") or payload.get("skip"):
            return {**row, "judgement": "tie" if payload.get("tie") else "skip", "responses": responses}
        if payload.get("ranking") is not None:
            ranking = payload["ranking"]
            if not isinstance(ranking, list) or sorted(ranking) != list(range(len(responses))):
                raise DataError(
                    f"judgement: field 'ranking' must order all {len(responses)} responses, best first"
                )
            return {**row, "judgement": "ranking", "responses": responses, "ranking": ranking}
        best, worst = payload.get("best"), payload.get("worst")
        if best not in range(len(responses)) or worst not in range(len(responses)) or best == worst:
            raise DataError(
                "judgement: give 'ranking', 'best' and 'worst' (two different responses), 'tie' or 'skip'"
            )
        return {
            **row,
            "judgement": "best_worst",
            "chosen": responses[best],
            "rejected": responses[worst],
            "best": best,
            "worst": worst,
        }


@dataclass
class ArenaTask(FeedbackTask):
    """Blind A/B: one response of each policy per prompt, sides shuffled per prompt, names hidden."""

    judgement: ClassVar[type[BaseModel]] = ArenaVote
    a: PolicyAnswers | None = None
    b: PolicyAnswers | None = None
    seed: int = 0

    def pair(self, item: int) -> dict[str, Any]:
        if item not in self.cache:
            a, b = (
                self.a.sample(self.prompts[item], 1, item)[0],
                self.b.sample(self.prompts[item], 1, item)[0],
            )
            left = random.Random(f"{self.seed}:{item}").choice("ab")
            self.cache[item] = {"a": a, "b": b, "left": left}
        return self.cache[item]

    def sides(self, item: int) -> tuple[str, str]:
        """The raw (left, right) responses as shown."""
        pair = self.pair(item)
        right = "b" if pair["left"] == "a" else "a"
        return pair[pair["left"]], pair[right]

    def texts(self, item: int) -> dict[str, str]:
        pair = self.pair(item)
        return {"a": self.a.strip(pair["a"]), "b": self.b.strip(pair["b"])}

    def show(self, item: int) -> dict[str, Any]:
        texts, left = self.texts(item), self.pair(item)["left"]
        right = "b" if left == "a" else "a"
        return {
            "item": item,
            "prompt": self.prompts[item][-1]["content"],
            "left": texts[left],
            "right": texts[right],
        }

    def record(self, item: int, payload: dict[str, Any]) -> dict[str, Any]:
        vote = payload.get("vote")
        if vote not in ("left", "right", "tie"):
            raise DataError("judgement: field 'vote' must be 'left', 'right' or 'tie'")
        pair, text = self.pair(item), self.texts(item)
        row = {
            "item": item,
            "prompt": self.prompts[item],
            "left": pair["left"],
            "model_a": self.a.name,
            "model_b": self.b.name,
        }
        if vote == "tie":
            return {
                **row,
                "judgement": "tie",
                "winner": "tie",
                "response_a": text["a"],
                "response_b": text["b"],
            }
        winner = pair["left"] if vote == "left" else ("b" if pair["left"] == "a" else "a")
        loser = "b" if winner == "a" else "a"
        return {**row, "judgement": "vote", "winner": winner, "chosen": text[winner], "rejected": text[loser]}

    def reveal(self) -> dict[str, Any]:
        return {"model_a": self.a.name, "model_b": self.b.name}

    def summary(self) -> dict[str, Any]:
        """B's win rate against A over the votes so far (ties count half), with a 95 % interval."""
        winners = [row["winner"] for row in self.log.rows if "winner" in row]
        if not winners:
            return {"votes": 0}
        # win_rate compares two score lists: B's outcome (1, 0.5, 0) against an even 0.5.
        outcome = [1.0 if w == "b" else 0.5 if w == "tie" else 0.0 for w in winners]
        figures = win_rate(outcome, [0.5] * len(outcome))
        return {
            "votes": len(winners),
            "b_win_rate": figures["win_rate"],
            "ci95": figures["ci95"],
            "a_wins": figures["losses"],
            "b_wins": figures["wins"],
            "ties": figures["ties"],
        }


def _relations(row: dict[str, Any]) -> dict[tuple[int, int], int]:
    """What a label row says of each pair (i < j) of responses: 1 (i better), -1 (j better), 0 (tie)."""
    if row.get("judgement") == "ranking":
        place = {response: rank for rank, response in enumerate(row["ranking"])}
        return {(i, j): 1 if place[i] < place[j] else -1 for i in place for j in place if i < j}
    if row.get("judgement") == "tie":
        count = len(row["responses"])
        return {(i, j): 0 for i in range(count) for j in range(i + 1, count)}
    if row.get("judgement") == "best_worst":
        best, worst = row["best"], row["worst"]
        return {(min(best, worst), max(best, worst)): 1 if best < worst else -1}
    return {}


def judge_all(task: FeedbackTask, score: ScoreFn) -> dict[str, Any]:
    """Headless: judge every remaining item with a reward (function or RM) instead of a person."""
    while (item := task.next_item()) is not None:
        prompt = task.prompts[item]
        if isinstance(task, LabelTask):
            rendered, responses = task.sampler.render(prompt), task.raw_responses(item)
            scores = score([rendered] * len(responses), responses)
            order = sorted(range(len(scores)), key=lambda i: -scores[i])
            payload = {"tie": True} if len(set(scores)) == 1 else {"ranking": order}
        else:
            rendered = task.a.render(prompt)
            left, right = score([rendered, rendered], list(task.sides(item)))
            payload = {"vote": "tie" if left == right else "left" if left > right else "right"}
        task.submit({"item": item, **payload})
    return {**task.progress(), **task.summary()}
