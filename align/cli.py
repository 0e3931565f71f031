"""The `align` command line: one thin command per stage (from `align.registry`) and the tools.

Flags override the recipe, the recipe overrides the defaults; `--set section.field=value` reaches any
config field. Every option is declared once, in OPTIONS, and mapped to its config key by the registry.
User errors print one line and exit with code 2; success prints the artifact path.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from align.errors import ConfigError, handled, stop_on_sigterm
from align.logs import configure_logging, console, quiet_libraries
from align.registry import STAGES, Stage

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Inspect data files and generate the synthetic tasks.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (also ALIGN_DEBUG=1).")] = False,
) -> None:
    """Turn a GPT-2-style model into an aligned assistant: SFT, reward model, PPO and DPO."""
    if debug:
        os.environ["ALIGN_DEBUG"] = "1"
    configure_logging()
    stop_on_sigterm()


def _option(kind: Any, *names: str, **kwargs: Any) -> Any:
    return Annotated[kind, typer.Option(*names, **kwargs)]


PathOption = Path | None
OPTIONS: dict[str, Any] = {
    "recipe": _option(PathOption, "--recipe", "-r", help="YAML recipe with the stage's config."),
    "model": _option(str | None, help="Hub id, local HF model directory or align artifact."),
    "data": _option(str | None, help="Data file, directory or hub id `name[:config][@split]`."),
    "output": _option(str | None, "--output", "-o", help="Artifact directory to write."),
    "resume": _option(bool, help="Continue from the last checkpoint of an interrupted run."),
    "sets": _option(list[str] | None, "--set", help="Override any config field: section.field=value."),
    "learning_rate": _option(float | None, "--learning-rate", "--lr", help="Peak learning rate."),
    "max_steps": _option(int | None, help="Optimiser steps (PPO: iterations); overrides epochs."),
    "epochs": _option(float | None, help="Passes over the data."),
    "batch_size": _option(int | None, help="Per-device batch size."),
    "seed": _option(int | None, help="Random seed."),
    "report_to": _option(
        list[str] | None,
        "--report-to",
        help="Experiment trackers: tensorboard (default), trackio, wandb, mlflow, ... (repeat or comma-separate; none: off).",
    ),
    "lora": _option(bool | None, "--lora/--full", help="LoRA adapters (default) or full fine-tuning."),
    "lora_r": _option(int | None, help="LoRA rank."),
    "eval_data": _option(str | None, help="Held-out data; default: eval_fraction of --data."),
    "max_length": _option(int | None, help="Longest row in tokens; longer rows are dropped and counted."),
    "packing": _option(bool | None, "--packing/--no-packing", help="Pack rows into full sequences."),
    "save_merged": _option(bool | None, "--save-merged", help="Also write LoRA-merged weights."),
    "trust_remote_code": _option(bool | None, "--trust-remote-code", help="Allow model code from the hub."),
    "reward_model": _option(str | None, "--reward-model", help="Reward-model artifact."),
    "reward": _option(str | None, "--reward", help="Python reward `module:function` instead of an RM."),
    "validation_reward": _option(
        str | None, help="`module:function` scoring each step's rollouts, never optimised."
    ),
    "validation_reward_model": _option(
        str | None, help="RM artifact judging each step's rollouts, never optimised."
    ),
    "monitor_reward": _option(
        str | None, help="`module:function` logged per step and nothing else (e.g. the synthetic gold)."
    ),
    "prompts": _option(str | None, help="Prompts file (a pairs or sft file also serves)."),
    "margin": _option(float | None, help="Required score gap in the Bradley-Terry loss."),
    "kl_coef": _option(float | None, help="KL penalty beta."),
    "critic": _option(str | None, help="auto, rm_lora, rm_copy or policy_copy."),
    "steps": _option(int | None, "--steps", hidden=True, help="Old name of --max-steps."),
    "beta": _option(float | None, help="Strength of the pull to the reference (KL coefficient)."),
    "loss_type": _option(str | None, help="sigmoid (DPO), ipo, hinge, robust, ..."),
    "rounds": _option(
        int | None, help="Rounds of sample, judge, train (dpo: 0 is offline; rounds: refreshes after PPO)."
    ),
    "refresh_prompts": _option(str | None, help="Prompts each refresh round takes a fresh slice of."),
    "judge": _option(
        str | None, help="`module:function` ranking each round's samples (simulated annotators)."
    ),
    "num_generations": _option(int | None, help="Responses sampled per prompt."),
    "n": _option(int | None, help="Responses sampled per prompt."),
    "temperature": _option(float | None, help="Sampling temperature."),
    "label_noise": _option(float | None, help="Share of labels flipped (simulated annotators)."),
    "pairing": _option(
        str | None,
        "--pairs",
        help="best_worst (one pair per prompt) or all (every two answers scored differently).",
    ),
    "limit": _option(int | None, help="Use the first N rows."),
    "dry_run": _option(bool, "--dry-run", help="Print the resolved config and exit without running."),
    "ensemble": _option(int | None, help="Reward models trained as one ensemble (bootstrapped pairs)."),
    "ensemble_objective": _option(str | None, help="How an RM ensemble's members combine: mean, min or uwo."),
}
Recipe, Sets, EnsembleObjective = OPTIONS["recipe"], OPTIONS["sets"], OPTIONS["ensemble_objective"]
DryRun = OPTIONS["dry_run"]


def run_stage(
    stage: Stage,
    recipe: Path | None,
    flags: dict[str, Any],
    sets: list[str] | None,
    resume: bool,
    dry_run: bool,
) -> None:
    import yaml

    from align.config import build_config

    config = build_config(stage.config, recipe, flags, sets)
    if dry_run:
        typer.echo(yaml.safe_dump(config.model_dump(), sort_keys=False), nl=False)
        return
    quiet_libraries()
    typer.echo(str(stage.run(config, resume).path))


def stage_command(stage: Stage, context: bool = False) -> Callable[..., None]:
    """The command of a stage: --recipe, its flags, --resume and --set, built from the registry."""

    def command(ctx: typer.Context | None = None, **values: Any) -> None:
        if ctx is not None and ctx.invoked_subcommand is not None:
            return
        recipe, sets, resume = values.pop("recipe"), values.pop("sets"), values.pop("resume", False)
        dry_run = values.pop("dry_run")
        flags = {stage.flags[name]: value for name, value in values.items()}
        run_stage(stage, recipe, flags, sets, resume, dry_run)

    names = ["recipe", *stage.flags, *(["resume"] if stage.name != "pairs" else []), "sets", "dry_run"]
    parameters = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=False if name in ("resume", "dry_run") else None,
            annotation=OPTIONS[name],
        )
        for name in names
    ]
    if context:
        parameters.insert(
            0, inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
        )
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__doc__ = stage.summary
    return handled(command)


rm_app = typer.Typer(help=STAGES["rm"].summary + " `align rm score` applies one.")
app.add_typer(rm_app, name="rm")
rm_app.callback(invoke_without_command=True)(stage_command(STAGES["rm"], context=True))
for _name, _stage in STAGES.items():
    if _name != "rm":
        app.command(_name)(stage_command(_stage))


@rm_app.command("score")
@handled
def rm_score(
    model: _option(str, help="Reward-model artifact."),
    data: _option(str, help="File of (prompt, response) rows: any sft-shaped file."),
    output: _option(PathOption, "--output", "-o", help="JSONL to write (default: stdout).") = None,
) -> None:
    """Score every (prompt, response) row of a file with a reward model; writes JSONL with a `score`."""
    from align.rewards import score_file

    quiet_libraries()
    text = "".join(json.dumps(row) + "\n" for row in score_file(model, data))
    if output:
        output.write_text(text)
        typer.echo(str(output))
    else:
        typer.echo(text, nl=False)


@app.command()
@handled
def generate(
    model: _option(str, help="Policy artifact, model directory or hub id."),
    prompt: _option(list[str] | None, help="A user message (repeatable).") = None,
    data: _option(str | None, help="Prompts file instead of --prompt.") = None,
    temperature: _option(float, help="0 means greedy (or beam search).") = 0.7,
    top_k: _option(int, help="Sample among the k likeliest tokens (0: all).") = 0,
    top_p: _option(float, help="Nucleus sampling mass.") = 1.0,
    num_beams: _option(int, help="Beam search width (with --temperature 0).") = 1,
    repetition_penalty: _option(float, help="> 1 discourages repeated tokens.") = 1.0,
    max_new_tokens: MaxNewTokens = 64,
    batch_size: _option(int, help="Prompts per generate call.") = 32,
    seed: _option(int, help="Sampling seed.") = 0,
) -> None:
    """Generate responses (JSONL on stdout) with the model's chat template and the KV cache."""
    from align.decoding.generate import Decoding, respond

    decoding = Decoding.from_options(temperature, top_k, top_p, num_beams, repetition_penalty, max_new_tokens)
    quiet_libraries()
    for row in respond(model, prompt, data, decoding, batch_size, seed):
        typer.echo(json.dumps(row))


@app.command()
@handled
def pipeline(
    recipe: _option(Path, "--recipe", "-r", help="Pipeline recipe: run dir and stage recipes."),
    start: _option(str | None, "--from", help="Rerun from this stage on.") = None,
    only: _option(str | None, help="Run just this stage.") = None,
    run_dir: _option(
        PathOption, "--run", help="Directory of the artifacts (default: the recipe's `run`)."
    ) = None,
    sets: _option(
        list[str] | None, "--set", help="Override a stage's field: STAGE.section.field=value."
    ) = None,
    dry_run: DryRun = False,
) -> None:
    """Run the recipe's stages in order, skipping those whose config, inputs and data are unchanged."""
    from align.pipeline import run

    quiet_libraries()
    report = lambda line: typer.echo(line, err=True)  # noqa: E731
    for result in run(recipe, start, only, report=report, root=run_dir, dry_run=dry_run, sets=sets):
        typer.echo(f"{result.stage}\t{result.path}\t{'skipped' if result.skipped else 'ran'}")


@app.command("eval")
@handled
def eval_command(
    model: _option(list[str], help="Policy artifact, model directory or hub id (repeat to compare)."),
    prompts: _option(str | None, help="Held-out prompts (default: synthetic eval set).") = None,
    limit: _option(int | None, help="Evaluate the first N prompts.") = None,
    temperature: _option(float | None, help="Sampling temperature of the headline score.") = None,
    reward_model: _option(str | None, help="Also report this RM's score of the responses.") = None,
    reference: _option(str | None, help="KL reference (default: the SFT parent).") = None,
    best_of_n: _option(
        list[int] | None, help="Best-of-n baseline picked by --reward-model (repeatable)."
    ) = None,
    shortest_of_n: _option(list[int] | None, help="Shortest-of-n baseline: does saying less win?") = None,
    perplexity_data: _option(str | None, help="Text set to report perplexity on.") = None,
    judge: _option(str | None, help="RM judging the win rate (default: --reward-model, else gold).") = None,
    ensemble_objective: EnsembleObjective = None,
    json_out: _option(PathOption, "--json", help="Also write the figures to this JSON file.") = None,
    recipe: Recipe = None,
    sets: Sets = None,
) -> None:
    """Gold score (sampled and greedy, per family and flaw), RM score, KL to the SFT policy, BLEU/ROUGE,
    best-of-n, perplexity; with several --model, the win rate of each against the first."""
    from align.config import EvalConfig, build_config
    from align.evaluation import compare, print_results

    flags = {"model": model[0], "prompts": prompts, "limit": limit, "temperature": temperature}
    flags.update(reward_model=reward_model, reference=reference, perplexity_data=perplexity_data)
    flags.update(best_of_n=best_of_n or None, shortest_of_n=shortest_of_n or None)
    flags["ensemble_objective"] = ensemble_objective
    config = build_config(EvalConfig, recipe, flags, sets)
    quiet_libraries()
    results = compare(config, model, judge)
    print_results(results)
    if json_out:
        figures = results if len(model) > 1 else results["policies"][model[0]]
        json_out.write_text(json.dumps(figures, indent=2) + "\n")


@app.command()
@handled
def chat(
    model: _option(str, help="Policy artifact, model directory or hub id."),
    temperature: _option(float, help="0 means greedy.") = 0.7,
    top_p: _option(float, help="Nucleus sampling mass.") = 1.0,
    max_new_tokens: _option(int, help="Longest reply in tokens.") = 128,
    history_turns: _option(int, help="Past exchanges the model sees.") = 4,
    system: _option(str | None, help="System prompt.") = None,
    safety_model: _option(
        str | None, help="RM/classifier artifact scoring each reply (safety filter)."
    ) = None,
    safety_threshold: _option(float, help="Replies scored below this are refused.") = 0.0,
    trust_remote_code: _option(bool, "--trust-remote-code", help="Allow model code from the hub.") = False,
) -> None:
    """Chat in the terminal (one message per line; /reset clears the history, /exit or EOF quits)."""
    from align.conversation import Conversation
    from align.decoding.generate import Decoding

    decoding = Decoding.from_options(temperature, 0, top_p, 1, 1.0, max_new_tokens)
    quiet_libraries()
    session = Conversation.load(
        model, safety_model, trust_remote_code, decoding, history_turns, system, safety_threshold
    )
    for reply in session.run(sys.stdin):
        typer.echo(reply)


@app.command()
@handled
def export(
    model: _option(str, help="Policy artifact (LoRA adapters are merged)."),
    output: _option(Path, "--output", "-o", help="Export artifact directory."),
    push_to_hub: _option(
        str | None, help="Also upload the directory to this hub repo (needs network and a token)."
    ) = None,
    quantize: _option(
        str | None, help="int8: int8 block weights for inference (optimum-quanto; align loads it)."
    ) = None,
) -> None:
    """Write a plain transformers model (merged, safetensors, model card with lineage and metrics)."""
    from align.export import run

    quiet_libraries()
    artifact = run(model, output, push_to_hub, quantize)
    loader = "align.models.load_int8" if quantize else "AutoModelForCausalLM.from_pretrained"
    typer.echo(f"{artifact.model_dir}  ({loader} loads it)")


@app.command()
@handled
def report(
    run_dir: Annotated[Path, typer.Argument(help="Directory holding the artifacts of a run.")],
    output: _option(PathOption, "--output", "-o", help="Default: RUN_DIR/report.") = None,
) -> None:
    """PNG plots (losses, RM accuracy, PPO curves, reward-KL frontier, gold vs proxy) and report.md."""
    from align.report import build

    typer.echo(str(build(run_dir, output)))


Host = _option(str, help="Address to bind (127.0.0.1: this machine only).")
Port = _option(int, help="Port of the page.")
Annotator = _option(str, help="Who judges; stored in every row.")
Annotators = _option(
    str | None, help="a,b,c: one token (link) per annotator; each row's annotator is its token's."
)
PromptsFile = _option(str, help="Prompts file (a pairs or sft file also serves).")
FirstN = _option(int | None, help="Judge the first N prompts.")
Temperature = _option(float, help="Sampling temperature (> 0).")
MaxNewTokens = _option(int, help="Longest response in tokens.")
Judge = (_option(str | None, "--reward", help="Judge headless with a reward `module:function`."),
         _option(str | None, "--reward-model", help="Judge headless with a reward-model artifact."))  # fmt: skip


@app.command()
@handled
def label(
    model: _option(str | None, help="Policy whose responses are ranked.") = None,
    data: _option(str | None, help="Prompts file (a pairs or sft file also serves).") = None,
    output: _option(Path | None, "--output", "-o", help="Rankings file (appended; resumes).") = None,
    round_: _option(
        Path | None, "--round", help="A round of `align rounds` waiting for people: its saved answers."
    ) = None,
    k: _option(int, help="Responses per prompt.") = 4,
    limit: FirstN = None,
    temperature: Temperature = 1.0,
    max_new_tokens: MaxNewTokens = 64,
    seed: _option(int, help="Sampling seed (per prompt).") = 0,
    annotator: Annotator = "anonymous",
    annotators: Annotators = None,
    host: Host = "127.0.0.1",
    port: Port = 7860,
    reward: Judge[0] = None,
    reward_model: Judge[1] = None,
    ensemble_objective: EnsembleObjective = None,
) -> None:
    """Rank K sampled responses per prompt in the browser; rows feed `align rm` unchanged. With --round,
    the answers a paused `align rounds` saved, into that round's label file."""
    from align.feedback import label_task, round_label_task, run_task

    quiet_libraries()
    if round_ is not None:
        task = round_label_task(round_, annotator)
    elif model and data and output:
        task = label_task(model, data, output, k, limit, temperature, max_new_tokens, seed, annotator)
    else:
        raise ConfigError("give --model, --data and --output, or --round (a round waiting for labels)")
    names = annotators.split(",") if annotators else []
    run_task(task, "label.html", host, port, (reward, reward_model, ensemble_objective), typer.echo, names)


@app.command()
@handled
def arena(
    model_a: _option(str, help="Policy A."),
    model_b: _option(str, help="Policy B (the win rate is B's)."),
    data: PromptsFile,
    output: _option(Path, "--output", "-o", help="Votes file (appended; resumes)."),
    limit: FirstN = None,
    temperature: Temperature = 0.7,
    max_new_tokens: MaxNewTokens = 64,
    seed: _option(int, help="Sampling and side-shuffling seed.") = 0,
    annotator: Annotator = "anonymous",
    annotators: Annotators = None,
    host: Host = "127.0.0.1",
    port: Port = 7861,
    reward: Judge[0] = None,
    reward_model: Judge[1] = None,
    ensemble_objective: EnsembleObjective = None,
) -> None:
    """Blind side-by-side votes between two policies with a live win rate; votes are saved as pairs."""
    from align.feedback import arena_task, run_task

    quiet_libraries()
    task = arena_task(model_a, model_b, data, output, limit, temperature, max_new_tokens, seed, annotator)
    names = annotators.split(",") if annotators else []
    run_task(task, "arena.html", host, port, (reward, reward_model, ensemble_objective), typer.echo, names)


@app.command()
@handled
def show(path: Annotated[Path, typer.Argument(help="Artifact directory.")]) -> None:
    """Print an artifact's stage, lineage, data and metrics."""
    from align.artifacts import describe, load_artifact

    console().print(*describe(load_artifact(path)), sep="\n")


@app.command()
@handled
def verify(path: Annotated[Path, typer.Argument(help="Artifact directory.")]) -> None:
    """Re-hash every file of an artifact; exit 1 if any was modified."""
    from align.artifacts import verify as verify_artifact

    problems = verify_artifact(path)
    for problem in problems:
        typer.echo(f"{path}: {problem}")
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{path}: ok")


@data_app.command("inspect")
@handled
def data_inspect(
    source: Annotated[str, typer.Argument(help="Data file, directory or hub id.")],
    kind: _option(str, help="text, sft, pairs or prompts.") = "sft",
    tokenizer: _option(str | None, help="Model/artifact whose tokenizer measures lengths.") = None,
) -> None:
    """Normalise a data file as a stage would and report rows, drops, token lengths and two examples."""
    from align.data.inspect import inspect as inspect_data

    quiet_libraries()
    console().print(inspect_data(source, kind, tokenizer))


@data_app.command("synth")
@handled
def data_synth(
    output: _option(Path, "--output", "-o", help="Directory for the generated files.") = Path(
        "data/synthetic"
    ),
    seed: _option(int | None, help="Generator seed.") = None,
    preset: _option(
        str | None, help="default (alignment flaws) or hard (the earlier, capability-bound mix)."
    ) = None,
    sets: Sets = None,
) -> None:
    """Generate the synthetic tasks (corpus, SFT demos, pairs, PPO, refresh, dev, eval and fresh prompts),
    bit-identically."""
    from align.config import build_config
    from align.data.synthetic_sets import SynthSettings, write

    settings = build_config(SynthSettings, None, {"seed": seed, "preset": preset}, sets)
    for name, digest in write(settings, output).items():
        typer.echo(f"{output / name}  sha256 {digest[:16]}")


@data_app.command("check")
@handled
def data_check(
    directory: Annotated[Path, typer.Argument(help="Directory of synthetic sets.")] = Path("data/synthetic"),
) -> None:
    """Check on the files that no dev, eval or fresh prompt's task is stated in any training input."""
    from align.data.leaks import check

    report = check(directory)
    typer.echo(f"{directory}: {report.summary()}")
    if report.problems:
        raise typer.Exit(2)


if __name__ == "__main__":
    sys.exit(app())
