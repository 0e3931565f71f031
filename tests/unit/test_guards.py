"""Guards against reward over-optimisation: ensembles and their objectives, a validation judge with
keep-best and early stopping, the monitors, and the report's Health section."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from align.artifacts import load_artifact
from align.rewards import RewardModel, combine
from align.stages.ppo.monitors import Monitors
from tests.conftest import REPO, invoke, logged_steps, sets, untimed

PROMPTS = REPO / "data/synthetic/ppo.jsonl"
GOLD = "align.data.synthetic:gold_reward"
MICRO_PPO = sets(
    "ppo.rollouts=16",
    "ppo.mini_batch_size=8",
    "ppo.micro_batch_size=8",
    "ppo.max_new_tokens=12",
    "ppo.ppo_epochs=2",
    "train.save_steps=0",
    "ppo.sample_every=0",
)


def ppo(runner, model: Path, output: Path, *extra: str):
    args = ["ppo", "--model", model, "--prompts", PROMPTS, "--output", output, *MICRO_PPO, *extra]
    return invoke(runner, *args)


def test_ensemble_objectives_by_hand() -> None:
    members = torch.tensor([[1.0, 2.0], [3.0, 0.0], [2.0, 4.0]])  # 3 members x 2 responses
    assert combine(members, "mean").tolist() == pytest.approx([2.0, 2.0])
    assert combine(members, "min").tolist() == pytest.approx([1.0, 0.0])
    # uwo: the mean minus penalty x the variance across members (2/3 and 8/3)
    assert combine(members, "uwo", 1.5).tolist() == pytest.approx([2 - 1.5 * 2 / 3, 2 - 1.5 * 8 / 3])


@pytest.fixture(scope="module")
def micro_ensemble(micro_sft: Path, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("ensemble") / "rm"
    result = invoke(
        CliRunner(),
        "rm", "--recipe", REPO / "recipes/tiny/rm.yaml", "--model", micro_sft, "--output", output,
        "--ensemble", "3", "--max-steps", "40", "--lr", "2e-3", *sets("limit=800", "train.save_steps=0"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return output


def test_rm_ensemble_members_differ_and_combine_by_objective(micro_ensemble: Path) -> None:
    """Three members in one artifact (model/ and members/1, members/2: each on its own seed, members 1
    and 2 on bootstrap resamples), standardised on their own statistics; the objectives order as they
    must (min <= mean, uwo <= mean) and the members disagree without being one model."""
    artifact = load_artifact(micro_ensemble, expect_stage="rm")
    metrics = artifact.metrics
    assert len(metrics["members"]) == 3 and (micro_ensemble / "members/2/config.json").is_file()
    assert metrics["member_disagreement"] > 0 and metrics["member_correlation"] < 0.999
    prompts = ["<|user|>\nHow many words: owl cat\n<|assistant|>\n"] * 3
    responses = ["2<|endoftext|>", "3<|endoftext|>", "Sure! 2<|endoftext|>"]
    scores = {
        o: RewardModel.load(micro_ensemble, "cpu", o).score(prompts, responses)
        for o in ("mean", "min", "uwo")
    }
    for i in range(3):
        assert scores["min"][i] <= scores["mean"][i] + 1e-6 and scores["uwo"][i] <= scores["mean"][i] + 1e-6
    members = RewardModel.load(micro_ensemble, "cpu").member_scores(prompts, responses)
    assert members.shape == (3, 3)


def test_ppo_against_an_ensemble_logs_its_disagreement(
    runner, micro_sft: Path, micro_ensemble: Path, tmp_path: Path
) -> None:
    result = ppo(
        runner, micro_sft, tmp_path / "ppo", "--reward-model", micro_ensemble, "--ensemble-objective", "uwo",
        "--max-steps", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    steps = logged_steps(tmp_path / "ppo")
    assert all(s["ensemble_disagreement"] > 0 for s in steps)
    assert load_artifact(tmp_path / "ppo").manifest["config"]["ensemble_objective"] == "uwo"


KEEP_BEST = (
    "--reward",
    "tests.rewards:longer",
    "--validation-reward",
    "tests.rewards:shorter",
    "--lr",
    "3e-3",
)
KEEP_BEST += (*sets("ppo.kl_coef=0.0", "ppo.validation_every=2", "ppo.validation_prompts=32"),)
KEEP_BEST += (*sets("ppo.keep_best=true", "ppo.early_stop_patience=2"),)


def test_keep_best_returns_the_best_step_and_early_stopping_stops(
    runner, micro_sft: Path, tmp_path: Path
) -> None:
    """Trained for length and judged for brevity on the same sampling noise at every evaluation, the
    policy only gets worse: the best step is 0, the SFT policy itself (its adapter unchanged), and the
    run stops after 2 evaluations without a gain; the manifest keeps the curve."""
    result = ppo(runner, micro_sft, tmp_path / "ppo", *KEEP_BEST, "--max-steps", "20")
    assert result.exit_code == 0, result.output
    metrics = load_artifact(tmp_path / "ppo").metrics
    curve = metrics["validation_curve"]
    assert [point["step"] for point in curve] == [0, 2, 4]
    assert curve[0]["score"] > max(point["score"] for point in curve[1:])  # brevity only falls
    assert metrics["best_step"] == 0 and metrics["steps"] == 4 and "has not improved" in metrics["stopped"]
    adapter = load_file(str(tmp_path / "ppo/model/adapter_model.safetensors"))
    assert all(torch.all(w == 0) for k, w in adapter.items() if "lora_B" in k)  # LoRA B starts at 0


def test_keep_best_survives_resume(runner, micro_sft: Path, tmp_path: Path, monkeypatch) -> None:
    from align.stages.ppo import loop

    args = (*KEEP_BEST, "--max-steps", "6", *sets("ppo.early_stop_patience=null", "train.save_steps=2"))
    assert ppo(runner, micro_sft, tmp_path / "straight", *args).exit_code == 0
    original = loop.PPOLoop.iteration

    def crash_in_fifth(self):
        if self.step == 4:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(loop.PPOLoop, "iteration", crash_in_fifth)
    assert ppo(runner, micro_sft, tmp_path / "resumed", *args).exit_code == 130
    monkeypatch.setattr(loop.PPOLoop, "iteration", original)
    assert ppo(runner, micro_sft, tmp_path / "resumed", *args, "--resume").exit_code == 0
    straight, resumed = (load_artifact(tmp_path / n).metrics for n in ("straight", "resumed"))
    assert resumed["validation_curve"] == straight["validation_curve"]
    assert resumed["best_step"] == straight["best_step"]
    adapter = "model/adapter_model.safetensors"
    assert (tmp_path / "resumed" / adapter).read_bytes() == (tmp_path / "straight" / adapter).read_bytes()
    assert untimed(logged_steps(tmp_path / "resumed")) == untimed(logged_steps(tmp_path / "straight"))


def row(step: int, **figures: float) -> dict[str, float]:
    clean = {"step": step, "score": 0.5, "gold": 0.6, "kl": 1.0, "entropy": 1.0, "response_length": 8.0}
    clean.update(
        length_correlation=0.1, first_approxkl=0.0, first_max_log_ratio=0.0, ensemble_disagreement=0.3
    )
    return {**clean, **figures}


@pytest.mark.parametrize(
    ("monitor", "planted"),
    [
        ("length_hacking", {"length_correlation": 0.9, "response_length": 14.0}),
        ("ensemble_disagreement", {"ensemble_disagreement": 0.9}),
        ("kl_above_target", {"kl": 12.0}),
        ("entropy_collapse", {"entropy": 0.1}),
        ("ratio_mismatch", {"first_approxkl": 0.01}),
    ],
)
def test_each_monitor_fires_on_its_planted_case_and_stays_quiet_on_a_clean_run(
    monitor: str, planted: dict[str, float], caplog
) -> None:
    clean = Monitors("gold", None, (1e-4, 1e-2))
    assert not any(
        clean.check([row(1), row(step)])[f"monitor_{m}"] for step in range(2, 4) for m in [monitor]
    )
    history = [row(1), row(2, **planted)]
    flags = Monitors("gold", None, (1e-4, 1e-2)).check(history)
    assert flags[f"monitor_{monitor}"] == 1 and sum(flags.values()) == 1
    assert any(monitor in r.getMessage() for r in caplog.records)


def test_divergence_monitor_needs_the_reward_up_and_the_validation_down() -> None:
    rising = [row(i, score=0.1 * i, gold=0.8 - 0.02 * i) for i in range(1, 21)]
    assert Monitors("gold", None, (1e-4, 1e-2)).check(rising)["monitor_proxy_divergence"] == 1
    both = [row(i, score=0.1 * i, gold=0.5 + 0.01 * i) for i in range(1, 21)]
    assert Monitors("gold", None, (1e-4, 1e-2)).check(both)["monitor_proxy_divergence"] == 0


def test_length_monitor_fires_early_on_a_planted_length_reward(
    runner, micro_sft: Path, tmp_path: Path
) -> None:
    args = (
        "--reward",
        "tests.rewards:longer",
        "--validation-reward",
        GOLD,
        "--lr",
        "3e-3",
        "--max-steps",
        "12",
    )
    result = ppo(runner, micro_sft, tmp_path / "ppo", *args, *sets("ppo.kl_coef=0.0"))
    assert result.exit_code == 0, result.output
    fired = [s["step"] for s in logged_steps(tmp_path / "ppo") if s["monitor_length_hacking"]]
    assert fired and fired[0] <= 12 // 3 + 1, fired
    assert "length_hacking" in load_artifact(tmp_path / "ppo").metrics["monitors_tripped"]


def test_report_health_flags_a_reward_model_trained_against_the_gold(
    runner, micro_sft: Path, tmp_path: Path
) -> None:
    """Two RMs from the same rows and recipe, one on labels the gold orders and one on every label
    inverted: Health's gold-ranking check flags the second, far below chance, and passes the first (a
    premise no float noise crosses, unlike labels shuffled at random). A micro RM may still be flagged
    for other reasons (its scores follow length): Health reports those too."""
    import json

    from align.data.synthetic import EOS, gold_score

    rows = [
        json.loads(line) for line in (REPO / "data/synthetic/pairs.jsonl").read_text().splitlines()[:1200]
    ]
    rows = [r for r in rows if "chosen" in r]
    run = tmp_path / "run"
    for name, inverted in (("rm_good", False), ("rm_inverted", True)):
        data = tmp_path / f"{name}.jsonl"
        with open(data, "w") as handle:
            for r in rows:
                gold_first = gold_score(r["prompt"], r["chosen"] + EOS) > gold_score(
                    r["prompt"], r["rejected"] + EOS
                )
                first, second = (r["chosen"], r["rejected"]) if gold_first else (r["rejected"], r["chosen"])
                if inverted:
                    first, second = second, first
                handle.write(json.dumps({"prompt": r["prompt"], "chosen": first, "rejected": second}) + "\n")
        result = invoke(
            runner, "rm", "--model", micro_sft, "--data", data, "--output", run / name,
            "--max-steps", "1500", "--lr", "2e-3", *sets("train.save_steps=0"),
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    report = invoke(runner, "report", run)
    assert report.exit_code == 0, report.output
    health = (run / "report/report.md").read_text().split("## Policies")[0]
    lines = {
        name: next(line for line in health.splitlines() if f"`{name}`" in line)
        for name in ("rm_good", "rm_inverted")
    }
    assert lines["rm_inverted"].startswith("- ⚠") and "gold-ranking accuracy" in lines["rm_inverted"], health
    assert "gold-ranking accuracy" not in lines["rm_good"], health  # >= 0.75: the check passes
    assert load_artifact(run / "rm_inverted").metrics["eval_gold_accuracy"] < 0.35
