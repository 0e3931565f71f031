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
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import torch

from align.artifacts import record_evaluation
from align.config import EvalConfig
from align.data import load_data
from align.data.synthetic import FAMILIES, family_of, flaw_of, gold_reward, parse_task
from align.decoding.generate import Decoding, decode_response, generate_ids, sample_texts
from align.decoding.logprobs import sequence_kl
from align.errors import DataError
from align.models import ModelSource, load_policy, load_tokenizer, pick_device, resolve_model
from align.registry import STAGES
from align.rewards import RewardModel
from align.text.chat import prompt_text


def run(config: EvalConfig) -> dict[str, Any]:
    """The figures of one policy (see the module docstring)."""
    return _evaluate(config, _scorer(config, config.reward_model))[0]


def compare(config: EvalConfig, models: list[str], judge: str | None = None) -> dict[str, Any]:
    """Evaluate several policies on the same prompts, then the win rate of each later one against the
    first, judged per prompt on the sampled responses by `judge` (an RM artifact; default the config's
    RM, else the gold reward of synthetic prompts)."""
    scorer = _scorer(config, config.reward_model)  # loaded once for every policy
    results, responses = {}, {}
    for model in models:
        results[model], prompts, responses[model] = _evaluate(
            config.model_copy(update={"model": model}), scorer
        )
    judge = judge or config.reward_model
    if len(models) == 1:
        return {"policies": results}
    if judge:
        score = (scorer if judge == config.reward_model else _scorer(config, judge)).score
    elif all(family_of(p) != "unknown" for p in prompts):
        score, judge = gold_reward, "gold"
    else:
        return {"policies": results}
    first = score(prompts, responses[models[0]])
    win_rates = {
        f"{model} vs {models[0]}": win_rate(score(prompts, responses[model]), first) for model in models[1:]
    }
    return {"policies": results, "judge": judge, "win_rate": win_rates}


def _scorer(config: EvalConfig, reward_model: str | None) -> RewardModel | None:
    if not reward_model:
        return None
    return RewardModel.load(reward_model, pick_device(), config.ensemble_objective, config.uwo_penalty)


def _evaluate(config: EvalConfig, scorer: RewardModel | None) -> tuple[dict[str, Any], list[str], list[str]]:
    """Figures, rendered prompts and sampled responses of one policy, scored by `scorer` (the config's RM)."""
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source)
    device = pick_device()
    model = load_policy(source, inference=True).to(device)
    data = load_data(config.prompts, "prompts", config.limit)
    rows = data.rows
    prompts = [prompt_text(tokenizer, row["prompt"]) for row in rows]
    synthetic = all(family_of(p) != "unknown" for p in prompts)
    reference = _reference(config, source)
    decodings = {"sampled": Decoding(temperature=config.temperature, max_new_tokens=config.max_new_tokens)}
    if config.greedy:
        decodings["greedy"] = Decoding(temperature=None, max_new_tokens=config.max_new_tokens)
    references = _reference_answers(config, prompts, synthetic)
    results: dict[str, Any] = {"prompts": len(prompts), "temperature": config.temperature}
    sampled: list[str] = []
    for name, sampling in decodings.items():
        ids = generate_ids(model, tokenizer, prompts, sampling, config.batch_size, config.seed)
        responses = [decode_response(tokenizer, row) for row in ids]
        sampled = sampled or responses
        results.update(response_summary(name, responses, tokenizer.eos_token))
        if synthetic:
            results.update(gold_summary(name, prompts, responses))
        if scorer is not None:
            results[f"rm_score_{name}"] = statistics.fmean(scorer.score(prompts, responses))
        if references is not None:
            results.update(overlap_summary(name, responses, references, tokenizer.eos_token))
        if reference is not None and name == "sampled":
            reference_model = load_policy(reference, inference=True).to(device)
            kls = sequence_kl(
                model, reference_model, tokenizer, prompts, ids, config.temperature, config.batch_size
            )
            results["kl_to_reference"] = statistics.fmean(kls)
            results["reference"] = reference.name
    if scorer is not None:
        for n in config.best_of_n:
            pick = ("best", "rm_score", scorer.score)
            results.update(best_of_n(model, tokenizer, prompts, pick, n, config, synthetic))
    for n in config.shortest_of_n:
        pick = ("shortest", "shortness", _shortness)
        results.update(best_of_n(model, tokenizer, prompts, pick, n, config, synthetic))
    if config.perplexity_data:
        texts = [row["text"] for row in load_data(config.perplexity_data, "text", config.limit).rows]
        results["text_perplexity"] = perplexity(model, tokenizer, texts, config.batch_size)
    if config.record and source.artifact is not None:
        record_evaluation(source.artifact, evaluated(config, data), results)
    return results, prompts, sampled


def evaluated(config: EvalConfig, data: Any) -> dict[str, Any]:
    """What an evaluation's figures are of: the prompt set (by sha256), how many, how decoded; `default`
    when it is the default eval set, whose figures an artifact's headline metrics quote."""
    return {
        "prompts": data.source.name,
        "prompts_sha256": data.source.sha256,
        "rows": len(data.rows),
        "limit": config.limit,
        "temperature": config.temperature,
        "greedy": config.greedy,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.seed,
        "default": config.prompts == EvalConfig.model_fields["prompts"].default,
    }


def best_of_n_kl(n: int) -> float:
    """KL of best-of-n to the sampling policy, for answers with distinct scores (Stiennon et al. 2020)."""
    return math.log(n) - (n - 1) / n


def best_of_n(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    pick: tuple[str, str, Callable[[list[str], list[str]], list[float]]],
    n: int,
    config: EvalConfig,
    synthetic: bool,
) -> dict[str, float]:
    """Sample n responses per prompt, keep the one `pick` = (name, score name, scorer) scores highest:
    by the RM (`best`), the no-training baseline every method must beat at the same KL; by shortness
    (`shortest`, minus the characters), whether saying less alone would win. Its KL to the sampling
    policy is log n - (n-1)/n (analytic)."""
    name, score_name, score = pick
    sampling = Decoding(temperature=config.temperature, max_new_tokens=config.max_new_tokens)
    repeated = [p for p in prompts for _ in range(n)]
    responses = sample_texts(model, tokenizer, prompts, sampling, config.batch_size, config.seed + 1, n)
    scores = score(repeated, responses)
    chosen = [max(range(i * n, (i + 1) * n), key=scores.__getitem__) for i in range(len(prompts))]
    figures = {
        f"{name}_of_{n}_{score_name}": statistics.fmean(scores[i] for i in chosen),
        f"{name}_of_{n}_pool_{score_name}": statistics.fmean(scores),  # what the pick was drawn from
        f"{name}_of_{n}_kl": best_of_n_kl(n),
    }
    if synthetic:
        figures[f"{name}_of_{n}_gold"] = statistics.fmean(
            gold_reward(prompts, [responses[i] for i in chosen])
        )
    return figures


def _shortness(prompts: list[str], responses: list[str]) -> list[float]:
    return [-float(len(r)) for r in responses]


@torch.no_grad()
def perplexity(model: Any, tokenizer: Any, texts: list[str], batch_size: int = 32) -> float:
    """exp of the mean next-token loss over every token of the texts (each cut to the context length)."""
    device = next(model.parameters()).device
    limit = getattr(model.config, "n_positions", None) or tokenizer.model_max_length
    total_loss, total_tokens = 0.0, 0
    model.eval()
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            padding_side="right",
            truncation=True,
            max_length=limit,
        ).to(device)
        logits = model(**batch).logits[:, :-1].float()
        targets = batch["input_ids"][:, 1:]
        mask = batch["attention_mask"][:, 1:].bool()
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        total_loss += losses[mask].sum().item()
        total_tokens += int(mask.sum())
    return math.exp(total_loss / max(total_tokens, 1))


def win_rate(scores: list[float], baseline: list[float]) -> dict[str, float]:
    """Share of prompts where `scores` beats `baseline` (ties count half), with a 95 % interval."""
    outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline, strict=True)]
    rate = statistics.fmean(outcomes)
    return {
        "win_rate": rate,
        "ci95": ci95(outcomes),
        "wins": sum(o == 1.0 for o in outcomes),
        "ties": sum(o == 0.5 for o in outcomes),
        "losses": sum(o == 0.0 for o in outcomes),
    }


def overlap_summary(name: str, responses: list[str], references: list[str], eos: str) -> dict[str, float]:
    """Corpus BLEU (sacrebleu) and mean ROUGE-L F1 (rouge-score) of the responses against references."""
    import sacrebleu
    from rouge_score import rouge_scorer

    hypotheses = [r.removesuffix(eos).strip() for r in responses]
    rouge = rouge_scorer.RougeScorer(["rougeL"])
    return {
        f"bleu_{name}": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        f"rougeL_{name}": statistics.fmean(
            rouge.score(ref, hyp)["rougeL"].fmeasure for ref, hyp in zip(references, hypotheses, strict=True)
        ),
    }


def _reference_answers(config: EvalConfig, prompts: list[str], synthetic: bool) -> list[str] | None:
    """The gold answers of synthetic prompts, else the completions of a prompts file that has them."""
    if synthetic:
        return [parse_task(p)[1] for p in prompts]  # type: ignore[index]
    try:
        rows = load_data(config.prompts, "sft", config.limit).rows
    except DataError:
        return None
    return [row["completion"][-1]["content"] for row in rows] if len(rows) == len(prompts) else None


def _reference(config: EvalConfig, source: ModelSource) -> ModelSource | None:
    """The explicit reference, else the SFT policy an aligned artifact started from."""
    if config.reference:
        return resolve_model(config.reference)
    stage = STAGES.get(source.artifact.stage) if source.artifact is not None else None
    if stage is not None and stage.aligns_a_policy:
        parent = source.artifact.parent("sft")
        return ModelSource(str(parent.path), parent) if parent else None
    return None


def response_summary(name: str, responses: list[str], eos: str) -> dict[str, float]:
    return {
        f"eos_rate_{name}": statistics.fmean(r.endswith(eos) for r in responses),
        f"response_chars_{name}": statistics.fmean(len(r) for r in responses),
    }


def gold_summary(name: str, prompts: list[str], responses: list[str]) -> dict[str, Any]:
    """Mean gold with its 95 % interval, overall and per family; the share of responses by what they did
    (`flaw_of`: clean, chatter, the family's flaw...), so a gain shows which flaw it removed; and per
    family the share of its prompts answered with that family's own flaw (harmful: compliance), with
    its interval, so "did not rise" can be tested against SFT."""
    scores = gold_reward(prompts, responses)
    flaws = [flaw_of(p, r) for p, r in zip(prompts, responses, strict=True)]
    by_family: dict[str, list[float]] = defaultdict(list)
    own_flaw: dict[str, list[float]] = defaultdict(list)
    for prompt, score, flaw in zip(prompts, scores, flaws, strict=True):
        family = family_of(prompt)
        by_family[family].append(score)
        if family in FAMILIES:
            own_flaw[family].append(float(flaw == FAMILIES[family].flaw_kind))
    counts = Counter(flaws)
    return {
        f"gold_{name}": statistics.fmean(scores),
        f"gold_{name}_ci95": ci95(scores),
        f"gold_{name}_by_family": _rounded({f: statistics.fmean(s) for f, s in sorted(by_family.items())}),
        f"gold_{name}_by_family_ci95": _rounded({f: ci95(s) for f, s in sorted(by_family.items())}),
        f"flaws_{name}": {kind: round(count / len(prompts), 4) for kind, count in counts.most_common()},
        f"own_flaw_{name}_by_family": _rounded({f: statistics.fmean(s) for f, s in sorted(own_flaw.items())}),
        f"own_flaw_{name}_by_family_ci95": _rounded({f: ci95(s) for f, s in sorted(own_flaw.items())}),
    }


def beats(policy: dict[str, Any], baseline: dict[str, Any], name: str = "sampled") -> bool:
    """The policy's gold gain over the baseline passes the 95 % interval of a difference of two
    independent means: the rule every "beats" of the README, the demo and the studies uses."""
    gain = policy[f"gold_{name}"] - baseline[f"gold_{name}"]
    return gain > math.hypot(policy[f"gold_{name}_ci95"], baseline[f"gold_{name}_ci95"])


def ci95(values: list[float]) -> float:
    """Half-width of the normal 95 % interval of the mean."""
    return 1.96 * statistics.pstdev(values) / math.sqrt(len(values))


def _rounded(figures: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 4) for key, value in figures.items()}


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


def print_results(results: dict[str, Any]) -> None:
    """`compare`'s figures on the terminal: a table per policy (gold, its interval, RM score, EOS rate,
    gold per family), the KL, the responses by what they did, the extras, then the win rates."""
    from rich.table import Table

    from align.logs import console as make_console

    console = make_console()
    for model, figures in results["policies"].items():
        families = list(figures.get("gold_sampled_by_family", {}))
        table = Table("decoding", "gold", "±95%", "RM score", "EOS rate", *families, title=model)
        for name in ("sampled", "greedy"):
            if f"eos_rate_{name}" in figures:
                table.add_row(name, *_decoding_row(figures, name))
        console.print(table)
        if "kl_to_reference" in figures:
            console.print(f"KL to {figures['reference']}: {figures['kl_to_reference']:.3f} nats per response")
        for name in ("sampled", "greedy"):
            if f"flaws_{name}" in figures:
                shares = ", ".join(f"{kind} {share:.2f}" for kind, share in figures[f"flaws_{name}"].items())
                console.print(f"responses ({name}): {shares}")
        extras = {k: v for k, v in figures.items() if k.startswith(_EXTRAS) and isinstance(v, float)}
        if extras:
            console.print("  ".join(f"{k} {v:.3f}" for k, v in extras.items()))
    for match, f in results.get("win_rate", {}).items():
        console.print(
            f"win rate {match} (judge {results['judge']}): {f['win_rate']:.3f} ± {f['ci95']:.3f}  "
            f"({f['wins']} wins, {f['ties']} ties, {f['losses']} losses)"
        )


_EXTRAS = ("best_of_", "shortest_of_", "bleu_", "rougeL_", "text_perplexity")


def _decoding_row(figures: dict[str, Any], name: str) -> list[str]:
    gold = figures.get(f"gold_{name}")
    return [
        "-" if gold is None else f"{gold:.3f}",
        "-" if gold is None else f"{figures[f'gold_{name}_ci95']:.3f}",
        f"{figures[f'rm_score_{name}']:.3f}" if f"rm_score_{name}" in figures else "-",
        f"{figures[f'eos_rate_{name}']:.2f}",
        *(f"{v:.2f}" for v in figures.get(f"gold_{name}_by_family", {}).values()),
    ]
