"""Run under `accelerate launch` with 2 processes by tests/e2e/test_distributed.py: each process holds its
slice of a batch (every second row, as PPO deals prompts out) with its own padding width; gathered, the
rows come back whole and in global order on every process, and sums and maxima are global."""

from __future__ import annotations

import torch

from align.distributed import Processes, close_process_group, make_accelerator


def main() -> None:
    processes = Processes(make_accelerator())
    assert processes.size == 2, processes.size
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(8, 5, generator=generator)
    mine = processes.mine(values)
    width = 5 - processes.rank  # rank 1 holds one column less, as a rollout of shorter responses would
    gathered = processes.gather_rows(mine[:, :width].contiguous(), pad=0.0)
    expected = values.clone()
    expected[1::2, 4] = 0.0  # rank 1's rows, padded back to the widest
    torch.testing.assert_close(gathered, expected)
    left = processes.gather_rows(mine[:, 5 - width :].contiguous(), pad=-1.0, left=True)
    assert left[1::2, 0].eq(-1.0).all() and torch.equal(left[0::2], values[0::2])
    texts = processes.gather_objects([f"row {i}" for i in range(processes.rank, 8, 2)])
    assert texts == [f"row {i}" for i in range(8)], texts
    assert abs(processes.total(mine.sum()).item() - values.sum().item()) < 1e-5
    assert processes.maximum(mine.max()).item() == values.max().item()
    print(f"process {processes.rank}: statistics are global", flush=True)
    close_process_group()


if __name__ == "__main__":
    main()
