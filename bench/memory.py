"""PPO memory: our default layout against the naive four-model layout, on GPT-2-small-sized models.

    python bench/memory.py [--device cpu|cuda] [--size gpt2|tiny|...]

Ours is what `align ppo` builds with its own function (`networks.build`): the policy
with a LoRA adapter whose reference is the same weights with the adapter off, and the critic as a
LoRA adapter plus value head on the reward model's trunk, so two trunks. The naive layout holds the
policy, a frozen reference, a critic and the RM as four full models, policy and critic trained in
full. Counted: the bytes of every distinct tensor each layout holds (weights and buffers) plus
Adam's two moments per trainable parameter; activations are the same in both and left out. On CUDA
the bytes our layout allocates on the device are reported too. Random weights (no
hub here): memory does not depend on their values. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from harness import SIZES, add_device, device_of, emit, gpt2_config, machine, random_model_dir


def tensor_bytes(*modules: torch.nn.Module) -> tuple[int, int]:
    """(bytes of distinct weights and buffers, bytes of Adam state for the trainable ones)."""
    seen: dict[int, tuple[int, bool]] = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            key = tensor.untyped_storage().data_ptr()
            size = tensor.untyped_storage().nbytes()
            trainable = seen.get(key, (0, False))[1] or tensor.requires_grad
            seen[key] = (size, trainable)
    weights = sum(size for size, _ in seen.values())
    adam = sum(2 * size for size, trainable in seen.values() if trainable)
    return weights, adam


def ours(size: str, device: torch.device, root: Path) -> tuple[dict[str, int], list[torch.nn.Module]]:
    from transformers import AutoModelForSequenceClassification

    from align.config import PPOConfig, build_config
    from align.models import fuse_activations, load_tokenizer, resolve_model
    from align.rewards import RewardModel
    from align.stages.ppo.networks import build

    policy_dir = random_model_dir(size, root)
    config = build_config(
        PPOConfig,
        "recipes/tiny/ppo.yaml",
        {"model": str(policy_dir), "reward_model": None, "output": "unused"},
    )
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source)
    torch.manual_seed(0)
    rm_model = fuse_activations(
        AutoModelForSequenceClassification.from_config(gpt2_config(size, num_labels=1))
    )
    scorer = RewardModel(rm_model.to(device), tokenizer)
    networks = build(config, source, tokenizer, scorer, device, sharded=False)
    with networks.reference() as reference_model:
        weights, adam = tensor_bytes(networks.policy, reference_model, networks.critic, scorer.model)
    return {"layout": networks.layout, "weights_bytes": weights, "adam_bytes": adam}, networks.policy


def naive(policy: torch.nn.Module, size: str) -> dict[str, int]:
    from transformers import AutoModelForSequenceClassification

    full_policy = policy.merge_and_unload()
    policy_copy, reference, critic = (copy.deepcopy(full_policy) for _ in range(3))
    reference.requires_grad_(False)
    policy_copy.requires_grad_(True)
    critic.requires_grad_(True)
    rm = AutoModelForSequenceClassification.from_config(gpt2_config(size, num_labels=1)).requires_grad_(False)
    weights, adam = tensor_bytes(policy_copy, reference, critic, rm)
    return {
        "layout": "policy, reference, critic, RM as full models",
        "weights_bytes": weights,
        "adam_bytes": adam,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_device(parser)
    parser.add_argument("--size", choices=sorted(SIZES), default="gpt2")
    args = parser.parse_args()
    device = device_of(args)
    with tempfile.TemporaryDirectory() as tmp:
        before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        ours_record, policy = ours(args.size, device, Path(tmp))
        if device.type == "cuda":
            ours_record["device_bytes"] = torch.cuda.memory_allocated() - before
        naive_record = naive(policy.cpu(), args.size)
    total = {
        name: r["weights_bytes"] + r["adam_bytes"]
        for name, r in (("ours", ours_record), ("naive", naive_record))
    }
    emit(
        {
            "bench": "memory",
            "device": device.type,
            "machine": machine(device),
            "model": f"random {args.size} GPT-2 policy and RM",
            "ours": ours_record,
            "baseline": naive_record,
            "unit": "bytes of weights, buffers and Adam state",
            "ratio": round(total["ours"] / total["naive"], 3),
        }
    )


if __name__ == "__main__":
    main()
