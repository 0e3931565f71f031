"""INT8 weights for inference (`align export --quantize int8`), through optimum-quanto on any device.

quanto quantizes `nn.Linear` layers; GPT-2's blocks are transformers' `Conv1D` (the same affine map with
its weight stored transposed), so they are first rewritten as `nn.Linear` with the weight transposed,
which changes no output, and then every block weight is int8 with one fp32 scale per output row. The
embeddings (tied to the LM head) and the layer norms stay fp32. The weights are saved as
`model.int8.safetensors` with quanto's quantization map beside them: a file that plain
`from_pretrained` does not mistake for full weights; `load_int8` rebuilds the model from its config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from align.errors import ArtifactError

WEIGHTS_FILE = "model.int8.safetensors"
MAP_FILE = "quantization_map.json"


def conv1d_to_linear(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every transformers `Conv1D` by the equivalent `nn.Linear`, in place."""
    from transformers.pytorch_utils import Conv1D

    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, Conv1D):
                fan_in, fan_out = child.weight.shape
                linear = torch.nn.Linear(
                    fan_in, fan_out, device=child.weight.device, dtype=child.weight.dtype
                )
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                setattr(module, name, linear)
    return model


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """The model with int8 block weights, in place (the LM head stays tied to the fp32 embeddings)."""
    from optimum.quanto import freeze, qint8, quantize

    conv1d_to_linear(model)
    quantize(model, weights=qint8, exclude=["lm_head"])
    freeze(model)
    return model


def save_int8(model: Any, directory: Path) -> None:
    """The config, the int8 weights (without the tied LM head) and the quantization map."""
    from optimum.quanto import quantization_map
    from safetensors.torch import save_file

    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
    model.config.save_pretrained(str(directory))
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "quantization": "quanto-qint8"})
    (directory / MAP_FILE).write_text(json.dumps(quantization_map(model), indent=1, sort_keys=True))


def is_int8(directory: Path) -> bool:
    return (directory / WEIGHTS_FILE).is_file()


def load_int8(directory: Path) -> Any:
    """The model `save_int8` wrote: built from its config, its Conv1D layers as Linear, requantized."""
    from optimum.quanto import requantize
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(directory))
    model = conv1d_to_linear(AutoModelForCausalLM.from_config(config))  # buffers too, so not on meta
    state = load_file(str(directory / WEIGHTS_FILE))
    qmap = json.loads((directory / MAP_FILE).read_text())
    requantize(model, state, qmap, torch.device("cpu"))
    model.tie_weights()
    missing = {k for k in model.state_dict() if k not in state} - {"lm_head.weight"}
    if missing:
        raise ArtifactError(
            f"{directory / WEIGHTS_FILE}: missing {len(missing)} tensors, e.g. {min(missing)}"
        )
    return model.eval()
