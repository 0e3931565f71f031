"""Evaluation of a policy on held-out synthetic prompts: the gold score, sampled and greedy.

    align eval --model runs/tiny/sft

The headline figure is the mean gold reward of responses sampled at T=0.7 (greedy decoding hides
flaws that sampling shows), with a 95 % confidence interval, per task family, plus EOS rate and length.
Figures are stored in the artifact's manifest metrics under keys starting with `gold`.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from align.artifacts import is_artifact, update_metrics
from align.chat import prompt_text
from align.config import EvalConfig
from align.data import load_data
from align.data.synthetic import family_of, gold_reward
from align.generation import Sampling, generate
from align.models import load_policy, load_tokenizer, pick_device, resolve_model


def run(config: EvalConfig) -> dict[str, Any]:
    prompts = [row["prompt"] for row in load_data(config.prompts, "prompts", config.limit).rows]
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source)
    model = load_policy(source).to(pick_device())
    rendered = [prompt_text(tokenizer, p) for p in prompts]
    decodings = {"sampled": Sampling(temperature=config.temperature, max_new_tokens=config.max_new_tokens)}
    if config.greedy:
        decodings["greedy"] = Sampling(temperature=None, max_new_tokens=config.max_new_tokens)
    results: dict[str, Any] = {"prompts": len(prompts), "temperature": config.temperature}
    for name, sampling in decodings.items():
        responses = generate(model, tokenizer, prompts, sampling, config.batch_size, config.seed)
        results.update(gold_summary(name, rendered, responses, tokenizer.eos_token))
    if config.write_manifest and source.artifact is not None and is_artifact(source.artifact.path):
        update_metrics(source.artifact, results)
    return results


def gold_summary(name: str, prompts: list[str], responses: list[str], eos: str) -> dict[str, Any]:
    scores = gold_reward(prompts, responses)
    by_family: dict[str, list[float]] = defaultdict(list)
    for prompt, score in zip(prompts, scores, strict=True):
        by_family[family_of(prompt)].append(score)
    return {
        f"gold_{name}": statistics.fmean(scores),
        f"gold_{name}_ci95": 1.96 * statistics.pstdev(scores) / math.sqrt(len(scores)),
        f"gold_{name}_by_family": {f: round(statistics.fmean(s), 4) for f, s in sorted(by_family.items())},
        f"eos_rate_{name}": statistics.fmean(r.endswith(eos) for r in responses),
        f"response_chars_{name}": statistics.fmean(len(r) for r in responses),
    }


def reward_model_report(scorer: Any, rows: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """Pairwise accuracy, margins, calibration and length bias of a reward model on held-out pairs.

    `rows` carry `prompt_text`, `chosen_text` and `rejected_text`. On synthetic pairs the accuracy is
    also measured against the gold reward's order (`gold_accuracy`), counting only pairs whose gold
    scores differ, since the labels themselves carry deliberate noise.
    """
    if not rows:
        return {}
    prompts = [r["prompt_text"] for r in rows]
    chosen_texts, rejected_texts = [r["chosen_text"] for r in rows], [r["rejected_text"] for r in rows]
    chosen, rejected = scorer.score(prompts, chosen_texts), scorer.score(prompts, rejected_texts)
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    report: dict[str, Any] = {
        f"{prefix}_accuracy": statistics.fmean(m > 0 for m in margins),
        f"{prefix}_pairs": len(rows),
        f"{prefix}_margin": statistics.fmean(margins),
        f"{prefix}_chosen_mean": statistics.fmean(chosen),
        f"{prefix}_chosen_std": statistics.pstdev(chosen),
        f"{prefix}_rejected_mean": statistics.fmean(rejected),
        f"{prefix}_rejected_std": statistics.pstdev(rejected),
        f"{prefix}_calibration": _accuracy_by_margin(margins),
    }
    lengths = [len(t) for t in chosen_texts + rejected_texts]
    report[f"{prefix}_length_correlation"] = _correlation(chosen + rejected, lengths)
    longer_rejected = [
        m > 0 for m, c, r in zip(margins, chosen_texts, rejected_texts, strict=True) if len(r) > len(c)
    ]
    if longer_rejected:
        report[f"{prefix}_accuracy_longer_rejected"] = statistics.fmean(longer_rejected)
    if all(family_of(p) != "unknown" for p in prompts):
        gold_c, gold_r = gold_reward(prompts, chosen_texts), gold_reward(prompts, rejected_texts)
        agree = [(m > 0) == (gc > gr) for m, gc, gr in zip(margins, gold_c, gold_r, strict=True) if gc != gr]
        report[f"{prefix}_gold_accuracy"] = statistics.fmean(agree) if agree else None
        report[f"{prefix}_gold_pairs"] = len(agree)
        report[f"{prefix}_gold_ties_excluded"] = len(rows) - len(agree)
    return report


def _accuracy_by_margin(margins: list[float], buckets: int = 4) -> dict[str, float]:
    """Accuracy per quartile of |margin|: a calibrated model is surer where it is right more often."""
    ordered = sorted(margins, key=abs)
    size = max(1, len(ordered) // buckets)
    result = {}
    for b in range(buckets):
        chunk = ordered[b * size : (b + 1) * size if b < buckets - 1 else None]
        if chunk:
            result[f"|margin|<={abs(chunk[-1]):.2f}"] = round(statistics.fmean(m > 0 for m in chunk), 4)
    return result


def _correlation(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 2 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return None
    return statistics.correlation(xs, ys)
