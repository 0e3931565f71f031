"""Run under `accelerate launch` with 2 processes by tests/e2e/test_distributed.py: each process holds
half of a batch and reduces its statistics the way the PPO loop does; they must equal the statistics
of the whole batch computed by one process."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from align.distributed import on_accelerator
from align.stages.ppo import core
from align.stages.ppo.processes import Processes


def main() -> None:
    processes = Processes(Accelerator(cpu=not on_accelerator()))
    assert processes.size == 2, processes.size
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(8, 5, generator=generator)
    mask = (torch.rand(8, 5, generator=generator) > 0.3).float()
    mine = slice(4 * processes.rank, 4 * processes.rank + 4)
    for shift_mean in (True, False):  # advantages are shifted and scaled, rewards only scaled
        whole = core.masked_whiten(values, mask, shift_mean=shift_mean)
        half = core.masked_whiten(values[mine], mask[mine], shift_mean=shift_mean, total=processes.total)
        torch.testing.assert_close(half, whole[mine])
    kl = values * mask  # the adaptive controller's KL: summed per sequence, averaged over all rollouts
    torch.testing.assert_close(processes.total(kl[mine].sum()) / len(values), kl.sum(1).mean())
    logged = processes.mean({"score": values[mine].mean().item(), "samples": ["kept as is"]})
    assert abs(logged["score"] - values.mean().item()) < 1e-6 and logged["samples"] == ["kept as is"]
    print(f"process {processes.rank}: statistics are global", flush=True)


if __name__ == "__main__":
    main()
