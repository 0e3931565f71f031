"""What every benchmark shares: the `--device` flag, the machine line, random models of named sizes,
and the one JSON line each prints."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

# GPT-2 shapes: the offline default's micro and tiny models, and the published sizes (random weights:
# throughput and memory do not depend on the values, and no machine here reaches the hub).
SIZES = {
    "micro": {"n_layer": 4, "n_embd": 128, "n_head": 4, "vocab_size": 1024, "n_positions": 256},
    "tiny": {"n_layer": 4, "n_embd": 192, "n_head": 4, "vocab_size": 1024, "n_positions": 256},
    "gpt2": {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024},
    "gpt2-medium": {"n_layer": 24, "n_embd": 1024, "n_head": 16, "vocab_size": 50257, "n_positions": 1024},
}
H100_BF16_DENSE_FLOPS = 989e12


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")


def device_of(args: argparse.Namespace) -> torch.device:
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device on this machine")
    return torch.device(args.device)


def align(*args: str, env: dict[str, str] | None = None) -> float:
    """`align ARGS` in a quiet subprocess; the seconds it took. A failure shows the end of what the
    command printed (its one-line error) before it stops the study."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "align.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    if done.returncode:
        sys.stderr.write("\n".join(done.stderr.splitlines()[-5:]) + "\n")
        done.check_returncode()
    return round(time.perf_counter() - start, 1)


def run_stage(device: torch.device, stage: str, output: Path, *args: str) -> list[dict[str, Any]]:
    """`align STAGE ... --output OUTPUT` in a quiet subprocess (`--device cpu` hides any GPU from it);
    the rows it logged to logs/metrics.jsonl."""
    env = dict(os.environ)
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    align(stage, *args, "--output", str(output), env=env)
    return [json.loads(line) for line in (output / "logs/metrics.jsonl").read_text().splitlines()]


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{platform.machine()} {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}, torch {torch.__version__}"


def gpt2_config(size: str, **overrides: Any) -> Any:
    from transformers import GPT2Config

    settings = {
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    return GPT2Config(**{**SIZES[size], **settings, **overrides})


def random_gpt2(size: str) -> Any:
    """The model exactly as transformers builds it: the plain-HF baselines run on it unchanged."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(gpt2_config(size)).eval()


def random_model_dir(
    size: str, root: Path, hub_defaults: bool = False, texts: list[str] | None = None
) -> Path:
    """A local HF model directory (random GPT-2 of `size`, a small BPE tokenizer) that `--model` accepts.
    With `hub_defaults`, laid out as a hub GPT-2 checkpoint is: dropout 0.1 in its three places, and a
    byte-level BPE whose only special token is `<|endoftext|>` (no pad token, no chat template)."""
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    from align.config import TokenizerSettings
    from align.text.bpe import train_tokenizer

    directory = root / size
    if texts is None:
        rows = [json.loads(line) for line in Path("data/synthetic/sft.jsonl").read_text().splitlines()[:2000]]
        texts = [row["prompt"] + " " + row["completion"] for row in rows]
    tokenizer = train_tokenizer(texts, TokenizerSettings(vocab_size=1024))
    if hub_defaults:
        eos = tokenizer.eos_token
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer.backend_tokenizer, bos_token=eos, eos_token=eos, unk_token=eos
        )
    torch.manual_seed(0)
    dropout = dict(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1) if hub_defaults else {}
    config = gpt2_config(size, **dropout)  # the size's own vocabulary, at least the tokenizer's
    config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = None if hub_defaults else tokenizer.eos_token_id
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)
