"""The process group a stage runs in under `accelerate launch` or torchrun (a group of one otherwise).

The first use fixes accelerate's shared state for the whole process, so every caller goes through
`process_state`: on a machine without a GPU it asks for CPU processes, which join over gloo (asked
without it, accelerate would start each of them as a separate single process).

`Processes` is what our own PPO loop needs of the group: its share of a global batch, sums and maxima
over the processes, and the rows every process sampled gathered into one batch in global order.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from align.errors import ConfigError


def process_state() -> Any:
    from accelerate import PartialState

    return PartialState(cpu=not on_accelerator())


def on_accelerator() -> bool:
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def launched() -> bool:
    """Started by a multi-process launcher."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_rank() -> int:
    """This process's index in the group (0 when running alone)."""
    return process_state().process_index if launched() else 0


def wait_for_all_processes() -> None:
    if launched():
        process_state().wait_for_everyone()


def close_process_group() -> None:
    """Leave the process group before exiting: a process that exits with gloo's threads still running
    can abort at interpreter shutdown ("terminate called without an active exception")."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def make_accelerator(trackers: list[str] | None = None) -> Any:
    """An `Accelerator` for a loop of our own, logging to `trackers` (accelerate's names). accelerate
    shards with FSDP only on accelerators; on CPU processes (gloo), which torch's FSDP2 runs as well, a
    launch config that asks for FSDP2 is honoured here by switching accelerate's state to it, so the same
    code path is tested without a GPU."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator = Accelerator(cpu=not on_accelerator(), log_with=trackers or None)
    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if wants_fsdp and accelerator.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()  # filled from the launch config's FSDP_* variables
        if plugin.fsdp_version != 2:
            raise ConfigError("FSDP on CPU processes needs fsdp_version: 2 in the launch config")
        PartialState().distributed_type = DistributedType.FSDP
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
    return accelerator


def is_sharded(module: torch.nn.Module) -> bool:
    """Its parameters are FSDP2 shards (DTensors): reading them outside its forward needs a gather."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A parameter as one plain tensor: gathered from every process when it is an FSDP2 shard (every
    process must then gather the same tensors in the same order), detached as it is otherwise."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor.detach()


class Processes:
    """The data-parallel group of one run, with the reductions the PPO loop needs."""

    def __init__(self, accelerator: Any):
        self.accelerator = accelerator
        self.rank, self.size = accelerator.process_index, accelerator.num_processes
        self.is_main = accelerator.is_main_process

    @property
    def sharded(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.FSDP

    def share(self, total: int, name: str) -> int:
        """This process's share of a global batch size (`ppo.rollouts`, `ppo.mini_batch_size`)."""
        if total % self.size:
            raise ConfigError(f"{name}={total} must be divisible by the {self.size} processes")
        return total // self.size

    def mine(self, items: Any) -> Any:
        """This process's slice of a global sequence: every `size`-th item from its rank on."""
        return items[self.rank :: self.size]

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over the processes."""
        if self.size == 1:
            return value
        from accelerate.utils import reduce

        return reduce(value.float(), reduction="sum")

    def maximum(self, value: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return value
        gathered = self.accelerator.gather(value.float().reshape(1))
        return gathered.max()

    def gather_rows(self, tensor: torch.Tensor, pad: float, left: bool = False) -> torch.Tensor:
        """Every process's rows [b, ...] padded to the widest along dim 1, as [size * b, ...] in global
        order (the inverse of `mine`)."""
        if self.size == 1:
            return tensor
        from accelerate.utils import gather, pad_across_processes

        if tensor.dim() > 1:
            tensor = pad_across_processes(tensor, dim=1, pad_index=pad, pad_first=left)
        stacked = gather(tensor.contiguous())
        return self.interleave(stacked)

    def gather_objects(self, items: list[Any]) -> list[Any]:
        if self.size == 1:
            return items
        from accelerate.utils import gather_object

        return self.interleave(gather_object(items))

    def interleave(self, rank_major: Any) -> Any:
        """[rank 0's rows, rank 1's rows, ...] -> global order, where global row g belongs to rank
        g % size as its (g // size)-th row."""
        per = len(rank_major) // self.size
        order = [(g % self.size) * per + g // self.size for g in range(len(rank_major))]
        if isinstance(rank_major, torch.Tensor):
            return rank_major[torch.tensor(order, device=rank_major.device)]
        return [rank_major[i] for i in order]

    def from_main(self, value: Any) -> Any:
        """The main process's `value`, on every process (a collective)."""
        if self.size == 1:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()
