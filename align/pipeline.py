"""`align pipeline`: the stages of a recipe in order, each artifact feeding the next.

    align pipeline --recipe recipes/tiny/pipeline.yaml [--from ppo] [--only rm] [--set ppo.train.max_steps=50]

A stage is skipped when its artifact exists with the same resolved config, the same parent artifacts
(by content hash) and the same data (by sha256), so a rerun after a crash or an edit redoes only what
changed, and what depends on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.artifacts import is_artifact, load_artifact
from align.config import load_recipe, make_config, merge, parse_set, rename_keys, to_dict
from align.data.sources import open_source
from align.errors import ConfigError
from align.registry import STAGES


@dataclass
class StageResult:
    stage: str
    path: Path
    skipped: bool


def run(
    recipe: str | Path,
    start: str | None = None,
    only: str | None = None,
    report: Callable[[str], None] = print,
    root: str | Path | None = None,
    dry_run: bool = False,
    sets: list[str] | None = None,
) -> list[StageResult]:
    """Run the stages of `recipe` into `root` (default: the recipe's `run`); `sets` are
    `STAGE.section.field=value` overrides on top of the recipe's `set`; `dry_run` resolves and checks
    every stage's config and wiring and runs none."""
    spec = load_recipe(recipe)
    unknown = set(spec) - {"run", "stages", "set"}
    if unknown:
        raise ConfigError(f"{recipe}: unknown pipeline key(s) {sorted(unknown)} (known: run, stages, set)")
    root = Path(root or spec.get("run") or "runs/pipeline")
    stages = spec.get("stages") or {}
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ConfigError(f"{recipe}: unknown stage(s) {bad} (known: {', '.join(STAGES)})")
    for name in (start, only):
        if name is not None and name not in stages:
            raise ConfigError(f"stage '{name}' is not in {recipe} (has: {', '.join(stages)})")
    ordered = [s for s in STAGES if s in stages]
    overrides = {stage: dict(values) for stage, values in (spec.get("set") or {}).items()}
    for item in sets or []:
        key, value = parse_set(item)
        stage, _, field = key.partition(".")
        if stage not in stages or not field:
            raise ConfigError(
                f"--set {item}: expected STAGE.section.field=value, STAGE one of {', '.join(stages)}"
            )
        overrides.setdefault(stage, {})[field] = value
    configs_by_stage = {
        stage: _stage_config(stage, stages[stage], overrides.get(stage, {}), root, stages)
        for stage in ordered
    }
    results, forced = [], False
    for stage in ordered:
        config = configs_by_stage[stage]
        selected = (only is None or stage == only) and (
            start is None or ordered.index(stage) >= ordered.index(start)
        )
        output = Path(config.output)
        if not selected:
            results.append(StageResult(stage, output, True))
            continue
        if not forced and up_to_date(output, config):
            report(f"{stage}: up to date, skipped ({output})")
            results.append(StageResult(stage, output, True))
            continue
        forced = True  # everything after a rerun stage depends on it
        if dry_run:
            report(f"{stage}: would run -> {output}")
            results.append(StageResult(stage, output, True))
            continue
        report(f"{stage}: running -> {output}")
        artifact = STAGES[stage].run(config)
        results.append(StageResult(stage, artifact.path, False))
    return results


def up_to_date(output: Path, config: Any) -> bool:
    """Same resolved config, same parents (content hash) and same data (sha256) as the existing artifact."""
    if not is_artifact(output):
        return False
    manifest = load_artifact(output).manifest
    if manifest.get("config") != to_dict(config):
        return False
    for record in manifest.get("parents", []):
        parent = output / record["path"]
        if not is_artifact(parent) or load_artifact(parent).sha256 != record.get("sha256"):
            return False
    source = getattr(config, "data", None) or getattr(config, "prompts", None)
    recorded = manifest.get("data", {}).get("sha256")
    return source is None or open_source(source).sha256 == recorded


def _stage_config(stage: str, recipe: str, sets: dict[str, Any], root: Path, stages: dict[str, str]) -> Any:
    """The stage's recipe and `set` overrides, wired to the artifacts of this run: wiring wins, so the
    stages chain within the run (the run's RM replaces a recipe's reward function)."""
    cls = STAGES[stage].config
    values = merge(rename_keys(cls, load_recipe(recipe)), rename_keys(cls, dict(sets), dotted=True))
    wiring = {"output": str(root / stage)}
    wiring.update(
        {field: str(root / parent) for field, parent in STAGES[stage].inputs.items() if parent in stages}
    )
    return make_config(cls, merge(values, wiring))
