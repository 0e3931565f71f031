"""Every command quoted in README.md (bash blocks and inline code) and in a recipe's header runs as
written, on micro settings: in a scratch directory holding copies of `data/`, `recipes/` and the session's
micro artifacts as `runs/tiny/`, hub ids replaced by local substitutes (the micro policy as a hub-layout
GPT-2 directory, the shared HH-RLHF and Alpaca slices), and each command given the flags that shrink it
to a few steps. A launch on more processes than this machine has, on several machines or under DeepSpeed
is validated instead: its accelerate config must load and the align command it launches must resolve
its whole config (`--dry-run`). The browser pages run with a scripted judge instead of a person.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SHARED_DATA, sets

LAUNCHERS = ("accelerate launch ", "torchrun ")
JUDGE = "align.data.synthetic:gold_reward"
MICRO_PPO = ("ppo.rollouts=8", "ppo.mini_batch_size=8", "ppo.micro_batch_size=8", "ppo.max_new_tokens=8")
MICRO_DATA = ("limit=48", "max_length=96", "train.batch_size=4", "train.grad_accum=1", "train.save_steps=0")
MICRO_ONLINE = (
    "limit=8",
    "train.batch_size=4",
    "train.save_steps=0",
    "num_generations=2",
    "max_new_tokens=8",
)
MICRO_ARCH = (
    "arch.n_layer=1",
    "arch.n_embd=32",
    "arch.n_head=2",
    "tokenizer.vocab_size=300",
    "block_size=32",
)
# each stage's --set assignments that make it run in seconds
MICRO = {
    "pretrain": MICRO_ARCH,
    "sft": MICRO_DATA,
    "rm": MICRO_DATA,
    "dpo": (*MICRO_DATA, "sampling.n=4", "sampling.prompts_per_round=16"),
    "ppo": (*MICRO_PPO, "train.save_steps=0"),
    "grpo": MICRO_ONLINE,
    "rloo": MICRO_ONLINE,
    "pairs": ("limit=64", "sampling.n=4", "sampling.max_new_tokens=8"),
}
# iterated RLHF: one refresh round of 8 prompts, each round's PPO and RM shrunk as above
MICRO["rounds"] = (
    "rounds=1",
    "steps=[2, 2]",
    "sampling.prompts_per_round=8",
    "sampling.n=2",
    "sampling.max_new_tokens=8",
    "overrides="
    + json.dumps(
        {
            "ppo": dict(item.split("=") for item in MICRO["ppo"]),
            "rm": {
                **dict(item.split("=") for item in MICRO["rm"]),
                "train.max_steps": 2,
                "truncation": "keep_end",
            },
        }
    ),
)
# the flags appended to a command to shrink it (flags given later win; --set adds to the list)
SHRINK: dict[str, list[str]] = {
    **{stage: ["--max-steps", "2", *sets(*assignments)] for stage, assignments in MICRO.items()},
    # a judge that tells apart even a micro policy's answers, in place of gold (or people)
    "rounds": ["--judge", "tests.rewards:longer", *sets(*MICRO["rounds"])],
    "pairs": sets(*MICRO["pairs"]),
    "eval": ["--limit", "8"],
    "label": ["--limit", "2", "--k", "2", "--reward", JUDGE],
    "arena": ["--limit", "2", "--reward", JUDGE],
    "pipeline": sets(
        *(
            f"{stage}.{assignment}"
            for stage in ("pretrain", "sft", "rm", "ppo", "dpo")
            for assignment in ("train.max_steps=2", *MICRO[stage])
        )
    ),
}


def readme_commands() -> list[str]:
    """Lines of bash blocks (continuations joined, comments cut) and inline code spans that start with
    `align` and give a flag; a synopsis (`align STAGE [--recipe FILE] …`) is the CLI's grammar, not a command."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(("align ", *LAUNCHERS)):
                commands.append(line)
    commands += [span for span in re.findall(r"`(align [^`]+)`", text) if " --" in span]
    return [c for c in commands if not re.search(r"\[|\bSTAGE\b", c)]


def recipe_commands() -> list[str]:
    """The commands in the leading comment lines of every recipe: a comment that is a command, or a
    label and a colon followed by one (`# 8 GPUs: accelerate launch ...`)."""
    command = re.compile(r"^#\s*(?:[^:]*:\s+)?((?:align|accelerate launch|torchrun) .*)$")
    commands = []
    for recipe in sorted((REPO / "recipes").rglob("*.yaml")):
        for line in recipe.read_text().splitlines():
            if not line.startswith("#"):
                break
            found = command.match(line)
            if found:
                commands.append(re.sub(r"\s{2,}\(.*\)$", "", found.group(1)).strip())
    return commands


def unique(commands: list[str]) -> list[str]:
    return list(dict.fromkeys(" ".join(c.split()) for c in commands))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, micro_evaluated: Path, micro_hub_sft: Path) -> Path:
    """A directory laid out like a checkout after `make demo`, its runs/tiny the micro run, and the GPT-2
    recipes pointing at local substitutes for their hub ids."""
    root = tmp_path_factory.mktemp("documented")
    shutil.copytree(REPO / "data", root / "data")
    shutil.copytree(REPO / "recipes", root / "recipes")
    shutil.copytree(micro_evaluated, root / "runs/tiny", ignore=shutil.ignore_patterns("hub_*"))
    substitutes = {
        "model: gpt2": f"model: {micro_hub_sft}",
        "tatsu-lab/alpaca": str(SHARED_DATA / "alpaca/alpaca-data-subset-train-4500.json"),
        "Anthropic/hh-rlhf": str(SHARED_DATA / "hh-rlhf/harmless-base-test-slice-dev-500.jsonl.gz"),
    }
    for recipe in (root / "recipes/gpt2").glob("*.yaml"):
        text = recipe.read_text()
        for hub, local in substitutes.items():
            text = text.replace(hub, local)
        recipe.write_text(text)
    # the "other data" a recipe header names: a user's own file
    rows = (REPO / "data/synthetic/sft.jsonl").read_text().splitlines()[:64]
    (root / "my.jsonl").write_text("\n".join(rows) + "\n")
    return root


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL
    )


def fits_this_machine(launcher: list[str], cwd: Path) -> bool:
    """A single-machine launch of at most this machine's cores, not DeepSpeed: run it; else validate."""
    cores = os.cpu_count() or 1
    if launcher[0] == "torchrun":
        return int(launcher[launcher.index("--nproc_per_node") + 1]) <= cores
    config = yaml.safe_load((cwd / launcher[launcher.index("--config_file") + 1]).read_text())
    return (
        config.get("num_machines", 1) == 1
        and config.get("num_processes", 1) <= cores
        and config.get("distributed_type") != "DEEPSPEED"
    )


def check(command: str, cwd: Path) -> str | None:
    """Run (or validate) one documented command; why it failed, or None."""
    argv = shlex.split(command)
    cut = 1 if argv[0] == "align" else argv.index("align.cli") + 1
    launcher, align_args = argv[:cut], argv[cut:]
    shrink = [] if align_args[:2] == ["rm", "score"] else SHRINK.get(align_args[0], [])
    if launcher == ["align"]:
        result = run([sys.executable, "-m", "align.cli", *align_args, *shrink], cwd)
    elif fits_this_machine(launcher, cwd):  # the launchers' own modules: the same programs
        module = ["accelerate.commands.launch", *launcher[2:]] if launcher[0] == "accelerate" else None
        module = module or ["torch.distributed.run", *launcher[1:]]
        result = run([sys.executable, "-m", *module, *align_args, *shrink], cwd)
    else:
        from accelerate.commands.config.config_args import load_config_from_file

        if "--config_file" in launcher:
            load_config_from_file(str(cwd / launcher[launcher.index("--config_file") + 1]))
        result = run([sys.executable, "-m", "align.cli", *align_args, "--dry-run"], cwd)
    if result.returncode != 0:
        return f"{command}\n  exit {result.returncode}: {result.stderr.strip()[-1500:]}"
    return None if "--dry-run" in result.args else damaged_output(align_args, cwd)


def damaged_output(align_args: list[str], cwd: Path) -> str | None:
    """What is wrong with the artifact a command says it wrote (its --output, or its recipe's), if any:
    exit 0 is not enough, the artifact must exist and re-hash."""
    from align.artifacts import verify

    output = next((align_args[i + 1] for i, a in enumerate(align_args[:-1]) if a in ("--output", "-o")), None)
    if output is None and "--recipe" in align_args:
        recipe = yaml.safe_load((cwd / align_args[align_args.index("--recipe") + 1]).read_text())
        output = recipe.get("output") if isinstance(recipe, dict) else None
    if output is None or not (cwd / output / "manifest.json").exists():
        return None  # a command that writes no artifact (eval, report, data tools)
    problems = verify(cwd / output)
    return (
        f"{' '.join(align_args)}\n  wrote {output}, which does not verify: {problems}" if problems else None
    )


def test_the_extraction_finds_the_documented_commands() -> None:
    """The rules above keep what a reader would copy: the quick-start stages, the launch lines, the tools."""
    readme, recipes = unique(readme_commands()), unique(recipe_commands())
    assert any(c.startswith("align eval --model runs/tiny/ppo") for c in readme)
    assert any(
        c.startswith("accelerate launch --config_file recipes/accelerate/cpu2-fsdp.yaml") for c in readme
    )
    assert "align ppo --recipe recipes/tiny/ppo.yaml --reward align.data.synthetic:gold_reward" in recipes
    assert "align sft --recipe recipes/gpt2/sft_alpaca.yaml" in recipes
    assert not any("STAGE" in c or "[" in c for c in readme + recipes)


# the order the recipe commands run in, so each finds its inputs: the GPT-2 chain by stage; the tiny
# recipes on the micro run as it is, the ones that rebuild its SFT policy and base last (a base trained
# for two steps says nothing a gold judge can rank)
GPT2_ORDER = ("sft", "rm", "ppo", "rounds", "dpo")
TINY_ORDER = ("pairs", "rm", "ppo", "rounds", "dpo", "grpo", "rloo", "sft", "pretrain")


def rank(command: str) -> tuple[bool, int]:
    order = GPT2_ORDER if "recipes/gpt2/" in command else TINY_ORDER
    stage = next((word for word in command.split() if word in order), None)
    return order is TINY_ORDER, order.index(stage) if stage else len(order)


def documented(gpt2: bool) -> list[str]:
    """The recipe headers (in `rank` order), then README in reading order: the GPT-2 ones or the others."""
    commands = sorted(unique(recipe_commands()), key=rank) + unique(readme_commands())
    return [command for command in unique(commands) if ("recipes/gpt2/" in command) == gpt2]


def test_every_gpt2_recipe_command_runs(workspace: Path) -> None:
    if not SHARED_DATA.is_dir():  # the GPT-2 recipes' local substitutes for hub datasets are those slices
        pytest.skip(f"real data slices not found at {SHARED_DATA}: the recipes/gpt2/ commands need them")
    failures = [reason for command in documented(gpt2=True) if (reason := check(command, workspace))]
    assert not failures, "\n".join(failures)


def test_every_other_documented_command_runs(workspace: Path) -> None:
    failures = [reason for command in documented(gpt2=False) if (reason := check(command, workspace))]
    assert not failures, "\n".join(failures)
