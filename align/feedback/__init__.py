"""Human feedback in the loop: `align label` (rank K responses) and `align arena` (blind A/B votes).

The tasks (`tasks.py`) hold what a page asks for and records, `store.py` the append-only judgement log,
`server.py` the two pages and their JSON API; a task also runs headless with a reward as the judge.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from align.decoding.generate import Decoding
from align.errors import ConfigError
from align.feedback.tasks import ArenaTask, FeedbackTask, LabelTask, PolicyAnswers, SavedAnswers


def label_task(
    model: str,
    data: str,
    output: Path,
    k: int,
    limit: int | None,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    annotator: str,
) -> LabelTask:
    if k < 2:
        raise ConfigError("--k must be >= 2")
    policy = PolicyAnswers(model, _decoding(temperature, max_new_tokens), seed)
    return LabelTask(*_inputs(data, limit, output), annotator, sampler=policy, k=k)


def round_label_task(folder: str | Path, annotator: str = "anonymous") -> LabelTask:
    """The label task of a round of `align rounds` whose judge is people: its saved answers, its label
    file, and the items two annotators judge."""
    from align.feedback.store import JudgementLog
    from align.stages.rounds import LABELS, SAMPLES

    folder = Path(folder)
    if not (folder / SAMPLES).is_file():
        raise ConfigError(f"{folder}: no {SAMPLES}; not a round of `align rounds` waiting for labels")
    rows = [json.loads(line) for line in (folder / SAMPLES).read_text(encoding="utf-8").splitlines()]
    return LabelTask(
        [row["prompt"] for row in rows],
        JudgementLog(folder / LABELS),
        annotator,
        sampler=SavedAnswers(rows, rows[0]["eos"]),
        k=len(rows[0]["responses"]),
        double=frozenset(row["item"] for row in rows if row["judgements"] > 1),
    )


def arena_task(
    model_a: str,
    model_b: str,
    data: str,
    output: Path,
    limit: int | None,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    annotator: str,
) -> ArenaTask:
    decoding = _decoding(temperature, max_new_tokens)
    a, b = PolicyAnswers(model_a, decoding, seed), PolicyAnswers(model_b, decoding, seed)
    return ArenaTask(*_inputs(data, limit, output), annotator, a=a, b=b, seed=seed)


def run_task(
    task: FeedbackTask,
    page: str,
    host: str,
    port: int,
    judge: tuple[str | None, str | None, str | None],
    echo: Callable[[str], None],
    annotators: list[str] | None = None,
) -> None:
    """Judge headless when `judge` = (reward function, RM artifact, ensemble objective) names one, else
    serve the page until interrupted."""
    reward, reward_model, objective = judge
    if reward and reward_model:
        raise ConfigError("give --reward or --reward-model as the judge, not both")
    if reward or reward_model:
        from align.feedback.tasks import judge_all
        from align.rewards import load_judge

        echo(json.dumps(judge_all(task, load_judge(reward_model, reward, None, objective or "mean")[1])))
        return
    from align.feedback.server import access_tokens, serve

    progress = task.progress()
    tokens = access_tokens(host, annotators or [], task.annotator)
    links = [f"http://{host}:{port}/?token={token}  ({name})" for token, name in (tokens or {}).items()]
    for link in links or [f"http://{host}:{port}/"]:
        echo(link)
    echo(f"({progress['done']} of {progress['total']} judged; Ctrl-C stops, nothing is lost)")
    serve(task, page, host, port, tokens)


def _decoding(temperature: float, max_new_tokens: int) -> Decoding:
    if temperature <= 0 or max_new_tokens < 1:
        raise ConfigError("--temperature must be > 0 and --max-new-tokens >= 1")
    return Decoding(temperature=temperature, max_new_tokens=max_new_tokens)


def _inputs(data: str, limit: int | None, output: Path) -> tuple:
    from align.data import load_data
    from align.feedback.store import JudgementLog

    prompts = [row["prompt"] for row in load_data(data, "prompts", limit).rows]
    return prompts, JudgementLog(output)
