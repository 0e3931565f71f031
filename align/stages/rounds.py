"""Iterated RLHF: the reward model refreshed on what the policy now says, round after round.

    align rounds --recipe recipes/tiny/rounds.yaml

Round 0 is PPO against the given RM. Each refresh round then:
1. the current policy answers a fresh slice of `refresh_prompts` (`sampling.n` answers each);
2. the judge ranks them (the simulated annotators: a reward function with label noise), and a
   `holdout` share of the prompts' pairs is kept aside;
3. the current RM's accuracy on those held-out pairs is measured against its accuracy on its own
   held-out pairs: far below means the RM has a blind spot on this policy's outputs;
4. a new RM is trained from the SFT policy on the original pairs and every round's training pairs so
   far, and measured on the same held-out pairs;
5. PPO runs against it, continuing the last round's LoRA adapter (or, with `restart`, from the SFT
   policy), with its KL always to the SFT policy.

Each round's artifacts sit under the run as `round-<k>/{pairs,rm,ppo}`, each committed on its own, so
`--resume` reuses every finished one and resumes an interrupted PPO or RM from its last checkpoint.
Each round samples and trains with its own seed (`seed + 1000 k`) and names its pair groups
`round-<k>/...`. The artifact's policy is the last round's (`model_dir` points at its adapter).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from align.artifacts import Artifact, ArtifactWriter, load_artifact, sha256_file
from align.config import PairsConfig, PPOConfig, RMConfig, RoundsConfig, build_config, to_dict
from align.data import load_data
from align.data.splits import by_group, hold_out
from align.errors import ConfigError, DataError, Paused
from align.evaluation import reward_model_report
from align.health import blind_spot
from align.models import record_base, resolve_model
from align.registry import STAGES
from align.rewards import RewardModel
from align.text.chat import context_length, fitting_prompts
from align.text.encoding import tokenize_pairs

PEOPLE = "people"  # the judge that is a team of annotators in `align label --round`
SAMPLES, LABELS = "samples.jsonl", "labels.jsonl"  # a people round's saved answers and their labels


def run(config: RoundsConfig, resume: bool = False) -> Artifact:
    sft = resolve_model(config.model)
    initial = reward_model = load_artifact(config.reward_model, expect_stage="rm")
    refresh = _refresh_slices(config)
    original = _jsonl(load_data(config.data, "pairs").rows)
    partial = Path(f"{config.output}.partial")
    if not resume and any(partial.glob(f"round-*/{LABELS}")):
        raise ConfigError(f"{partial} holds people's labels: continue it with --resume, or move it away")
    with ArtifactWriter(config.output, "rounds", to_dict(config), resume) as writer:
        policy = _ppo(config, writer.work_dir, 0, reward_model, None, resume)
        history = [_round_record(0, policy, reward_model, None)]
        learned = original  # every pair this run's RMs have learned from, as they counted
        for k, prompts in enumerate(refresh, start=1):
            folder = writer.work_dir / f"round-{k}"
            judge = _people_pairs if config.judge == PEOPLE else _judged_pairs
            prompts_file = _write(folder / "prompts.jsonl", _jsonl(prompts))
            judged, judging = judge(config, folder, k, policy, prompts_file, resume)
            train, held = _split(config, k, judged, len(prompts))
            held_file = _write(folder / "held-out.jsonl", _jsonl(held))
            before = pair_accuracy(reward_model, held_file)
            fresh = _jsonl(train) * config.refresh_weight
            train_file = _write(folder / "rm-train.jsonl", _rm_rows(config, k, learned, fresh))
            reward_model = _rm(config, folder, k, train_file, held_file, reward_model, resume)
            learned = learned + fresh
            figures = {
                "held_out_pairs": len(held),
                "rm_accuracy_own_held_out": _own_accuracy(history[-1]["rm_artifact"]),
                "rm_accuracy_before": before,
                "rm_accuracy_after": _own_accuracy(reward_model),  # its held-out pairs are these
            }
            policy = _ppo(config, writer.work_dir, k, reward_model, policy, resume)
            history.append(_round_record(k, policy, reward_model, {**judging, **figures}))
        record_base(writer, sft)
        writer.add_parent(initial)
        writer.extra["model_format"] = "lora"
        writer.extra["model_dir"] = f"{policy.path.relative_to(writer.work_dir).as_posix()}/model"
        writer.metrics = summary(history)
        return writer.commit()


def summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Per round: the comparisons it bought, the blind-spot figures and its PPO's last figures; and the
    last round's PPO figures as the run's own (Health and report read them)."""
    rounds = [{key: value for key, value in entry.items() if key != "rm_artifact"} for entry in history]
    final = dict(history[-1]["ppo_metrics"])
    final["rounds"] = rounds
    final["comparisons"] = sum(entry.get("pairs", 0) for entry in rounds)
    final["blind_spot"] = any(blind_spot(entry) for entry in rounds)
    return final


def pair_accuracy(reward_model: Artifact, pairs_file: Path) -> float:
    """The share of a pairs file's pairs that the RM ranks as the judge did."""
    scorer = RewardModel.load(reward_model, "cpu")
    context = context_length(scorer.model.config)  # a longer pair keeps its end, as the RM trained
    rows = tokenize_pairs(load_data(str(pairs_file), "pairs"), scorer.tokenizer, context, 0.0, "keep_end")
    return round(reward_model_report(scorer, rows, "held")["held_accuracy"], 4)


def _round_record(
    k: int, policy: Artifact, reward_model: Artifact, refresh: dict[str, Any] | None
) -> dict[str, Any]:
    entry: dict[str, Any] = {"round": k, "ppo": f"round-{k}/ppo", "rm_artifact": reward_model}
    if refresh is not None:
        entry.update(rm=f"round-{k}/rm", pairs_artifact=f"round-{k}/pairs", **refresh)
    metrics = policy.metrics
    entry["ppo_metrics"] = {
        key: value for key, value in metrics.items() if not isinstance(value, (dict, list))
    }
    return entry


def _own_accuracy(reward_model: Artifact) -> float | None:
    value = reward_model.metrics.get("eval_accuracy")
    return None if value is None else round(value, 4)


def _split(
    config: RoundsConfig, k: int, judged: list[dict[str, Any]], prompts: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A round's judged pairs as (train, held out): `holdout` of its prompts, each with all its pairs."""
    groups = len({row["group"] for row in judged})
    if groups < 2:
        raise DataError(
            f"round {k}: the judge told apart the answers of {groups} of {prompts} prompts; a refresh needs "
            "pairs of at least 2 (more prompts, or more answers each)"
        )
    return hold_out(judged, config.holdout, config.seed + 1000 * k, by_group)


def _rm_rows(config: RoundsConfig, k: int, learned: list[str], fresh: list[str]) -> list[str]:
    """The refreshed RM's data: every pair so far (an RM from the SFT policy), or this round's pairs and
    as many earlier ones replayed (the last round's RM trained further), so it keeps what it knew."""
    if config.rm_init == "sft":
        return learned + fresh
    replay = random.Random(f"{config.seed + 1000 * k}:replay").sample(learned, min(len(fresh), len(learned)))
    return fresh + replay


def _refresh_slices(config: RoundsConfig) -> list[list[dict[str, Any]]]:
    """A fresh, disjoint slice of the refresh pool per round."""
    if not config.rounds:
        return []
    pool = load_data(config.refresh_prompts, "prompts").rows
    size = config.sampling.prompts_per_round or len(pool) // config.rounds
    if size * config.rounds > len(pool):
        raise ConfigError(
            f"{config.refresh_prompts}: {len(pool)} prompts, fewer than {config.rounds} rounds x "
            f"sampling.prompts_per_round={size}"
        )
    return [pool[k * size : (k + 1) * size] for k in range(config.rounds)]


def _judged_pairs(
    config: RoundsConfig, folder: Path, k: int, policy: Artifact, prompts_file: Path, resume: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The current policy's answers to this round's prompts, ranked by the judge; groups named per round."""
    pairs = PairsConfig(
        model=config.model if config.samples_from == "sft" else str(policy.path),
        prompts=str(prompts_file),
        reward=config.judge,
        output=str(folder / "pairs"),
        seed=config.seed + 1000 * k,
        sampling=config.sampling,
        trust_remote_code=config.trust_remote_code,
    )
    artifact = _stage("pairs", pairs, resume)
    rows = load_data(str(artifact.path), "pairs").rows
    for row in rows:
        row["group"] = f"round-{k}/{row['group']}"
    return rows, artifact.metrics


def _people_pairs(
    config: RoundsConfig, folder: Path, k: int, policy: Artifact, prompts_file: Path, resume: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """People rank the policy's answers in `align label --round FOLDER`: the answers are sampled once and
    saved, the run pauses until every item has its judgements (two annotators for `double_share` of
    them), then the labels, identified by their sha256, become the round's pairs."""
    from align.feedback import round_label_task

    samples = folder / SAMPLES
    if not samples.exists():
        _save_samples(config, samples, k, policy, prompts_file)
    task = round_label_task(folder)
    progress = task.progress()
    if progress["done"] < progress["total"]:
        raise Paused(
            f"round {k}: {progress['done']} of {progress['total']} items labelled; label them with: "
            f"align label --round {folder} (--annotators a,b,c shares the page under tokens), then "
            "rerun with --resume"
        )
    labels = folder / LABELS
    rows = load_data(str(labels), "pairs").rows
    for row in rows:
        row["group"] = f"round-{k}/{row['group']}"
    figures = {"pairs": len(rows), "items": progress["total"], "labels_sha256": sha256_file(labels)}
    return rows, {**figures, **task.summary()}


def _save_samples(config: RoundsConfig, path: Path, k: int, policy: Artifact, prompts_file: Path) -> None:
    """The policy's `sampling.n` answers to each prompt that fits its context with room for them (as
    `align pairs` keeps), and which items two annotators judge."""
    from align.decoding.generate import Decoding, sample_texts
    from align.models import load_policy, load_tokenizer

    source = resolve_model(str(policy.path))
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    model = load_policy(source, config.trust_remote_code, inference=True)
    sampling = config.sampling
    data = load_data(str(prompts_file), "prompts")
    rendered = fitting_prompts(data, tokenizer, context_length(model.config) - sampling.max_new_tokens)
    prompts = data.rows
    if not prompts:
        raise DataError(
            f"{prompts_file}: no prompt of round {k} leaves room for {sampling.max_new_tokens} tokens"
        )
    decoding = Decoding(temperature=sampling.temperature, max_new_tokens=sampling.max_new_tokens)
    seed = config.seed + 1000 * k
    answers = sample_texts(model, tokenizer, rendered, decoding, sampling.batch_size, seed, sampling.n)
    double = random.Random(f"{seed}:double").sample(
        range(len(prompts)), round(config.double_share * len(prompts))
    )
    rows = [
        {
            "item": i,
            "prompt": row["prompt"],
            "prompt_text": text,
            "responses": answers[i * sampling.n : (i + 1) * sampling.n],
            "judgements": 2 if i in double else 1,
            "eos": tokenizer.eos_token,
        }
        for i, (row, text) in enumerate(zip(prompts, rendered, strict=True))
    ]
    _write(path.with_suffix(".tmp"), _jsonl(rows)).replace(path)


def _rm(
    config: RoundsConfig, folder: Path, k: int, train: Path, held: Path, previous: Artifact, resume: bool
) -> Artifact:
    flags = {
        "model": config.model,
        "data": str(train),
        "eval_data": str(held),
        "output": str(folder / "rm"),
        "init_reward_model": str(previous.path) if config.rm_init == "previous" else None,
        "train.seed": config.seed + 1000 * k,
        "trust_remote_code": config.trust_remote_code,
    }
    settings = build_config(RMConfig, config.rm_recipe, {**config.overrides.get("rm", {}), **flags})
    return _stage("rm", settings, resume)


def _ppo(
    config: RoundsConfig, root: Path, k: int, reward_model: Artifact, previous: Artifact | None, resume: bool
) -> Artifact:
    flags = {
        "model": config.model,
        "reward_model": str(reward_model.path),
        "prompts": config.prompts,
        "output": str(root / f"round-{k}" / "ppo"),
        "init_adapter": None if previous is None or config.restart else str(previous.path),
        "train.max_steps": config.steps[k],
        "train.seed": config.seed + 1000 * k,
        "trust_remote_code": config.trust_remote_code,
    }
    settings = build_config(PPOConfig, config.ppo_recipe, {**config.overrides.get("ppo", {}), **flags})
    return _stage("ppo", settings, resume)


def _stage(name: str, config: Any, resume: bool) -> Artifact:
    """A round's stage: reused when a resumed run finds it committed with this config, else run."""
    from align.pipeline import up_to_date

    output = Path(config.output)
    if resume and up_to_date(output, config):
        return load_artifact(output)
    return STAGES[name].run(config, resume)


def _jsonl(rows: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(row) + "\n" for row in rows]


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
    return path
