"""Preference pairs from a policy's own samples, labelled by a judge: `align pairs`, and each round of
iterative DPO.

    align pairs --model runs/tiny/sft --prompts data/synthetic/pairs.jsonl \\
                --reward align.data.synthetic:gold_reward --output runs/tiny/pairs

This is how InstructGPT's comparison data was made: the SFT policy answers each prompt several times and
the answers are ranked (here by an RM or a reward function instead of people; `align label` is the
human route). The judge's best and worst answers become chosen and rejected; prompts whose answers all
score the same give no pair and are counted. The artifact holds `data/pairs.jsonl`, and `align rm` and
`align dpo` take the artifact directory as `--data`, so the lineage reaches from the RM back to the
policy whose answers it learned from.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from typing import Any

from align.artifacts import Artifact, ArtifactWriter
from align.chat import prompt_text
from align.config import PairsConfig, SamplingSettings, to_dict
from align.data import load_data
from align.generation import Sampling, sample_texts
from align.models import load_policy, load_tokenizer, pick_device, record_base, resolve_model
from align.rewards import RewardFn, load_judge


def run(config: PairsConfig, resume: bool = False) -> Artifact:
    started = time.perf_counter()
    prompts = load_data(config.prompts, "prompts", config.limit)
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    device = pick_device()
    judge_artifact, judge = load_judge(config.reward_model, config.reward, device)
    policy = load_policy(source, config.trust_remote_code).to(device)
    with ArtifactWriter(config.output, "pairs", to_dict(config), resume) as writer:
        rows, stats = sample_pairs(
            policy, tokenizer, [r["prompt"] for r in prompts.rows], judge, config.sampling, config.seed
        )
        (writer.work_dir / "data").mkdir()
        with open(writer.work_dir / "data" / "pairs.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        record_base(writer, source)
        if judge_artifact is not None:
            writer.add_parent(judge_artifact)
        writer.extra["reward"] = config.reward or {"stage": "rm"}
        writer.data = prompts.info()
        writer.metrics = {**stats, "seconds": round(time.perf_counter() - started, 1)}
        return writer.commit()


def sample_pairs(
    policy: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    judge: RewardFn,
    sampling: SamplingSettings,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One (chosen, rejected) pair per prompt whose n samples the judge does not score all alike."""
    rendered = [prompt_text(tokenizer, p) for p in prompts]
    repeated = [p for p in rendered for _ in range(sampling.n)]
    decoding = Sampling(temperature=sampling.temperature, max_new_tokens=sampling.max_new_tokens)
    responses = sample_texts(policy, tokenizer, rendered, decoding, sampling.batch_size, seed, sampling.n)
    scores = judge(repeated, responses)
    flip = random.Random(f"{seed}:label_noise")
    rows, flipped = [], 0
    for i, prompt in enumerate(prompts):
        group = range(i * sampling.n, (i + 1) * sampling.n)
        best, worst = max(group, key=scores.__getitem__), min(group, key=scores.__getitem__)
        if scores[best] == scores[worst]:
            continue
        chosen, rejected = best, worst
        if flip.random() < sampling.label_noise:
            chosen, rejected, flipped = worst, best, flipped + 1
        rows.append(
            {
                "prompt": prompt,
                "chosen": _answer(responses[chosen], tokenizer.eos_token),
                "rejected": _answer(responses[rejected], tokenizer.eos_token),
                "chosen_score": scores[chosen],
                "rejected_score": scores[rejected],
            }
        )
    stats = {
        "prompts": len(prompts),
        "pairs": len(rows),
        "ties_skipped": len(prompts) - len(rows),
        "labels_flipped": flipped,
        "sample_score_mean": statistics.fmean(scores),
        "chosen_score_mean": statistics.fmean(r["chosen_score"] for r in rows) if rows else None,
        "rejected_score_mean": statistics.fmean(r["rejected_score"] for r in rows) if rows else None,
    }
    return rows, stats


def _answer(response: str, eos: str) -> str:
    """The answer text; training appends the EOS through the chat template."""
    return response.removesuffix(eos)
