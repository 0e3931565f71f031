"""`align export`: a policy artifact as one plain Hugging Face model, LoRA merged, with a model card.

    align export --model runs/tiny/ppo --output exports/tiny-ppo [--push-to-hub user/name]

The output directory is a plain Hugging Face model directory: `AutoModelForCausalLM.from_pretrained(DIR)`,
`AutoTokenizer.from_pretrained(DIR)` and `pipeline("text-generation", model=DIR)` load it with no peft
and no align, in safetensors. Beside the weights, README.md is the model card (every artifact it came
from, the reward model included: stage, data and content hashes, and the measured metrics) and
manifest.json keeps the lineage, so the directory is an `export` artifact as well.

`--quantize int8` writes int8 block weights instead (`align/quantization.py`), for inference: every
align command that runs a policy (eval, generate, chat, pairs, label, arena) loads it, and so does
`align.models.load_int8(DIR)`; the manifest records both sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from align.artifacts import Artifact, ArtifactWriter, ancestors, lineage
from align.errors import ConfigError
from align.models import ModelSource, load_policy, load_tokenizer, record_base, resolve_model
from align.quantization import WEIGHTS_FILE, quantize_int8, save_int8

_HEADLINE = (
    "gold_sampled",
    "gold_greedy",
    "rm_score_sampled",
    "kl_to_reference",
    "eval_accuracy",
    "eval_gold_accuracy",
    "perplexity",
    "text_perplexity",
)


def run(
    model: str, output: str | Path, push_to_hub: str | None = None, quantize: str | None = None
) -> Artifact:
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize {quantize}: only int8 is supported")
    source = resolve_model(model)
    tokenizer = load_tokenizer(source)
    policy = load_policy(source).eval()  # LoRA adapters of the whole lineage merged in
    config = {"model": model, "push_to_hub": push_to_hub, "quantize": quantize}
    with ArtifactWriter(Path(output), "export", config) as writer:
        writer.metrics["parameters"] = sum(p.numel() for p in policy.parameters())
        fp32_bytes = sum(t.numel() * t.element_size() for t in _saved_tensors(policy))
        if quantize:
            save_int8(quantize_int8(policy), writer.work_dir)
            writer.metrics.update(
                fp32_weights_bytes=fp32_bytes, weights_bytes=(writer.work_dir / WEIGHTS_FILE).stat().st_size
            )
        else:
            policy.save_pretrained(str(writer.work_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(writer.work_dir))
        (writer.work_dir / "README.md").write_text(model_card(source, quantize))
        writer.extra.update(model_format=quantize or "full", model_dir=".")
        record_base(writer, source)
        artifact = writer.commit()
    if push_to_hub:
        _push(artifact, push_to_hub)
    return artifact


def _saved_tensors(model: Any) -> list[Any]:
    """The tensors a full-precision save writes: one copy of each (tied weights are stored once)."""
    seen: dict[int, Any] = {}
    for tensor in model.state_dict().values():
        seen.setdefault(tensor.data_ptr(), tensor)
    return list(seen.values())


def _usage(quantize: str | None) -> list[str]:
    if quantize:
        return [
            "INT8 block weights (optimum-quanto qint8, one scale per output row; embeddings fp32), for "
            "inference. `align generate/eval/chat --model PATH` run it; in Python:",
            "",
            "```python",
            "from align.models import load_int8",
            "from transformers import AutoTokenizer",
            'model = load_int8("PATH")',
            'tokenizer = AutoTokenizer.from_pretrained("PATH")',
            "```",
        ]
    return [
        "A causal language model exported by `align export` (LoRA adapters merged; plain transformers).",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        'prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)',
        "```",
    ]


def model_card(source: ModelSource, quantize: str | None = None) -> str:
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [align, rlhf]",
        "---",
        "",
        f"# {Path(source.name).name}",
        "",
        *_usage(quantize),
        "",
    ]
    if source.artifact is None:
        return "\n".join([*lines, f"Exported from `{source.name}` (not an align artifact: no lineage).", ""])
    lines += [
        "## Lineage",
        "",
        "| stage | data | data sha256 | artifact content sha256 | metrics |",
        "|---|---|---|---|---|",
    ]
    for artifact in ancestors(source.artifact):
        data = artifact.manifest.get("data", {})
        metrics = ", ".join(
            f"{k} {v:.3f}" for k, v in artifact.metrics.items() if k in _HEADLINE and isinstance(v, float)
        )
        lines.append(
            f"| {artifact.stage} | {data.get('source', '-')} | {str(data.get('sha256', '-'))[:16]} | "
            f"{artifact.sha256[:16]} | {metrics or '-'} |"
        )
    lines += ["", f"Reward: {_reward(source.artifact)}"] if source.artifact.manifest.get("reward") else []
    lines += _rounds(source.artifact)
    base = lineage(source.artifact)[-1].manifest.get("base_model", {})
    lines += [
        "",
        f"Base model: {base.get('hub') or base.get('path') or 'trained from scratch by align pretrain'}",
        "",
    ]
    return "\n".join(lines)


def _rounds(artifact: Artifact) -> list[str]:
    """Iterated RLHF (`align rounds`) in the lineage: per round, who judged, the comparisons it bought and
    the reward model's accuracy on that round's held-out pairs before and after its refresh."""
    run = next((a for a in ancestors(artifact) if a.stage == "rounds"), None)
    if run is None:
        return []
    judge = run.manifest["config"]["judge"]
    lines = ["", f"## Rounds (iterated RLHF, judge: {judge})", ""]
    lines += ["| round | comparisons | RM accuracy before / after refresh | labels sha256 | agreement |"]
    lines += ["|---|---|---|---|---|"]
    for entry in run.metrics.get("rounds", []):
        before, after = entry.get("rm_accuracy_before"), entry.get("rm_accuracy_after")
        accuracy = "-" if before is None else f"{before:.3f} / {after:.3f}"
        agreement = entry.get("agreement")
        lines.append(
            f"| {entry['round']} | {entry.get('pairs', 0)} | {accuracy} | "
            f"{str(entry.get('labels_sha256', '-'))[:16]} | {'-' if agreement is None else f'{agreement:.2f}'} |"
        )
    return lines


def _reward(artifact: Artifact) -> str:
    """What the policy was optimised against, in words."""
    reward = artifact.manifest["reward"]
    if isinstance(reward, str):
        return f"the Python reward function `{reward}`"
    rm = artifact.parent("rm")
    return f"the reward model `{rm.path.name}` (content sha256 {rm.sha256[:16]})" if rm else "a reward model"


def _push(artifact: Artifact, repo_id: str) -> None:
    """Upload the model directory (weights, tokenizer, card) to the hub; needs network access and a token."""
    from huggingface_hub import HfApi

    from align.errors import ArtifactError

    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(artifact.model_dir))
    except Exception as exc:  # network, auth and hub errors all reach the user as one line
        raise ArtifactError(f"push to the hub as {repo_id} failed: {str(exc).splitlines()[0]}") from None
