"""Evaluation of a policy on held-out prompts: gold score (synthetic tasks), RM score, KL to a reference.

    align eval --model runs/tiny/ppo --reward-model runs/tiny/rm

The headline figure is the mean gold reward of responses sampled at T=0.7 (greedy decoding hides
flaws that sampling shows), with a 95 % confidence interval, per task family, plus EOS rate and length.
Figures are stored in the artifact's manifest metrics (`gold_*`, `rm_score_*`, `kl_to_reference`). The
KL is the summed per-token log-ratio of the policy's own samples at the evaluation temperature,
against `--reference` or, for a PPO/DPO artifact, the SFT policy it started from.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from align.artifacts import update_metrics
from align.chat import prompt_text
from align.config import EvalConfig
from align.data import load_data
from align.data.synthetic import family_of, gold_reward
from align.generation import Sampling, decode_response, generate_ids, sequence_kl
from align.models import ModelSource, load_policy, load_tokenizer, pick_device, resolve_model
from align.rewards import RewardModel


def run(config: EvalConfig) -> dict[str, Any]:
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source)
    device = pick_device()
    model = load_policy(source).to(device)
    prompts = [
        prompt_text(tokenizer, row["prompt"])
        for row in load_data(config.prompts, "prompts", config.limit).rows
    ]
    synthetic = all(family_of(p) != "unknown" for p in prompts)
    scorer = RewardModel.load(config.reward_model, device=device) if config.reward_model else None
    reference = _reference(config, source)
    decodings = {"sampled": Sampling(temperature=config.temperature, max_new_tokens=config.max_new_tokens)}
    if config.greedy:
        decodings["greedy"] = Sampling(temperature=None, max_new_tokens=config.max_new_tokens)
    results: dict[str, Any] = {"prompts": len(prompts), "temperature": config.temperature}
    for name, sampling in decodings.items():
        ids = generate_ids(model, tokenizer, prompts, sampling, config.batch_size, config.seed)
        responses = [decode_response(tokenizer, row) for row in ids]
        results.update(response_summary(name, responses, tokenizer.eos_token))
        if synthetic:
            results.update(gold_summary(name, prompts, responses))
        if scorer is not None:
            results[f"rm_score_{name}"] = statistics.fmean(scorer.score(prompts, responses))
        if reference is not None and name == "sampled":
            reference_model = load_policy(reference).to(device)
            kls = sequence_kl(
                model, reference_model, tokenizer, prompts, ids, config.temperature, config.batch_size
            )
            results["kl_to_reference"] = statistics.fmean(kls)
            results["reference"] = reference.name
    if config.write_manifest and source.artifact is not None:
        update_metrics(source.artifact, results)
    return results


def _reference(config: EvalConfig, source: ModelSource) -> ModelSource | None:
    """The explicit reference, else the SFT policy an aligned artifact started from."""
    if config.reference:
        return resolve_model(config.reference)
    if source.artifact is not None and source.artifact.stage in ("ppo", "dpo", "grpo", "rloo"):
        parent = source.artifact.parent("sft")
        return ModelSource(str(parent.path), parent) if parent else None
    return None


def response_summary(name: str, responses: list[str], eos: str) -> dict[str, float]:
    return {
        f"eos_rate_{name}": statistics.fmean(r.endswith(eos) for r in responses),
        f"response_chars_{name}": statistics.fmean(len(r) for r in responses),
    }


def gold_summary(name: str, prompts: list[str], responses: list[str]) -> dict[str, Any]:
    scores = gold_reward(prompts, responses)
    by_family: dict[str, list[float]] = defaultdict(list)
    for prompt, score in zip(prompts, scores, strict=True):
        by_family[family_of(prompt)].append(score)
    return {
        f"gold_{name}": statistics.fmean(scores),
        f"gold_{name}_ci95": 1.96 * statistics.pstdev(scores) / math.sqrt(len(scores)),
        f"gold_{name}_by_family": {f: round(statistics.fmean(s), 4) for f, s in sorted(by_family.items())},
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
