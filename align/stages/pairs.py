"""Preference pairs from a policy's own samples, labelled by a judge: `align pairs`, and each round of
iterative DPO.

    align pairs --model runs/tiny/sft --prompts data/synthetic/pairs.jsonl \\
                --reward align.data.synthetic:gold_reward --output runs/tiny/pairs

This is how InstructGPT's comparison data was made: the SFT policy answers each prompt several times and
the answers are ranked (here by an RM or a reward function instead of people; `align label` is the
human route). The judge's best and worst answers become chosen and rejected (or, with
`sampling.pairs: all`, every two distinct answers it scores differently, as InstructGPT trained on all
C(K, 2) comparisons of a ranking); prompts whose answers all score the same give no pair and are
counted. The artifact holds `data/pairs.jsonl`, and `align rm` and `align dpo` take the artifact
directory as `--data`, so the lineage reaches from the RM back to the policy whose answers it learned
from.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from typing import Any

from align.artifacts import Artifact, ArtifactWriter
from align.config import PairSampling, PairsConfig, to_dict
from align.data import load_data
from align.decoding.generate import Decoding, sample_texts
from align.models import load_policy, load_tokenizer, pick_device, record_base, resolve_model
from align.rewards import RewardFn, judge_of
from align.text.chat import context_length, fitting_prompts, prompt_text


def run(config: PairsConfig, resume: bool = False) -> Artifact:
    started = time.perf_counter()
    prompts = load_data(config.prompts, "prompts", config.limit)
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    device = pick_device()
    judge_artifact, judge = judge_of(config, device)
    policy = load_policy(source, config.trust_remote_code, inference=True).to(device)
    fitting_prompts(prompts, tokenizer, context_length(policy.config) - config.sampling.max_new_tokens)
    with ArtifactWriter(config.output, "pairs", to_dict(config), resume) as writer:
        rows, stats = sample_pairs(
            policy, tokenizer, [r["prompt"] for r in prompts.rows], judge, config.sampling, config.seed
        )
        (writer.work_dir / "data").mkdir()
        with open(writer.work_dir / "data" / "pairs.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        record_base(writer, source)
        writer.record_judge(judge_artifact, config.reward)
        writer.record_data(prompts)
        writer.metrics = {**stats, "seconds": round(time.perf_counter() - started, 1)}
        return writer.commit()


def sample_pairs(
    policy: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    judge: RewardFn,
    sampling: PairSampling,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pairs from the n samples of each prompt the judge does not score all alike: its best vs worst, or
    (`sampling.pairs: all`) every two distinct answers it scores differently, sharing the prompt's group
    so a held-out split keeps them together."""
    rendered = [prompt_text(tokenizer, p) for p in prompts]
    repeated = [p for p in rendered for _ in range(sampling.n)]
    decoding = Decoding(temperature=sampling.temperature, max_new_tokens=sampling.max_new_tokens)
    responses = sample_texts(policy, tokenizer, rendered, decoding, sampling.batch_size, seed, sampling.n)
    scores = judge(repeated, responses)
    rows, tied, flipped = label_pairs(prompts, responses, scores, sampling, seed, tokenizer.eos_token)
    stats = {
        "prompts": len(prompts),
        "pairs": len(rows),
        "ties_skipped": tied,
        "labels_flipped": flipped,
        "sample_score_mean": statistics.fmean(scores),
        "chosen_score_mean": statistics.fmean(r["chosen_score"] for r in rows) if rows else None,
        "rejected_score_mean": statistics.fmean(r["rejected_score"] for r in rows) if rows else None,
    }
    return rows, stats


def label_pairs(
    prompts: list[Any],
    responses: list[str],
    scores: list[float],
    sampling: PairSampling,
    seed: int,
    eos: str,
) -> tuple[list[dict[str, Any]], int, int]:
    """Pair rows from n scored responses per prompt (prompt i owns [i*n, (i+1)*n)), each label flipped
    with probability `label_noise`.  -> rows, prompts skipped as all tied, labels flipped"""
    flip = random.Random(f"{seed}:label_noise")
    rows, flipped, tied = [], 0, 0
    for i, prompt in enumerate(prompts):
        answers = _distinct_answers(responses, scores, range(i * sampling.n, (i + 1) * sampling.n))
        if answers[0][1] == answers[-1][1]:
            tied += 1
            continue
        compared = (
            [(answers[0], min(answers, key=_score))]
            if sampling.pairs == "best_worst"
            else _ordered_pairs(answers)
        )
        for better, worse in compared:
            chosen, rejected = better, worse
            if flip.random() < sampling.label_noise:
                chosen, rejected, flipped = worse, better, flipped + 1
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": _answer(chosen[0], eos),
                    "rejected": _answer(rejected[0], eos),
                    "chosen_score": chosen[1],
                    "rejected_score": rejected[1],
                    "group": f"prompt-{i}",
                }
            )
    return rows, tied, flipped


def _distinct_answers(responses: list[str], scores: list[float], group: range) -> list[tuple[str, float]]:
    """A prompt's distinct answers with their scores, best first (the first sample wins a tie)."""
    first: dict[str, float] = {}
    for j in group:
        first.setdefault(responses[j], scores[j])
    return sorted(first.items(), key=lambda item: -item[1])


def _score(answer: tuple[str, float]) -> float:
    return answer[1]


def _ordered_pairs(answers: list[tuple[str, float]]) -> list[tuple[tuple[str, float], tuple[str, float]]]:
    return [(a, b) for k, a in enumerate(answers) for b in answers[k + 1 :] if a[1] > b[1]]


def _answer(response: str, eos: str) -> str:
    """The answer text; training appends the EOS through the chat template."""
    return response.removesuffix(eos)
