"""PPO checkpoints for `--resume`: everything needed to continue bit-for-bit.

    <output>.partial/checkpoints/step-N/
      policy.safetensors, critic.safetensors   the trainable weights, whole (FSDP shards gathered)
      optimizers.pt                            both AdamW states, whole, keyed by parameter name
      state.pt                                 the loop's generator, prompt and PPO-ptx orders
      rng-<rank>.pt                            each process's torch random state (`generate` draws from it)
      progress.json                            step, KL controller, logged history, validation curve
    <output>.partial/checkpoints/best/policy.safetensors   the best validation step's policy (keep-best)

Gathering is a collective, so every process takes part; only the main process writes, then all wait.
A checkpoint is written as `.step-N.tmp`, sealed with every file's sha256 (`align/checkpoints.py`)
and renamed when complete; the last `train.save_total_limit` are kept. `--resume` loads the newest one
that re-hashes intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from align.checkpoints import newest_intact, seal
from align.errors import DataError

if TYPE_CHECKING:
    from align.stages.ppo.loop import PPOLoop

_GATHERED = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def save(loop: PPOLoop) -> None:
    root, processes = loop.writer.checkpoints_dir, loop.processes
    final, tmp = root / f"step-{loop.step}", root / f".step-{loop.step}.tmp"
    weights, optimizers = {}, {}
    for name, model, optimizer in _trained(loop):
        weights[name], optimizers[name] = _full_state(model, optimizer)
    if processes.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    processes.wait()
    torch.save({"rng": torch.get_rng_state()}, tmp / f"rng-{processes.rank}.pt")  # each process its own
    processes.wait()
    if processes.is_main:
        for name, state in weights.items():
            save_file(
                {k: v.clone() for k, v in state.items()}, str(tmp / f"{name}.safetensors")
            )  # tied: apart
        torch.save(optimizers, tmp / "optimizers.pt")
        torch.save(
            {
                "generator": loop.generator.get_state(),
                "order": torch.tensor(loop.order, dtype=torch.long),
                "ptx_order": torch.tensor(loop.ptx_order, dtype=torch.long),
            },
            tmp / "state.pt",
        )
        progress = {"step": loop.step, "kl": loop.kl.state_dict(), "history": loop.logbook.history}
        if loop.data.validation is not None:
            progress["validation"] = loop.data.validation.state_dict()
        (tmp / "progress.json").write_text(json.dumps(progress))
        seal(tmp)
        tmp.rename(final)
        for old in checkpoints(root)[: -loop.train_settings.save_total_limit]:
            shutil.rmtree(old)
    processes.wait()


def load(loop: PPOLoop) -> None:
    """Restore the newest complete checkpoint, if any, into the loop (every process reads it)."""
    processes, latest = loop.processes, None
    if processes.is_main:  # the main process checks and sets aside; every process loads what it found
        try:
            latest = newest_intact(checkpoints(loop.writer.checkpoints_dir))
        except DataError as exc:
            latest = exc
    latest = processes.from_main(latest)
    if isinstance(latest, DataError):
        raise latest
    if latest is None:
        return
    optimizers = torch.load(latest / "optimizers.pt", weights_only=True)
    for name, model, optimizer in _trained(loop):
        _set_full_state(model, optimizer, load_file(str(latest / f"{name}.safetensors")), optimizers[name])
    rng = latest / f"rng-{processes.rank}.pt"
    if not rng.exists():
        raise DataError(
            f"{latest}: no random state for process {processes.rank}; resume with as many processes as wrote it"
        )
    torch.set_rng_state(torch.load(rng, weights_only=True)["rng"])
    state = torch.load(latest / "state.pt", weights_only=True)
    loop.generator.set_state(state["generator"])
    loop.order, loop.ptx_order = state["order"].tolist(), state["ptx_order"].tolist()
    progress = json.loads((latest / "progress.json").read_text())
    loop.step, loop.logbook.history = progress["step"], progress["history"]
    loop.kl.load_state_dict(progress["kl"])
    if "validation" in progress:
        loop.data.validation.load_state_dict(progress["validation"])
    loop.logbook.truncate(loop.step)  # steps logged after this checkpoint are about to be run again


def save_best(loop: PPOLoop) -> None:
    """The policy's trainable weights at the best validation step, apart from the rolling checkpoints."""
    weights = full_weights(loop.policy)  # a collective: every process takes part
    if loop.processes.is_main:
        best = loop.writer.checkpoints_dir / "best"
        best.mkdir(parents=True, exist_ok=True)
        save_file({k: v.clone() for k, v in weights.items()}, str(best / ".policy.tmp"))
        (best / ".policy.tmp").replace(best / "policy.safetensors")
    loop.processes.wait()


def restore_best(loop: PPOLoop) -> None:
    """Put the best step's weights back into the policy (the artifact then holds them)."""
    weights = load_file(str(loop.writer.checkpoints_dir / "best" / "policy.safetensors"))
    set_model_state_dict(loop.policy, weights, options=StateDictOptions(full_state_dict=True, strict=False))


def checkpoints(root: Path) -> list[Path]:
    """The complete checkpoints under `root`, oldest first."""
    return sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


def _trained(loop: PPOLoop) -> list[tuple[str, torch.nn.Module, torch.optim.Optimizer]]:
    return [
        ("policy", loop.policy, loop.policy_optimizer.optimizer),
        ("critic", loop.critic, loop.critic_optimizer.optimizer),
    ]


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights, whole and on CPU (gathered from FSDP2 shards: a collective; under several
    processes only the main one gets them)."""
    return get_model_state_dict(model, options=_GATHERED)


def _full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    return full_weights(model), get_optimizer_state_dict(model, optimizer, options=_GATHERED)


def _set_full_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optimizer_state: dict
) -> None:
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(
        model, optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True)
    )
