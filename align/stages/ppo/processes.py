"""The data-parallel group a PPO run spans under `accelerate launch` (a group of one when run plainly).

Each process samples its own share of every step's rollouts; gradients are averaged by the DDP wrappers
`Accelerator.prepare` puts around the policy and the critic; everything that is a statistic of the
whole batch (advantage and reward whitening, the KL that drives the adaptive coefficient, the
approx-KL early stop, the logged metrics) is reduced here, so N processes x B/N rollouts compute
what one process with B rollouts would.
"""

from __future__ import annotations

from typing import Any

import torch

from align.errors import ConfigError


class Processes:
    def __init__(self, accelerator: Any):
        self.accelerator = accelerator
        self.rank, self.size = accelerator.process_index, accelerator.num_processes
        self.is_main = accelerator.is_main_process

    def share(self, total: int, name: str) -> int:
        """This process's share of a global batch size (`ppo.rollouts`, `ppo.mini_batch_size`)."""
        if total % self.size:
            raise ConfigError(f"{name}={total} must be divisible by the {self.size} processes")
        return total // self.size

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over the processes."""
        if self.size == 1:
            return value
        from accelerate.utils import reduce

        return reduce(value.float(), reduction="sum")

    def mean(self, values: dict[str, Any]) -> dict[str, Any]:
        """The numeric entries averaged over the processes (equal shares: the mean of the whole batch)."""
        if self.size == 1:
            return values
        keys = [k for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        vector = torch.tensor([float(values[k]) for k in keys], device=self.accelerator.device)
        averaged = self.total(vector) / self.size
        return {**values, **dict(zip(keys, averaged.tolist(), strict=True))}

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()
