"""The `align` command line: one thin command per stage over the Python API.

Flags override the recipe, the recipe overrides the defaults; `--set section.field=value` reaches any
config field. User errors print one line and exit with code 2; success prints the artifact path.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from align.errors import AlignError

app = typer.Typer(
    help=__doc__.split("\n")[0], no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False
)
data_app = typer.Typer(help="Inspect data files and generate the synthetic tasks.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)

Recipe = Annotated[Path | None, typer.Option("--recipe", "-r", help="YAML recipe with the stage's config.")]
Model = Annotated[str | None, typer.Option(help="Hub id, local HF model directory or align artifact.")]
Data = Annotated[str | None, typer.Option(help="Data file, directory or hub id `name[:config][@split]`.")]
Output = Annotated[str | None, typer.Option("--output", "-o", help="Artifact directory to write.")]
Resume = Annotated[bool, typer.Option(help="Continue from the last checkpoint of an interrupted run.")]
Sets = Annotated[
    list[str] | None, typer.Option("--set", help="Override any config field: section.field=value.")
]
LearningRate = Annotated[float | None, typer.Option("--lr", help="Peak learning rate (train.learning_rate).")]
MaxSteps = Annotated[int | None, typer.Option(help="Optimiser steps; overrides epochs (train.max_steps).")]
Epochs = Annotated[float | None, typer.Option(help="Passes over the data (train.epochs).")]
BatchSize = Annotated[int | None, typer.Option(help="Per-device batch size (train.batch_size).")]
Seed = Annotated[int | None, typer.Option(help="Random seed (train.seed).")]
Lora = Annotated[
    bool | None, typer.Option("--lora/--full", help="LoRA adapters (default) or full fine-tuning.")
]
EvalData = Annotated[str | None, typer.Option(help="Held-out data; default: eval_fraction of --data.")]
MaxLength = Annotated[
    int | None, typer.Option(help="Longest row in tokens; longer rows are dropped and counted.")
]
TrustRemoteCode = Annotated[
    bool | None, typer.Option("--trust-remote-code", help="Allow model code from the hub.")
]
RewardModelArtifact = Annotated[str | None, typer.Option("--reward-model", help="Reward-model artifact.")]
RewardFunction = Annotated[
    str | None, typer.Option("--reward", help="Python reward `module:function` instead of an RM.")
]
Prompts = Annotated[
    str | None, typer.Option("--prompts", help="Prompts file (a pairs or sft file also serves).")
]


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # weight-loading bars; training keeps its own bar
    logging.getLogger("datasets").setLevel(logging.ERROR)
    import datasets

    datasets.disable_progress_bars()


_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def _handle(action: Callable[[], Any]) -> Any:
    """Run a command; an AlignError becomes one line on stderr and exit code 2."""
    try:
        return action()
    except AlignError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun with --resume to continue from the last checkpoint", err=True)
        raise typer.Exit(130) from None
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRORS:
            raise
        # a full disk or a read-only / forbidden directory: nothing was committed, any earlier artifact stands
        where = f" writing {exc.filename}" if exc.filename else ""
        typer.echo(
            f"error: {exc.strerror}{where}; no artifact was replaced (free space or fix permissions, rerun)",
            err=True,
        )
        raise typer.Exit(2) from None


def _stage(
    run: str,
    config_cls: str,
    recipe: Path | None,
    flags: dict[str, Any],
    sets: list[str] | None,
    resume: bool,
) -> None:
    def action() -> None:
        import importlib

        from align import config as config_module
        from align.distributed import close_process_group

        cfg = config_module.build_config(getattr(config_module, config_cls), recipe, flags, sets)
        _quiet_libraries()
        module_name, _, function = run.partition(":")
        try:
            artifact = getattr(importlib.import_module(module_name), function)(cfg, resume=resume)
        finally:
            close_process_group()
        typer.echo(str(artifact.path))

    _handle(action)


def _train_flags(
    lr: float | None, max_steps: int | None, epochs: float | None, batch_size: int | None, seed: int | None
) -> dict[str, Any]:
    return {
        "train.learning_rate": lr,
        "train.max_steps": max_steps,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.seed": seed,
    }


@app.command()
def pretrain(
    recipe: Recipe = None,
    data: Data = None,
    output: Output = None,
    resume: Resume = False,
    lr: LearningRate = None,
    max_steps: MaxSteps = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    seed: Seed = None,
    sets: Sets = None,
) -> None:
    """Train a byte-level BPE tokenizer and a small GPT-2 from scratch on a text corpus."""
    flags = {"data": data, "output": output, **_train_flags(lr, max_steps, epochs, batch_size, seed)}
    _stage("align.stages.pretrain:run", "PretrainConfig", recipe, flags, sets, resume)


@app.command()
def sft(
    recipe: Recipe = None,
    model: Model = None,
    data: Data = None,
    output: Output = None,
    resume: Resume = False,
    lr: LearningRate = None,
    max_steps: MaxSteps = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    seed: Seed = None,
    lora: Annotated[
        bool | None, typer.Option("--lora/--full", help="LoRA adapters (default) or full fine-tuning.")
    ] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank (lora.r).")] = None,
    eval_data: EvalData = None,
    max_length: MaxLength = None,
    packing: Annotated[
        bool | None, typer.Option("--packing/--no-packing", help="Pack rows into full sequences.")
    ] = None,
    save_merged: Annotated[
        bool | None, typer.Option("--save-merged", help="Also write LoRA-merged weights.")
    ] = None,
    trust_remote_code: TrustRemoteCode = None,
    sets: Sets = None,
) -> None:
    """Supervised fine-tuning on instruction/chat data (loss on completions only)."""
    flags = {
        "model": model,
        "data": data,
        "output": output,
        "eval_data": eval_data,
        "max_length": max_length,
        "packing": packing,
        "save_merged": save_merged,
        "trust_remote_code": trust_remote_code,
        "lora.enabled": lora,
        "lora.r": lora_r,
        **_train_flags(lr, max_steps, epochs, batch_size, seed),
    }
    _stage("align.stages.sft:run", "SFTConfig", recipe, flags, sets, resume)


rm_app = typer.Typer(help="Train a reward model on preference pairs; `align rm score` applies one.")
app.add_typer(rm_app, name="rm")


@rm_app.callback(invoke_without_command=True)
def rm(
    ctx: typer.Context,
    recipe: Recipe = None,
    model: Model = None,
    data: Data = None,
    output: Output = None,
    resume: Resume = False,
    lr: LearningRate = None,
    max_steps: MaxSteps = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    seed: Seed = None,
    lora: Lora = None,
    eval_data: EvalData = None,
    max_length: MaxLength = None,
    margin: Annotated[
        float | None, typer.Option(help="Required score gap in the Bradley-Terry loss.")
    ] = None,
    trust_remote_code: TrustRemoteCode = None,
    sets: Sets = None,
) -> None:
    """Reward model on ranked pairs (Bradley-Terry), initialised from the SFT policy."""
    if ctx.invoked_subcommand is not None:
        return
    flags = {
        "model": model,
        "data": data,
        "output": output,
        "eval_data": eval_data,
        "max_length": max_length,
        "margin": margin,
        "trust_remote_code": trust_remote_code,
        "lora.enabled": lora,
        **_train_flags(lr, max_steps, epochs, batch_size, seed),
    }
    _stage("align.stages.rm:run", "RMConfig", recipe, flags, sets, resume)


@rm_app.command("score")
def rm_score(
    model: Annotated[str, typer.Option(help="Reward-model artifact.")],
    data: Annotated[str, typer.Option(help="File of (prompt, response) rows: any sft-shaped file.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="JSONL to write (default: stdout).")
    ] = None,
) -> None:
    """Score every (prompt, response) row of a file with a reward model; writes JSONL with a `score`."""

    def action() -> None:
        from align.data import load_data
        from align.rewards import RewardModel

        rows = load_data(data, "sft").rows
        _quiet_libraries()
        scorer = RewardModel.load(model)
        responses = [r["completion"][0]["content"] + scorer.tokenizer.eos_token for r in rows]
        scores = scorer.score_messages([r["prompt"] for r in rows], responses)
        lines = [
            json.dumps({"prompt": r["prompt"], "response": r["completion"][0]["content"], "score": s})
            for r, s in zip(rows, scores, strict=True)
        ]
        text = "\n".join(lines) + "\n"
        if output:
            output.write_text(text)
            typer.echo(str(output))
        else:
            typer.echo(text, nl=False)

    _handle(action)


@app.command()
def ppo(
    recipe: Recipe = None,
    model: Model = None,
    output: Output = None,
    resume: Resume = False,
    reward_model: RewardModelArtifact = None,
    reward: RewardFunction = None,
    validation_reward: Annotated[
        str | None, typer.Option(help="`module:function` scoring each step's rollouts, never optimised.")
    ] = None,
    prompts: Prompts = None,
    steps: Annotated[int | None, typer.Option(help="PPO iterations (ppo.steps).")] = None,
    lr: LearningRate = None,
    kl_coef: Annotated[float | None, typer.Option(help="KL penalty beta (ppo.kl_coef).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (ppo.seed).")] = None,
    lora: Lora = None,
    critic: Annotated[str | None, typer.Option(help="auto, rm_lora, rm_copy or policy_copy.")] = None,
    trust_remote_code: TrustRemoteCode = None,
    sets: Sets = None,
) -> None:
    """PPO against a reward model or a reward function, with a per-token KL penalty to the SFT policy."""
    flags = {
        "model": model,
        "output": output,
        "reward_model": reward_model,
        "reward": reward,
        "validation_reward": validation_reward,
        "prompts": prompts,
        "critic": critic,
        "trust_remote_code": trust_remote_code,
        "lora.enabled": lora,
        "ppo.steps": steps,
        "ppo.learning_rate": lr,
        "ppo.kl_coef": kl_coef,
        "ppo.seed": seed,
    }
    _stage("align.stages.ppo:run", "PPOConfig", recipe, flags, sets, resume)


@app.command()
def dpo(
    recipe: Recipe = None,
    model: Model = None,
    data: Data = None,
    output: Output = None,
    resume: Resume = False,
    lr: LearningRate = None,
    max_steps: MaxSteps = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    seed: Seed = None,
    beta: Annotated[
        float | None, typer.Option(help="DPO beta: strength of the pull to the reference.")
    ] = None,
    loss_type: Annotated[str | None, typer.Option(help="sigmoid (DPO), ipo, hinge, robust, ...")] = None,
    rounds: Annotated[
        int | None, typer.Option(help="Iterative DPO: rounds of sample, judge, train (0: offline).")
    ] = None,
    prompts: Prompts = None,
    reward_model: RewardModelArtifact = None,
    reward: RewardFunction = None,
    lora: Lora = None,
    eval_data: EvalData = None,
    max_length: MaxLength = None,
    trust_remote_code: TrustRemoteCode = None,
    sets: Sets = None,
) -> None:
    """Direct preference optimisation of the SFT policy on preference pairs (or, with --rounds, on pairs
    sampled from the policy each round and judged by --reward-model / --reward)."""
    flags = {
        "model": model,
        "data": data,
        "output": output,
        "eval_data": eval_data,
        "max_length": max_length,
        "beta": beta,
        "loss_type": loss_type,
        "rounds": rounds,
        "prompts": prompts,
        "reward_model": reward_model,
        "reward": reward,
        "trust_remote_code": trust_remote_code,
        "lora.enabled": lora,
        **_train_flags(lr, max_steps, epochs, batch_size, seed),
    }
    _stage("align.stages.dpo:run", "DPOConfig", recipe, flags, sets, resume)


@app.command()
def pairs(
    recipe: Recipe = None,
    model: Model = None,
    prompts: Prompts = None,
    output: Output = None,
    reward_model: RewardModelArtifact = None,
    reward: RewardFunction = None,
    n: Annotated[int | None, typer.Option(help="Responses sampled per prompt (sampling.n).")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    label_noise: Annotated[
        float | None, typer.Option(help="Share of labels flipped (simulated annotators).")
    ] = None,
    pairing: Annotated[
        str | None,
        typer.Option(
            "--pairs", help="best_worst (one pair per prompt) or all (every two answers scored differently)."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Use the first N prompts.")] = None,
    seed: Seed = None,
    sets: Sets = None,
) -> None:
    """Preference pairs from the policy's own samples, ranked by an RM or a reward function."""
    flags = {
        "model": model,
        "prompts": prompts,
        "output": output,
        "reward_model": reward_model,
        "reward": reward,
        "sampling.n": n,
        "sampling.temperature": temperature,
        "sampling.label_noise": label_noise,
        "sampling.pairs": pairing,
        "limit": limit,
        "seed": seed,
    }
    _stage("align.stages.pairs:run", "PairsConfig", recipe, flags, sets, False)


def _online_command(stage: str, config_cls: str, summary: str) -> Callable[..., None]:
    def command(
        recipe: Recipe = None,
        model: Model = None,
        output: Output = None,
        resume: Resume = False,
        reward_model: RewardModelArtifact = None,
        reward: RewardFunction = None,
        prompts: Prompts = None,
        num_generations: Annotated[int | None, typer.Option(help="Responses sampled per prompt.")] = None,
        beta: Annotated[float | None, typer.Option(help="KL coefficient to the reference.")] = None,
        lr: LearningRate = None,
        max_steps: MaxSteps = None,
        batch_size: BatchSize = None,
        seed: Seed = None,
        lora: Lora = None,
        sets: Sets = None,
    ) -> None:
        flags = {
            "model": model,
            "output": output,
            "reward_model": reward_model,
            "reward": reward,
            "prompts": prompts,
            "num_generations": num_generations,
            "beta": beta,
            "lora.enabled": lora,
            **_train_flags(lr, max_steps, None, batch_size, seed),
        }
        _stage(f"align.stages.{stage}:run", config_cls, recipe, flags, sets, resume)

    command.__doc__ = summary
    return command


app.command("grpo")(
    _online_command(
        "grpo", "GRPOConfig", "GRPO (group-relative, no critic) against an RM or a reward function."
    )
)
app.command("rloo")(
    _online_command(
        "rloo", "RLOOConfig", "RLOO (leave-one-out baseline, no critic) against an RM or a reward function."
    )
)


@app.command()
def generate(
    model: Annotated[str, typer.Option(help="Policy artifact, model directory or hub id.")],
    prompt: Annotated[list[str] | None, typer.Option(help="A user message (repeatable).")] = None,
    data: Annotated[str | None, typer.Option(help="Prompts file instead of --prompt.")] = None,
    temperature: Annotated[float, typer.Option(help="0 means greedy (or beam search).")] = 0.7,
    top_k: Annotated[int, typer.Option(help="Sample among the k likeliest tokens (0: all).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    num_beams: Annotated[int, typer.Option(help="Beam search width (with --temperature 0).")] = 1,
    repetition_penalty: Annotated[float, typer.Option(help="> 1 discourages repeated tokens.")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(help="Longest response in tokens.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call.")] = 32,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Generate responses (JSONL on stdout) with the model's chat template and the KV cache."""

    def action() -> None:
        from align.errors import ConfigError

        if bool(prompt) == bool(data):
            raise ConfigError("give --prompt (repeatable) or --data FILE")
        if temperature < 0 or num_beams < 1 or max_new_tokens < 1:
            raise ConfigError("--temperature must be >= 0, --num-beams and --max-new-tokens >= 1")
        _quiet_libraries()
        from align.data import load_data
        from align.generation import Sampling
        from align.generation import generate as run_generation
        from align.models import load_policy, load_tokenizer, pick_device, resolve_model

        prompts = (
            [r["prompt"] for r in load_data(data, "prompts").rows]
            if data
            else [[{"role": "user", "content": p}] for p in prompt or []]
        )
        source = resolve_model(model)
        tokenizer = load_tokenizer(source)
        policy = load_policy(source).to(pick_device())
        sampling = Sampling(
            temperature=temperature or None,
            top_k=top_k,
            top_p=top_p,
            num_beams=num_beams,
            repetition_penalty=repetition_penalty,
            max_new_tokens=max_new_tokens,
        )
        for messages, response in zip(
            prompts, run_generation(policy, tokenizer, prompts, sampling, batch_size, seed), strict=True
        ):
            typer.echo(json.dumps({"prompt": messages[-1]["content"], "response": response}))

    _handle(action)


@app.command()
def pipeline(
    recipe: Annotated[
        Path, typer.Option("--recipe", "-r", help="Pipeline recipe: run dir and stage recipes.")
    ],
    start: Annotated[str | None, typer.Option("--from", help="Rerun from this stage on.")] = None,
    only: Annotated[str | None, typer.Option(help="Run just this stage.")] = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run", help="Directory of the artifacts (default: the recipe's `run`).")
    ] = None,
) -> None:
    """Run the recipe's stages in order, skipping those whose config, inputs and data are unchanged."""

    def action() -> None:
        _quiet_libraries()
        from align.pipeline import run

        report = lambda line: typer.echo(line, err=True)  # noqa: E731
        for result in run(recipe, start, only, report=report, root=run_dir):
            typer.echo(f"{result.stage}\t{result.path}\t{'skipped' if result.skipped else 'ran'}")

    _handle(action)


@app.command("eval")
def eval_command(
    model: Annotated[
        list[str], typer.Option(help="Policy artifact, model directory or hub id (repeat to compare).")
    ],
    prompts: Annotated[
        str | None, typer.Option(help="Held-out prompts (default: synthetic eval set).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N prompts.")] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature of the headline score.")
    ] = None,
    reward_model: Annotated[
        str | None, typer.Option(help="Also report this RM's score of the responses.")
    ] = None,
    reference: Annotated[str | None, typer.Option(help="KL reference (default: the SFT parent).")] = None,
    best_of_n: Annotated[
        list[int] | None, typer.Option(help="Best-of-n baseline picked by --reward-model (repeatable).")
    ] = None,
    shortest_of_n: Annotated[
        list[int] | None, typer.Option(help="Shortest-of-n baseline: does saying less win? (repeatable).")
    ] = None,
    perplexity_data: Annotated[str | None, typer.Option(help="Text set to report perplexity on.")] = None,
    judge: Annotated[
        str | None, typer.Option(help="RM judging the win rate (default: --reward-model, else gold).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")
    ] = None,
    recipe: Recipe = None,
    sets: Sets = None,
) -> None:
    """Gold score (sampled and greedy, per family), RM score, KL to the SFT policy, BLEU/ROUGE, best-of-n,
    perplexity; with several --model, the win rate of each against the first."""

    def action() -> None:
        from align.config import EvalConfig, build_config

        flags = {
            "model": model[0],
            "prompts": prompts,
            "limit": limit,
            "temperature": temperature,
            "reward_model": reward_model,
            "reference": reference,
            "best_of_n": best_of_n or None,
            "shortest_of_n": shortest_of_n or None,
            "perplexity_data": perplexity_data,
        }
        cfg = build_config(EvalConfig, recipe, flags, sets)
        _quiet_libraries()
        from align.evaluation import compare, run

        results = compare(cfg, model, judge) if len(model) > 1 else run(cfg)
        for name, figures in results.get("policies", {model[0]: results}).items():
            _print_results(name, figures)
        for match, figures in results.get("win_rate", {}).items():
            typer.echo(
                f"win rate {match} (judge {results['judge']}): {figures['win_rate']:.3f} "
                f"± {figures['ci95']:.3f}  ({figures['wins']} wins, {figures['ties']} ties, {figures['losses']} losses)"
            )
        if json_out:
            json_out.write_text(json.dumps(results, indent=2) + "\n")

    _handle(action)


@app.command()
def chat(
    model: Annotated[str, typer.Option(help="Policy artifact, model directory or hub id.")],
    temperature: Annotated[float, typer.Option(help="0 means greedy.")] = 0.7,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply in tokens.")] = 128,
    history_turns: Annotated[int, typer.Option(help="Past exchanges the model sees.")] = 4,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    safety_model: Annotated[
        str | None, typer.Option(help="RM/classifier artifact scoring each reply (safety filter).")
    ] = None,
    safety_threshold: Annotated[float, typer.Option(help="Replies scored below this are refused.")] = 0.0,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Chat in the terminal (one message per line; /reset clears the history, /exit or EOF quits)."""

    def action() -> None:
        from align.errors import ConfigError

        if temperature < 0 or max_new_tokens < 1 or history_turns < 0:
            raise ConfigError("--temperature and --history-turns must be >= 0, --max-new-tokens >= 1")
        _quiet_libraries()
        from align.conversation import Conversation
        from align.generation import Sampling

        session = Conversation.load(
            model,
            safety_model,
            trust_remote_code,
            sampling=Sampling(temperature=temperature or None, top_p=top_p, max_new_tokens=max_new_tokens),
            history_turns=history_turns,
            system=system,
            safety_threshold=safety_threshold,
        )
        for line in sys.stdin:
            message = line.strip()
            if message == "/exit":
                break
            if message == "/reset":
                session.reset()
                typer.echo("(history cleared)")
            elif message:
                typer.echo(f"assistant: {session.reply(message)}")

    _handle(action)


@app.command()
def export(
    model: Annotated[str, typer.Option(help="Policy artifact (LoRA adapters are merged).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Export artifact directory.")],
    push_to_hub: Annotated[
        str | None, typer.Option(help="Also upload model/ to this hub repo (needs network and a token).")
    ] = None,
) -> None:
    """Write a plain transformers model (merged, safetensors, model card with lineage and metrics)."""

    def action() -> None:
        _quiet_libraries()
        from align.export import run

        artifact = run(model, output, push_to_hub)
        typer.echo(f"{artifact.model_dir}  (AutoModelForCausalLM.from_pretrained loads it)")

    _handle(action)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Directory holding the artifacts of a run.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Default: RUN_DIR/report.")] = None,
) -> None:
    """PNG plots (losses, RM accuracy, PPO curves, reward-KL frontier, gold vs proxy) and report.md."""

    def action() -> None:
        from align.report import build

        typer.echo(str(build(run_dir, output)))

    _handle(action)


Host = Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only).")]
Port = Annotated[int, typer.Option(help="Port of the page.")]
Annotator = Annotated[str, typer.Option(help="Who judges; stored in every row.")]


@app.command()
def label(
    model: Annotated[str, typer.Option(help="Policy whose responses are ranked.")],
    data: Annotated[str, typer.Option(help="Prompts file (a pairs or sft file also serves).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Rankings file (appended; resumes).")],
    k: Annotated[int, typer.Option(help="Responses per prompt.")] = 4,
    limit: Annotated[int | None, typer.Option(help="Judge the first N prompts.")] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (> 0).")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(help="Longest response in tokens.")] = 64,
    seed: Annotated[int, typer.Option(help="Sampling seed (per prompt).")] = 0,
    annotator: Annotator = "anonymous",
    host: Host = "127.0.0.1",
    port: Port = 7860,
    reward: RewardFunction = None,
    reward_model: RewardModelArtifact = None,
) -> None:
    """Rank K sampled responses per prompt in the browser; rows feed `align rm` unchanged."""

    def action() -> None:
        from align.errors import ConfigError

        if k < 2 or temperature <= 0 or max_new_tokens < 1:
            raise ConfigError("--k must be >= 2, --temperature > 0 and --max-new-tokens >= 1")
        _quiet_libraries()
        from align.feedback.tasks import LabelTask, Sampler

        task = LabelTask(
            *_feedback_inputs(data, limit, output, annotator),
            sampler=Sampler(model, _feedback_sampling(temperature, max_new_tokens), seed),
            k=k,
        )
        _run_feedback(task, "label.html", host, port, reward, reward_model)

    _handle(action)


@app.command()
def arena(
    model_a: Annotated[str, typer.Option(help="Policy A.")],
    model_b: Annotated[str, typer.Option(help="Policy B (the win rate is B's).")],
    data: Annotated[str, typer.Option(help="Prompts file (a pairs or sft file also serves).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Votes file (appended; resumes).")],
    limit: Annotated[int | None, typer.Option(help="Judge the first N prompts.")] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (> 0).")] = 0.7,
    max_new_tokens: Annotated[int, typer.Option(help="Longest response in tokens.")] = 64,
    seed: Annotated[int, typer.Option(help="Sampling and side-shuffling seed.")] = 0,
    annotator: Annotator = "anonymous",
    host: Host = "127.0.0.1",
    port: Port = 7861,
    reward: RewardFunction = None,
    reward_model: RewardModelArtifact = None,
) -> None:
    """Blind side-by-side votes between two policies with a live win rate; votes are saved as pairs."""

    def action() -> None:
        from align.errors import ConfigError

        if temperature <= 0 or max_new_tokens < 1:
            raise ConfigError("--temperature must be > 0 and --max-new-tokens >= 1")
        _quiet_libraries()
        from align.feedback.tasks import ArenaTask, Sampler

        sampling = _feedback_sampling(temperature, max_new_tokens)
        task = ArenaTask(
            *_feedback_inputs(data, limit, output, annotator),
            a=Sampler(model_a, sampling, seed),
            b=Sampler(model_b, sampling, seed),
            seed=seed,
        )
        _run_feedback(task, "arena.html", host, port, reward, reward_model)

    _handle(action)


def _feedback_inputs(data: str, limit: int | None, output: Path, annotator: str) -> tuple[Any, ...]:
    from align.data import load_data
    from align.feedback.store import JudgementLog

    prompts = [row["prompt"] for row in load_data(data, "prompts", limit).rows]
    return prompts, JudgementLog(output), annotator


def _feedback_sampling(temperature: float, max_new_tokens: int) -> Any:
    from align.generation import Sampling

    return Sampling(temperature=temperature, max_new_tokens=max_new_tokens)


def _run_feedback(
    task: Any, page: str, host: str, port: int, reward: str | None, reward_model: str | None
) -> None:
    """Judge headless with a reward when one is given, else serve the page until interrupted."""
    from align.errors import ConfigError

    if reward and reward_model:
        raise ConfigError("give --reward or --reward-model as the judge, not both")
    if reward or reward_model:
        from align.feedback.tasks import judge_all
        from align.rewards import load_judge

        typer.echo(json.dumps(judge_all(task, load_judge(reward_model, reward)[1])))
        return
    from align.feedback.server import serve

    progress = task.progress()
    typer.echo(
        f"http://{host}:{port}/  ({progress['done']} of {progress['total']} judged; Ctrl-C stops, nothing is lost)"
    )
    serve(task, page, host, port)


@app.command()
def show(path: Annotated[Path, typer.Argument(help="Artifact directory.")]) -> None:
    """Print an artifact's stage, lineage, data and metrics."""

    def action() -> None:
        from align.artifacts import load_artifact

        artifact = load_artifact(path)
        manifest = artifact.manifest
        out = Console()
        out.print(
            f"[bold]{artifact.stage}[/bold] {artifact.path}  (created {manifest.get('created')}, "
            f"align {manifest.get('align_version')}, {manifest.get('model_format', '?')} weights)"
        )
        lineage = artifact
        while lineage.manifest.get("parents"):
            record = lineage.manifest["parents"][0]
            lineage = lineage.parent(record["stage"])
            out.print(f"  <- {lineage.stage}: {lineage.path}")
        if manifest.get("base_model"):
            out.print(f"base model: {manifest['base_model']}")
        data = manifest.get("data") or {}
        if data:
            out.print(f"data: {data.get('source')} ({data.get('rows')} rows, dropped {data.get('dropped')})")
        table = Table("metric", "value", title="metrics")
        for key, value in manifest.get("metrics", {}).items():
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        out.print(table)

    _handle(action)


@app.command()
def verify(path: Annotated[Path, typer.Argument(help="Artifact directory.")]) -> None:
    """Re-hash every file of an artifact; exit 1 if any was modified."""

    def action() -> None:
        from align.artifacts import verify as verify_artifact

        problems = verify_artifact(path)
        for problem in problems:
            typer.echo(f"{path}: {problem}")
        if problems:
            raise typer.Exit(1)
        typer.echo(f"{path}: ok")

    _handle(action)


@data_app.command("inspect")
def data_inspect(
    source: Annotated[str, typer.Argument(help="Data file, directory or hub id.")],
    kind: Annotated[str, typer.Option(help="text, sft, pairs or prompts.")] = "sft",
    tokenizer: Annotated[
        str | None, typer.Option(help="Model/artifact whose tokenizer measures lengths.")
    ] = None,
) -> None:
    """Normalise a data file as a stage would and report rows, drops, token lengths and two examples."""

    def action() -> None:
        from align.data.inspect import inspect

        _quiet_libraries()
        Console().print(inspect(source, kind, tokenizer))

    _handle(action)


@data_app.command("synth")
def data_synth(
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the generated files.")] = Path(
        "data/synthetic"
    ),
    seed: Annotated[int | None, typer.Option(help="Generator seed.")] = None,
    sets: Sets = None,
) -> None:
    """Generate the synthetic tasks (corpus, SFT demos, pairs, PPO and eval prompts), bit-identically."""

    def action() -> None:
        from align.config import build_config
        from align.data.synthetic import SynthSettings, write

        settings = build_config(SynthSettings, None, {"seed": seed}, sets)
        for name, digest in write(settings, output).items():
            typer.echo(f"{output / name}  sha256 {digest[:16]}")

    _handle(action)


def _print_results(model: str, results: dict[str, Any]) -> None:
    families = list(results.get("gold_sampled_by_family", {}))
    table = Table("decoding", "gold", "±95%", "RM score", "EOS rate", *families, title=model)
    for name in ("sampled", "greedy"):
        if f"eos_rate_{name}" not in results:
            continue
        gold = results.get(f"gold_{name}")
        table.add_row(
            name,
            "-" if gold is None else f"{gold:.3f}",
            "-" if gold is None else f"{results[f'gold_{name}_ci95']:.3f}",
            f"{results[f'rm_score_{name}']:.3f}" if f"rm_score_{name}" in results else "-",
            f"{results[f'eos_rate_{name}']:.2f}",
            *(f"{v:.2f}" for v in results.get(f"gold_{name}_by_family", {}).values()),
        )
    console = Console()
    console.print(table)
    if "kl_to_reference" in results:
        console.print(f"KL to {results['reference']}: {results['kl_to_reference']:.3f} nats per response")
    for name in ("sampled", "greedy"):
        if f"flaws_{name}" in results:
            shares = ", ".join(f"{kind} {share:.2f}" for kind, share in results[f"flaws_{name}"].items())
            console.print(f"responses ({name}): {shares}")
    extras = {
        k: v for k, v in results.items() if k.startswith(("best_of_", "bleu_", "rougeL_", "text_perplexity"))
    }
    if extras:
        console.print("  ".join(f"{k} {v:.3f}" for k, v in extras.items()))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":
    sys.exit(app())
