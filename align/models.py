"""Load tokenizers and causal LMs from a hub id, a local HF directory or an align artifact; LoRA setup.

A LoRA artifact stores only its adapter; its base is resolved through the manifest (the parent
artifact, a hub id or a local path), never through a path baked into adapter_config.json, so moving
`runs/` keeps every artifact loadable. Loading a policy merges adapters, so the result is the policy
itself and the next stage's "adapters disabled" reference is this policy, not the pretrained base.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from align.artifacts import Artifact, ArtifactWriter, intact, is_artifact, load_artifact
from align.config import LoraSettings
from align.errors import ArtifactError, ConfigError
from align.quantization import load_int8
from align.registry import POLICY_STAGES
from align.text.chat import ensure_chat_template

# peft's own default for GPT-2 is c_attn only; the MLP matters as much for instruction tuning.
_LORA_TARGETS = {"gpt2": ["c_attn", "c_proj", "c_fc"]}
_FAN_IN_FAN_OUT = {"gpt2"}  # Conv1D layers store weights transposed


@dataclass
class ModelSource:
    """What `--model` named: an artifact, a local HF directory or a hub id."""

    name: str
    artifact: Artifact | None = None

    def record(self) -> dict[str, Any]:
        """How the manifest names this model (artifacts are recorded as parents instead)."""
        if self.artifact is not None:
            return {"stage": self.artifact.stage}
        if Path(self.name).is_dir():
            return {"path": str(Path(self.name).resolve())}
        return {"hub": self.name}


def resolve_model(name: str, stages: tuple[str, ...] = POLICY_STAGES) -> ModelSource:
    path = Path(name)
    if is_artifact(path) or path.name.endswith(".partial"):
        return ModelSource(name, intact(load_artifact(path, expect_stage=stages)))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ArtifactError(f"{name}: neither an align artifact nor a model directory (no config.json)")
        return ModelSource(name)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # hub ids are `name` or `org/name`
        raise ArtifactError(f"{name}: no such model directory or artifact")
    return ModelSource(name)


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False) -> Any:
    location = str(source.artifact.model_dir) if source.artifact else source.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ArtifactError(f"{source.name}: cannot load a tokenizer ({_first_line(exc)})") from None
    ensure_chat_template(tokenizer)
    return tokenizer


def load_policy(
    source: ModelSource,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
    inference: bool = False,
) -> PreTrainedModel:
    """The causal LM named by `source`, with any LoRA adapters of its lineage merged in. An int8 export
    is accepted for `inference` only."""
    if source.artifact is None:
        return _from_pretrained(source.name, trust_remote_code, dtype)
    artifact = source.artifact
    if artifact.manifest.get("model_format") == "int8":
        if not inference:
            raise ArtifactError(
                f"{source.name}: an int8 export is for inference (eval, generate, chat, pairs, label, "
                "arena); train from the artifact it was exported from"
            )
        return load_int8(artifact.model_dir)
    if artifact.manifest.get("model_format") != "lora":
        return _from_pretrained(str(artifact.model_dir), trust_remote_code, dtype)
    from peft import PeftModel

    base = load_policy(base_source(artifact), trust_remote_code, dtype)
    return PeftModel.from_pretrained(base, str(artifact.model_dir)).merge_and_unload()


def base_source(artifact: Artifact) -> ModelSource:
    """The model a LoRA artifact's adapter was trained on, as recorded in its manifest."""
    record = artifact.manifest.get("base_model", {})
    if "stage" in record:
        parent = artifact.parent(record["stage"])
        if parent is None:
            raise ArtifactError(
                f"{artifact.path}: manifest names a '{record['stage']}' base but no such parent"
            )
        return ModelSource(str(parent.path), intact(parent))
    if "path" in record or "hub" in record:
        return ModelSource(record.get("path") or record["hub"])
    raise ArtifactError(f"{artifact.path}: LoRA artifact without a base_model record in its manifest")


def lora_config(settings: LoraSettings, model: PreTrainedModel, task_type: str = "CAUSAL_LM") -> Any:
    from peft import LoraConfig

    model_type = model.config.model_type
    targets = settings.target_modules or _LORA_TARGETS.get(model_type)
    if settings.load_in_4bit and not torch.cuda.is_available():
        raise ConfigError("lora.load_in_4bit (QLoRA) needs a CUDA device and bitsandbytes")
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        use_dora=settings.use_dora,
        task_type=task_type,
        fan_in_fan_out=model_type in _FAN_IN_FAN_OUT,
    )


def save_adapter(model: Any, model_dir: Path, source: ModelSource, weights: dict | None = None) -> None:
    """Save a LoRA adapter whose config names its base portably (hub id, or relative to model/);
    `weights` when the model's own tensors are shards (FSDP)."""
    model.save_pretrained(str(model_dir), state_dict=weights)
    config_path = model_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    if source.artifact is not None:
        base = source.artifact.model_dir
        config["base_model_name_or_path"] = os.path.relpath(base.resolve(), model_dir.resolve())
    else:
        config["base_model_name_or_path"] = source.record().get("hub") or source.record()["path"]
    config_path.write_text(json.dumps(config, indent=2))


def save_policy(
    model: Any,
    tokenizer: Any,
    writer: ArtifactWriter,
    source: ModelSource,
    lora: bool,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write a policy artifact's model/ (adapter or full weights, plus tokenizer) and record its base;
    `weights` replaces the model's own tensors when those are shards (FSDP)."""
    if lora:
        save_adapter(model, writer.model_dir, source, weights)
    else:
        model.save_pretrained(str(writer.model_dir), state_dict=weights)
    tokenizer.save_pretrained(str(writer.model_dir))
    writer.extra["model_format"] = "lora" if lora else "full"
    record_base(writer, source)


def record_base(writer: ArtifactWriter, source: ModelSource) -> None:
    """Record the model a stage started from: as a parent artifact when it is one."""
    if source.artifact is not None:
        writer.add_parent(source.artifact)
    writer.base_model = source.record()


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout probability in `model` to 0 and return how many were above it. The config's
    `*_pdrop` fields are read once, when the modules are built, so editing the config afterwards does
    nothing: the `nn.Dropout` modules (LoRA's included) are changed, and so are the float
    `attention_dropout`-style attributes that attention implementations read at call time."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            changed += module.p > 0
            module.p = 0.0
        for name, value in vars(module).items():
            if name.endswith("dropout") and isinstance(value, float):
                changed += value > 0
                setattr(module, name, 0.0)
    return changed


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _from_pretrained(location: str, trust_remote_code: bool, dtype: torch.dtype) -> PreTrainedModel:
    return load_pretrained(
        AutoModelForCausalLM, location, "a causal LM", trust_remote_code=trust_remote_code, dtype=dtype
    )


def load_pretrained(auto_class: Any, location: str | Path, what: str, **kwargs: Any) -> Any:
    """`auto_class.from_pretrained` from safetensors only, with a missing or corrupt file reported in one
    line that points at `align verify` instead of a deserialisation traceback."""
    from safetensors import SafetensorError

    try:
        return fuse_activations(auto_class.from_pretrained(str(location), use_safetensors=True, **kwargs))
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        hint = (
            f"; `align verify {Path(location).parent}` checks every file"
            if is_artifact(Path(location).parent)
            else ""
        )
        raise ArtifactError(f"{location}: cannot load {what} ({_first_line(exc)}){hint}") from None


def fuse_activations(model: Any) -> Any:
    """Swap transformers' tanh GELU written as seven elementwise ops (`gelu_new`, GPT-2's activation) for
    torch's fused kernel of the same function (equal to 1e-6; README, Performance, has the gain). Only the
    modules change; the config keeps `gelu_new`, so saved models stay canonical."""
    from transformers.activations import GELUTanh, NewGELUActivation

    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, NewGELUActivation):
                setattr(module, name, GELUTanh())
    return model


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
