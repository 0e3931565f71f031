"""`align report RUN_DIR`: PNG plots and a markdown report of every artifact under a run directory.

Everything is read from what the stages and `align eval` already wrote (manifests and `logs/metrics.jsonl`),
so a report can be rebuilt at any time without touching a model. `report.md` opens with a Health line per
artifact (`align.health`: which stage to fix), then the policies' figures, and the plots:

- `loss.png`: the training loss of every stage over its steps;
- `reward_model.png`: the RM's pairwise accuracy while training and its held-out accuracy by margin bucket;
- `ppo.png`: RM score, KL to the reference, entropy and gold score of every PPO run over its steps;
- `frontier.png`: RM score and gold score against KL to the SFT policy for every evaluated policy, with
  the best-of-n baselines of the SFT policy, so every method sits on the same reward-KL plot;
- `gold_vs_proxy.png`: gold against RM score, per policy and along each PPO run (over-optimisation shows
  as the proxy rising while gold stalls).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from align import health
from align.artifacts import Artifact, load_artifact
from align.errors import ArtifactError
from align.registry import POLICY_STAGES


def build(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the plots and `report.md` (default under RUN_DIR/report) and return the markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    run_dir = Path(run_dir)
    artifacts = discover(run_dir)
    if not artifacts:
        raise ArtifactError(f"{run_dir}: no artifacts (directories with a manifest.json) to report on")
    out = Path(output) if output else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    plots = {
        "loss.png": _plot_losses(artifacts),
        "reward_model.png": _plot_reward_model(artifacts),
        "ppo.png": _plot_ppo(artifacts),
        "frontier.png": _plot_frontier(artifacts),
        "gold_vs_proxy.png": _plot_gold_vs_proxy(artifacts),
    }
    written = []
    for name, figure in plots.items():
        if figure is not None:
            figure.savefig(out / name, dpi=110, bbox_inches="tight")
            written.append(name)
            matplotlib.pyplot.close(figure)
    report = out / "report.md"
    report.write_text(_markdown(run_dir, artifacts, written))
    return report


def discover(run_dir: Path) -> dict[str, Artifact]:
    """Every finished artifact under `run_dir`, by path relative to it (work dirs and checkpoints skipped)."""
    found = {}
    for manifest in sorted(run_dir.rglob("manifest.json")):
        directory = manifest.parent
        if any(part.endswith(".partial") or part.startswith("checkpoint") for part in directory.parts):
            continue
        try:
            found[str(directory.relative_to(run_dir))] = load_artifact(directory)
        except ArtifactError:
            continue
    return found


def log_rows(artifact: Artifact) -> list[dict[str, Any]]:
    path = artifact.path / "logs" / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(row["step"], row[key]) for row in rows if key in row and "step" in row]
    return [p[0] for p in points], [p[1] for p in points]


def _figure(panels: int) -> tuple[Any, list[Any]]:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), squeeze=False)
    return figure, list(axes[0])


def _plot_losses(artifacts: dict[str, Artifact]) -> Any:
    """One panel per stage, one line per artifact of that stage."""
    stages: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for name, artifact in artifacts.items():
        steps, losses = _series(log_rows(artifact), "loss")
        if steps:
            stages.setdefault(artifact.stage, {})[name] = (steps, losses)
    if not stages:
        return None
    figure, axes = _figure(len(stages))
    for ax, (stage, curves) in zip(axes, stages.items(), strict=True):
        for name, (steps, losses) in curves.items():
            ax.plot(steps, losses, label=name)
        ax.set(title=f"{stage} training loss", xlabel="step", ylabel="loss")
        ax.legend(fontsize=6)
    return figure


def _plot_reward_model(artifacts: dict[str, Artifact]) -> Any:
    models = {name: a for name, a in artifacts.items() if a.stage == "rm"}
    if not models:
        return None
    figure, (curve, buckets) = _figure(2)
    for name, artifact in models.items():
        steps, accuracy = _series(log_rows(artifact), "accuracy")
        curve.plot(steps, accuracy, label=name)
        calibration = artifact.metrics.get("eval_calibration", {})
        buckets.bar([f"{name}\n{k}" for k in calibration], list(calibration.values()), label=name)
        held_out = artifact.metrics.get("eval_accuracy")
        if held_out is not None:
            curve.axhline(held_out, linestyle="--", color="gray", label=f"{name} held-out {held_out:.3f}")
        gold = artifact.metrics.get("eval_gold_accuracy")
        if gold is not None:
            curve.axhline(gold, linestyle=":", color="black", label=f"{name} vs gold {gold:.3f}")
    curve.set(title="pairwise accuracy (training batches)", xlabel="step", ylabel="accuracy")
    curve.legend(fontsize=7)
    buckets.set(title="held-out accuracy by |margin| bucket", ylabel="accuracy", ylim=(0, 1))
    buckets.tick_params(axis="x", labelsize=6)
    return figure


def _plot_ppo(artifacts: dict[str, Artifact]) -> Any:
    runs = {name: log_rows(a) for name, a in artifacts.items() if a.stage == "ppo"}
    runs = {name: rows for name, rows in runs.items() if rows}
    if not runs:
        return None
    keys = [
        k for k in ("score", "kl", "entropy", "gold") if any(k in r for rows in runs.values() for r in rows)
    ]
    figure, axes = _figure(len(keys))
    for ax, key in zip(axes, keys, strict=True):
        for name, rows in runs.items():
            steps, values = _series(rows, key)
            ax.plot(steps, _smooth(values), label=name)
        ax.set(title=f"{'reward' if key == 'score' else key} (running mean of 10)", xlabel="PPO step")
    axes[0].legend(fontsize=7)
    return figure


def _evaluated(artifacts: dict[str, Artifact]) -> dict[str, dict[str, Any]]:
    return {
        name: a.metrics
        for name, a in artifacts.items()
        if a.stage in POLICY_STAGES and ("gold_sampled" in a.metrics or "rm_score_sampled" in a.metrics)
    }


def _plot_frontier(artifacts: dict[str, Artifact]) -> Any:
    policies = {n: m for n, m in _evaluated(artifacts).items() if artifacts[n].stage != "pretrain"}
    if not policies:
        return None
    keys = [k for k in ("rm_score_sampled", "gold_sampled") if any(k in m for m in policies.values())]
    figure, axes = _figure(len(keys))
    for ax, key in zip(axes, keys, strict=True):
        for name, metrics in policies.items():
            if key in metrics:
                kl = metrics.get("kl_to_reference", 0.0)
                stage = artifacts[name].stage
                ax.scatter(kl, metrics[key], color=_stage_color(stage), label=stage)
                ax.annotate(name, (kl, metrics[key]), fontsize=6)
            best = _best_of_n(metrics, "rm_score" if key.startswith("rm") else "gold")
            if best:
                ax.plot(*zip(*best, strict=True), "k--", marker="x", label=f"best-of-n of {name}")
        ax.set(title=f"{key} vs KL to SFT", xlabel="KL to the SFT policy (nats per response)", ylabel=key)
    _legend_once(axes[0])
    return figure


def _stage_color(stage: str) -> str:
    return f"C{POLICY_STAGES.index(stage) if stage in POLICY_STAGES else len(POLICY_STAGES)}"


def _legend_once(ax: Any) -> None:
    """A legend with one entry per label (one per stage, not one per point)."""
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7)


def _best_of_n(metrics: dict[str, Any], what: str) -> list[tuple[float, float]]:
    """(KL, score) points of the best-of-n baselines evaluated on a policy, with n = 1 at KL 0."""
    sampled = metrics.get("rm_score_sampled" if what == "rm_score" else "gold_sampled")
    points = [
        (metrics[key.replace(f"_{what}", "_kl")], metrics[key])
        for key in metrics
        if re.fullmatch(rf"best_of_\d+_{what}", key)  # not the pool a pick came from
    ]
    if not points or sampled is None:
        return []
    return sorted([(0.0, sampled), *points])


def _plot_gold_vs_proxy(artifacts: dict[str, Artifact]) -> Any:
    policies = {
        n: m for n, m in _evaluated(artifacts).items() if "gold_sampled" in m and "rm_score_sampled" in m
    }
    trajectories = {
        name: log_rows(a)
        for name, a in artifacts.items()
        if a.stage == "ppo" and a.manifest.get("reward") == {"stage": "rm"}
    }
    if not policies:
        return None
    figure, (per_policy, per_step) = _figure(2)
    for name, metrics in policies.items():
        stage = artifacts[name].stage
        per_policy.scatter(
            metrics["rm_score_sampled"], metrics["gold_sampled"], color=_stage_color(stage), label=stage
        )
        per_policy.annotate(name, (metrics["rm_score_sampled"], metrics["gold_sampled"]), fontsize=6)
    per_policy.set(title="evaluated policies", xlabel="RM score (proxy)", ylabel="gold score")
    _legend_once(per_policy)
    for name, rows in trajectories.items():
        steps, proxy = _series(rows, "score")
        gold_steps, gold = _series(rows, "gold")
        if gold:
            line = per_step.plot(steps, _gain(proxy), label=f"{name} RM score")[0]
            per_step.plot(gold_steps, _gain(gold), "--", color=line.get_color(), label=f"{name} gold")
    per_step.set(
        title="along PPO: gain since step 1 (running mean of 10)", xlabel="PPO step", ylabel="score gain"
    )
    if trajectories:
        per_step.legend(fontsize=7)
    return figure


def _smooth(values: list[float], window: int = 10) -> list[float]:
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1))
        for i in range(len(values))
    ]


def _gain(values: list[float]) -> list[float]:
    smooth = _smooth(values)
    return [v - smooth[0] for v in smooth]


def _quoted(record: dict) -> str:
    """Which evaluation a row quotes: its prompt set, how many prompts, its key under evaluations/."""
    evaluated = record["evaluated"]
    return f"{evaluated['prompts']}, {evaluated['rows']} prompts, T={evaluated['temperature']} (`{record['key']}`)"


def _markdown(run_dir: Path, artifacts: dict[str, Artifact], plots: list[str]) -> str:
    lines = [f"# align report: {run_dir}", "", "## Health", ""]
    for name, artifact in artifacts.items():
        healthy, why = health.check(artifact)
        lines.append(f"- {'✓' if healthy else '⚠'} `{name}` ({artifact.stage}): {why}")
    lines += ["", "## Policies on the held-out prompts", ""]
    lines += [
        "| artifact | stage | gold (T=0.7) | gold greedy | RM score | KL to SFT | text perplexity | evaluation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, metrics in _evaluated(artifacts).items():
        cells = [
            metrics.get(k)
            for k in ("gold_sampled", "gold_greedy", "rm_score_sampled", "kl_to_reference", "text_perplexity")
        ]
        quoted = artifacts[name].evaluation
        source = "-" if quoted is None else _quoted(quoted)
        lines.append(
            f"| {name} | {artifacts[name].stage} | "
            + " | ".join("-" if c is None else f"{c:.3f}" for c in cells)
            + f" | {source} |"
        )
    for name, artifact in artifacts.items():
        if artifact.stage == "rm":
            m = artifact.metrics
            lines += [
                "",
                f"## Reward model `{name}`",
                "",
                f"- held-out pairwise accuracy {m.get('eval_accuracy', float('nan')):.3f} on {m.get('eval_pairs')} pairs",
            ]
            if m.get("eval_gold_accuracy") is not None:
                lines.append(
                    f"- accuracy against the gold ranking {m['eval_gold_accuracy']:.3f} "
                    f"({m.get('eval_gold_ties_excluded')} gold ties excluded)"
                )
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({name})" for name in plots]
    lines += ["", "## Artifacts", ""]
    lines += [f"- `{name}`: {a.stage}" for name, a in artifacts.items()]
    return "\n".join(lines) + "\n"
