"""A health check of every artifact of a run, from its manifest alone: one line each, ✓ or ⚠ and why,
so a user reads which stage to fix (`align report` prints them as its Health section).

| stage | ⚠ when |
|---|---|
| sft | the training loss did not fall, or the held-out perplexity is missing or not finite |
| rm | held-out pair accuracy below 0.6 (chance is 0.5); accuracy in the surest quarter of margins below the least sure one (miscalibrated); scores correlating with length above 0.3; gold-ranking accuracy below 0.75 where the prompts have a gold |
| ppo, grpo, rloo, dpo | KL to the SFT policy above 10 nats (or twice `ppo.target_kl`); entropy collapsed below a fifth of step 1's; an over-optimisation monitor tripped; the validation judge fell while the reward rose; the run stopped early |
| rounds | as ppo, for the last round; and a round whose RM ranked the policy's new pairs well below its own held-out pairs (a blind spot the refresh had to remove) |
"""

from __future__ import annotations

import math
from typing import Any

from align.artifacts import Artifact


def check(artifact: Artifact) -> tuple[bool, str]:
    """(healthy, one line saying why) for one artifact; stages without checks are healthy."""
    metrics = artifact.metrics
    problems, notes = _CHECKS.get(artifact.stage, lambda m, a: ([], []))(metrics, artifact)
    return not problems, "; ".join(problems or notes or ["no checks for this stage"])


def _sft(m: dict[str, Any], artifact: Artifact) -> tuple[list[str], list[str]]:
    problems, notes = [], []
    first, last = m.get("first_loss"), m.get("last_loss")
    if first is not None and last is not None:
        (notes if last < first else problems).append(f"training loss {first:.3f} -> {last:.3f}")
    perplexity = m.get("perplexity")
    if perplexity is None or not math.isfinite(perplexity):
        problems.append("no finite held-out perplexity")
    else:
        notes.append(f"held-out perplexity {perplexity:.2f}")
    return problems, notes


def _rm(m: dict[str, Any], artifact: Artifact) -> tuple[list[str], list[str]]:
    problems, notes = [], []
    accuracy = m.get("eval_accuracy")
    if accuracy is None:
        return ["no held-out pairs were scored"], []
    (notes if accuracy >= 0.6 else problems).append(f"held-out accuracy {accuracy:.3f} (chance 0.5)")
    calibration = list((m.get("eval_calibration") or {}).values())
    if len(calibration) >= 2 and calibration[-1] < calibration[0]:
        problems.append(
            f"miscalibrated: the surest pairs {calibration[-1]:.2f} right, the least sure {calibration[0]:.2f}"
        )
    length = m.get("eval_length_correlation")
    if length is not None and abs(length) > 0.3:
        problems.append(f"scores follow length (r={length:.2f})")
    gold = m.get("eval_gold_accuracy")
    if gold is not None:
        (notes if gold >= 0.75 else problems).append(f"gold-ranking accuracy {gold:.3f}")
    return problems, notes


def _policy(m: dict[str, Any], artifact: Artifact) -> tuple[list[str], list[str]]:
    problems, notes = [], []
    target = ((artifact.manifest.get("config") or {}).get("ppo") or {}).get("target_kl")
    kl = m.get("kl_to_reference", m.get("final_kl"))
    if kl is not None:
        limit = 2 * target if target else 10.0
        (notes if kl <= limit else problems).append(f"KL to SFT {kl:.2f} nats")
    if "final_entropy" in m:
        first, final = m.get("first_entropy", m["final_entropy"]), m["final_entropy"]
        collapsed = first / 5 > final
        (problems if collapsed else notes).append(
            f"entropy {'collapsed ' * collapsed}{first:.3f} -> {final:.3f}"
        )
    for monitor in m.get("monitors_tripped", []):
        problems.append(f"monitor {monitor} tripped")
    rose = m.get("final_score", 0) > m.get("first_score", 0)
    for key in [k for k in m if k.startswith("final_") and f"first_{k[6:]}" in m and k[6:] not in _PROXY]:
        name, first = key[6:], m[f"first_{key[6:]}"]
        if rose and m[key] < first - 0.02:
            problems.append(f"{name} fell {first:.3f} -> {m[key]:.3f} while the reward rose")
        else:
            notes.append(f"validation {name} {first:.3f} -> {m[key]:.3f}")
    if m.get("best_step") is not None:
        notes.append(f"best validation step {m['best_step']}")
    if m.get("stopped"):
        problems.append(f"stopped early: {m['stopped']}")
    if "gold_sampled" in m and artifact.evaluation is not None:
        quoted = artifact.evaluation["evaluated"]
        notes.append(f"gold {m['gold_sampled']:.3f} (eval {quoted['prompts']}, {quoted['rows']} prompts)")
    return problems, notes


BLIND_SPOT_GAP = 0.05  # the RM's accuracy on the policy's new pairs this far below its own held-out: ⚠


def blind_spot(entry: dict[str, Any]) -> bool:
    """A round's RM ranked the policy's new answers well below its own held-out pairs."""
    own, before = entry.get("rm_accuracy_own_held_out"), entry.get("rm_accuracy_before")
    return own is not None and before is not None and own - before > BLIND_SPOT_GAP


def _rounds(m: dict[str, Any], artifact: Artifact) -> tuple[list[str], list[str]]:
    """The last round's PPO checks, then each refresh's blind-spot figures: the RM's accuracy on the
    policy's new pairs before the refresh, beside its own held-out accuracy, and the new RM's after."""
    problems, notes = _policy(m, artifact)
    for entry in m.get("rounds", [])[1:]:
        line = (
            f"round {entry['round']}: RM {entry['rm_accuracy_before']:.2f} on the policy's new pairs "
            f"(own held-out {entry['rm_accuracy_own_held_out']:.2f}), refreshed {entry['rm_accuracy_after']:.2f}"
        )
        if blind_spot(entry):
            problems.append(f"{line}: the RM has a blind spot on this policy's outputs: refresh it")
        else:
            notes.append(line)
    return problems, notes


_PROXY = ("score", "kl", "rlhf_reward", "entropy", "eos_rate", "beta", "approxkl", "clipfrac")
_CHECKS = {
    "pretrain": _sft,
    "sft": _sft,
    "rm": _rm,
    "ppo": _policy,
    "dpo": _policy,
    "grpo": _policy,
    "rloo": _policy,
    "rounds": _rounds,
}
