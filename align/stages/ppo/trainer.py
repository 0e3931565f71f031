"""PPO-RLHF: the SFT policy optimised against a reward model (or reward function) with a KL penalty.

    align ppo --model runs/tiny/sft --reward-model runs/tiny/rm --prompts data/synthetic/ppo.jsonl \\
              --output runs/tiny/ppo

Each iteration: (1) sample a response per prompt, (2) truncate at EOS, (3) score every token with the
policy, the reference and the critic, (4) score the response with the reward, (5) per-token rewards
with the KL penalty and the score at the last token, (6) GAE and whitened advantages, (7) several
epochs of clipped policy and value updates over shuffled minibatches.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from align.artifacts import Artifact, ArtifactWriter
from align.chat import prompt_text
from align.config import PPOConfig, to_dict
from align.data import load_data
from align.data.synthetic import family_of, gold_reward
from align.distributed import on_accelerator
from align.errors import DataError
from align.generation import response_logprobs
from align.models import load_tokenizer, resolve_model, save_policy
from align.packing import batch_layout, check_packing
from align.stages.ppo import core
from align.stages.ppo.modules import build_critic, build_policy, build_reward, trainable
from align.stages.ppo.processes import Processes
from align.stages.ppo.rollout import HFSampler, LeanSampler, Trajectory, collect
from align.tokenize import tokenize_sft
from align.training import TrainingDiverged


def run(config: PPOConfig, resume: bool = False) -> Artifact:
    settings = config.ppo
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not on_accelerator())
    device = accelerator.device
    torch.manual_seed(settings.seed)
    rm_artifact, scorer, reward = build_reward(config, device)
    policy, reference = build_policy(config, source, device)
    prompts, prompt_info = _prompt_texts(config, tokenizer, _context_length(policy.config))
    critic, layout, rm_reward = build_critic(config, source, tokenizer, scorer, device)
    if settings.packing:
        check_packing("policy", policy)
        check_packing("critic", critic)
    with ArtifactWriter(config.output, "ppo", to_dict(config), resume) as writer:
        loop = PPOLoop(
            config, policy, reference, critic, rm_reward or reward, tokenizer, prompts, writer, accelerator
        )
        loop.normalisation = _score_statistics(rm_artifact) if settings.normalize_scores else None
        loop.prompt_info = prompt_info
        loop.ptx_rows, ptx_info = _ptx_rows(config, tokenizer, _context_length(policy.config))
        summary = loop.train(resume)
        summary.update(
            {
                "critic": layout,
                "trainable_policy_parameters": sum(p.numel() for p in trainable(policy)),
                "trainable_critic_parameters": sum(p.numel() for p in trainable(critic)),
            }
        )
        save_policy(policy, tokenizer, writer, source, config.lora.enabled)
        writer.data = loop.prompt_info
        writer.metrics = summary
        if rm_artifact is not None:
            writer.add_parent(rm_artifact)
        writer.extra["reward"] = config.reward or {"stage": "rm"}
        if ptx_info:
            writer.extra["ptx_data"] = ptx_info
        return writer.commit()


class PPOLoop:
    def __init__(
        self,
        config: PPOConfig,
        policy: Any,
        reference: Any,
        critic: Any,
        reward: Any,
        tokenizer: Any,
        prompts: list[str],
        writer: ArtifactWriter,
        accelerator: Any,
    ):
        self.config, self.settings = config, config.ppo
        self.policy, self.reference, self.critic, self.reward = policy, reference, critic, reward
        self.tokenizer, self.prompts, self.writer = tokenizer, prompts, writer
        self.accelerator, self.device, self.processes = (
            accelerator,
            accelerator.device,
            Processes(accelerator),
        )
        s = self.settings
        self.rollouts = self.processes.share(s.rollouts, "ppo.rollouts")  # this process's share
        self.mini_batch_size = self.processes.share(s.mini_batch_size, "ppo.mini_batch_size")
        engine = LeanSampler if s.rollout_engine == "lean" else HFSampler
        self.sampler = engine(tokenizer, s.temperature, s.max_new_tokens)
        fused = {"fused": True} if self.device.type == "cuda" else {}
        policy_optimizer = torch.optim.AdamW(trainable(policy), lr=s.learning_rate, eps=1e-5, **fused)
        critic_optimizer = torch.optim.AdamW(
            trainable(critic), lr=s.critic_learning_rate or s.learning_rate, eps=1e-5, **fused
        )
        # the update runs through the prepared (under several processes: DDP-wrapped) modules, so
        # gradients are averaged across processes; rollouts and checkpoints use the modules themselves
        self.trained_policy, self.trained_critic, self.policy_optimizer, self.critic_optimizer = (
            accelerator.prepare(policy, critic, policy_optimizer, critic_optimizer)
        )
        if self.processes.size > 1:  # DDP has synced the weights; each process now samples its own way
            torch.manual_seed(s.seed + self.processes.rank)
        self.kl = core.KLController(s.kl_coef, s.target_kl, s.kl_horizon)
        self.generator = torch.Generator().manual_seed(s.seed)
        self.order: list[int] = []
        self.ptx_rows: list[dict[str, list[int]]] = []  # tokenized demonstrations for PPO-ptx
        self.ptx_order: list[int] = []
        self.step = 0
        self.normalisation: tuple[float, float] | None = None
        self.synthetic = all(family_of(p) != "unknown" for p in prompts[:200])
        self.prompt_info: dict[str, Any] = {}
        self.history: list[dict[str, float]] = []

    def train(self, resume: bool) -> dict[str, Any]:
        if resume:
            self._load_checkpoint()
        from torch.utils.tensorboard import SummaryWriter

        self.writer.logs_dir.mkdir(parents=True, exist_ok=True)
        board = SummaryWriter(log_dir=str(self.writer.logs_dir))
        from rich.progress import Progress

        with Progress(transient=True, disable=not self.processes.is_main) as progress:
            task = progress.add_task("ppo", total=self.settings.steps, completed=self.step)
            while self.step < self.settings.steps:
                stats = self.iteration()
                self.step += 1
                self._log(stats, board)
                progress.update(
                    task, advance=1, description=f"ppo score {stats['score']:.3f} kl {stats['kl']:.2f}"
                )
                if self.settings.save_every and self.step % self.settings.save_every == 0:
                    self._save_checkpoint()
        board.close()
        return self._summary()

    def iteration(self) -> dict[str, float]:
        s = self.settings
        start = time.perf_counter()
        self.policy.eval()
        self.critic.eval()
        batch = self._next_prompts()
        trajectory = collect(
            self.policy,
            self.reference,
            self.critic,
            self._score,
            self.sampler,
            self.tokenizer,
            batch,
            s.temperature,
            s.missing_eos_penalty,
            self.device,
            s.packing,
        )
        rollout_seconds = time.perf_counter() - start
        # 5. per-token rewards: KL penalty everywhere, the score at the last real token
        rewards, kl = core.per_token_rewards(
            trajectory.scores, trajectory.logprobs, trajectory.ref_logprobs, trajectory.mask, self.kl.value
        )
        if s.whiten_rewards:
            rewards = core.masked_whiten(
                rewards, trajectory.mask, shift_mean=False, total=self.processes.total
            )
        # 6. advantages and value targets
        advantages, returns = core.gae(rewards, trajectory.values, trajectory.mask, s.gamma, s.lam)
        advantages = core.masked_whiten(advantages, trajectory.mask, total=self.processes.total)
        # 7. PPO epochs
        update_start = time.perf_counter()
        update = self.update(trajectory, advantages, returns)
        update_seconds = time.perf_counter() - update_start
        sequence_kl = (self.processes.total(kl.sum()) / s.rollouts).item()
        if s.kl_ceiling is not None and sequence_kl > s.kl_ceiling:
            raise TrainingDiverged(
                f"KL to the reference {sequence_kl:.2f} passed ppo.kl_ceiling={s.kl_ceiling} at "
                f"step {self.step + 1}; raise ppo.kl_coef or lower the learning rate"
            )
        beta = self.kl.value
        self.kl.update(sequence_kl, s.rollouts)
        stats = self._stats(trajectory, kl, returns, update, beta, rollout_seconds, update_seconds)
        return self.processes.mean(stats)

    def update(
        self, trajectory: Trajectory, advantages: torch.Tensor, returns: torch.Tensor
    ) -> dict[str, float]:
        s = self.settings
        train_policy = self.step >= s.critic_warmup_steps
        self.policy.train()
        self.critic.train()
        records: list[dict[str, float]] = []
        for _epoch in range(s.ppo_epochs):
            order = torch.randperm(self.rollouts, generator=self.generator)
            epoch_kls = []
            for start in range(0, self.rollouts, self.mini_batch_size):
                minibatch = order[start : start + self.mini_batch_size]
                record = self._minibatch(trajectory, advantages, returns, minibatch, train_policy)
                records.append(record)
                epoch_kls.append(record["approxkl"])
            epoch_kl = self.processes.mean({"approxkl": statistics.fmean(epoch_kls)})["approxkl"]
            if s.stop_kl is not None and epoch_kl > s.stop_kl:
                break
        summary = {key: statistics.fmean(r[key] for r in records) for key in records[0]}
        summary.update({f"first_{k}": records[0][k] for k in ("ratio", "approxkl", "clipfrac")})
        summary["epochs_run"] = len(records) * self.mini_batch_size / self.rollouts
        return summary

    def _minibatch(
        self,
        trajectory: Trajectory,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        minibatch: torch.Tensor,
        train_policy: bool,
    ) -> dict[str, float]:
        s = self.settings
        q = trajectory.query_length
        totals: dict[str, float] = {}
        for start in range(0, len(minibatch), s.micro_batch_size):
            idx = minibatch[start : start + s.micro_batch_size]
            batch = batch_layout(
                trajectory.query_responses[idx], trajectory.attention_mask[idx], q, s.packing
            )
            # while the critic warms up the policy takes no gradient (and DDP sees no unused forward)
            with torch.set_grad_enabled(train_policy):
                logprobs, _ = response_logprobs(
                    self.trained_policy if train_policy else self.policy, batch, s.temperature
                )
            values = batch.gather(self.trained_critic(**batch.inputs())).float()
            stats = core.ppo_losses(
                logprobs,
                trajectory.logprobs[idx],
                advantages[idx],
                values,
                trajectory.values[idx],
                returns[idx],
                trajectory.mask[idx],
                s.clip_range,
                s.clip_range_value,
            )
            loss = s.vf_coef * stats.value_loss + (stats.policy_loss if train_policy else 0.0)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"PPO loss is {loss.item()} at step {self.step + 1}; the last checkpoint is "
                    "kept (lower ppo.learning_rate and rerun with --resume)"
                )
            self.accelerator.backward(loss * len(idx) / len(minibatch))
            share = len(idx) / len(minibatch)
            for key, value in (
                ("policy_loss", stats.policy_loss),
                ("value_loss", stats.value_loss),
                ("approxkl", stats.approx_kl),
                ("clipfrac", stats.clip_fraction),
                ("value_clipfrac", stats.value_clip_fraction),
                ("ratio", stats.ratio),
            ):
                totals[key] = totals.get(key, 0.0) + value.item() * share
        if train_policy and self.ptx_rows:
            ptx_loss = self._ptx_loss()
            self.accelerator.backward(s.ptx_coef * ptx_loss)
            totals["ptx_loss"] = ptx_loss.item()
        for optimizer, model, active in (
            (self.policy_optimizer, self.policy, train_policy),
            (self.critic_optimizer, self.critic, True),
        ):
            torch.nn.utils.clip_grad_norm_(trainable(model), s.max_grad_norm)
            if active:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return totals

    def _ptx_loss(self) -> torch.Tensor:
        """PPO-ptx (Ouyang et al. 2022): the policy's LM loss on the completions of the next demonstrations,
        so optimising the reward does not erode what SFT taught. Each process takes its own rows."""
        per_process, processes = self.settings.ptx_batch_size, self.processes
        wanted = per_process * processes.size
        while len(self.ptx_order) < wanted:
            self.ptx_order += torch.randperm(len(self.ptx_rows), generator=self.generator).tolist()
        batch, self.ptx_order = self.ptx_order[:wanted], self.ptx_order[wanted:]
        rows = [self.ptx_rows[i] for i in batch[processes.rank :: processes.size]]
        lengths = torch.tensor([len(row["input_ids"]) for row in rows], device=self.device)
        width = int(lengths.max())

        def padded(key: str, value: int) -> torch.Tensor:
            return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows], device=self.device)

        ids = padded("input_ids", self.tokenizer.pad_token_id)
        attention = (torch.arange(width, device=self.device) < lengths[:, None]).long()
        logits = self.trained_policy(input_ids=ids, attention_mask=attention).logits
        return core.language_model_loss(logits, ids, padded("completion_mask", 0))

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        scores = self.reward(prompts, responses)
        if self.normalisation is not None:
            mean, std = self.normalisation
            scores = [(x - mean) / std for x in scores]
        if self.settings.score_clip is not None:
            c = self.settings.score_clip
            scores = [max(-c, min(c, x)) for x in scores]
        return scores

    def _next_prompts(self) -> list[str]:
        while len(self.order) < self.settings.rollouts:
            self.order += torch.randperm(len(self.prompts), generator=self.generator).tolist()
        batch, self.order = self.order[: self.settings.rollouts], self.order[self.settings.rollouts :]
        # every process draws the same global batch and keeps its own slice of it
        return [self.prompts[i] for i in batch[self.processes.rank :: self.processes.size]]

    def _stats(
        self,
        t: Trajectory,
        kl: torch.Tensor,
        returns: torch.Tensor,
        update: dict[str, float],
        beta: float,
        rollout_seconds: float,
        update_seconds: float,
    ) -> dict[str, float]:
        sequence_kl = kl.sum(1)
        lengths = t.mask.sum(1)
        stats = {
            "score": t.raw_scores.mean().item(),
            "kl": sequence_kl.mean().item(),
            "rlhf_reward": (t.scores - beta * sequence_kl).mean().item(),
            "beta": beta,
            "entropy": core.masked_mean(t.entropy, t.mask).item(),
            "explained_variance": core.explained_variance(t.values, returns, t.mask),
            "response_length": lengths.mean().item(),
            "eos_rate": t.ended.float().mean().item(),
            "seconds_rollout": rollout_seconds,
            **{f"seconds_{part}": seconds for part, seconds in t.seconds.items()},
            "seconds_update": update_seconds,
            "tokens_per_second": lengths.sum().item() / max(rollout_seconds + update_seconds, 1e-9),
            **update,
        }
        if self.synthetic:
            stats["gold"] = statistics.fmean(gold_reward(t.prompt_texts, t.response_texts))
        if self.settings.sample_every and (self.step + 1) % self.settings.sample_every == 0:
            stats["samples"] = [
                {"prompt": p[-80:], "response": r}
                for p, r in zip(t.prompt_texts[:3], t.response_texts[:3], strict=True)
            ]
        return stats

    def _log(self, stats: dict[str, Any], board: Any) -> None:
        record = {"step": self.step, **stats}
        self.history.append({k: v for k, v in record.items() if isinstance(v, (int, float))})
        if not self.processes.is_main:
            return
        with open(self.writer.logs_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.step % self.settings.log_every == 0:
            for key, value in stats.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    board.add_scalar(f"ppo/{key}", value, self.step)

    def _summary(self) -> dict[str, Any]:
        if not self.history:
            return {"steps": self.step}
        window = self.history[-10:]
        summary = {"steps": self.step, "first_score": self.history[0]["score"]}
        for key in (
            "score",
            "kl",
            "rlhf_reward",
            "entropy",
            "eos_rate",
            "gold",
            "beta",
            "approxkl",
            "clipfrac",
        ):
            if key in window[0]:
                summary[f"final_{key}"] = statistics.fmean(r[key] for r in window)
        if "gold" in self.history[0]:
            summary["first_gold"] = self.history[0]["gold"]
        summary["processes"] = self.processes.size
        summary["seconds_rollout"] = sum(r["seconds_rollout"] for r in self.history)
        summary["seconds_update"] = sum(r["seconds_update"] for r in self.history)
        return summary

    def _save_checkpoint(self) -> None:
        """Everything needed to continue bit-for-bit: weights, optimisers, KL state, RNG, prompt order."""
        root = self.writer.checkpoints_dir
        final, tmp = root / f"step-{self.step}", root / f".step-{self.step}.tmp"
        processes = self.processes
        if processes.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        processes.wait()
        torch.save({"rng": torch.get_rng_state()}, tmp / f"rng-{processes.rank}.pt")  # each process its own
        processes.wait()
        if processes.is_main:
            self._write_checkpoint(tmp, final)
        processes.wait()

    def _write_checkpoint(self, tmp: Path, final: Path) -> None:
        for name, model in (("policy", self.policy), ("critic", self.critic)):
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in model.named_parameters() if v.requires_grad},
                str(tmp / f"{name}.safetensors"),
            )
        torch.save(
            {
                "policy": self.policy_optimizer.state_dict(),
                "critic": self.critic_optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "order": torch.tensor(self.order, dtype=torch.long),
                "ptx_order": torch.tensor(self.ptx_order, dtype=torch.long),
            },
            tmp / "state.pt",
        )
        (tmp / "progress.json").write_text(
            json.dumps({"step": self.step, "kl": self.kl.state_dict(), "history": self.history})
        )
        tmp.rename(final)
        for old in _checkpoints(final.parent)[:-2]:
            shutil.rmtree(old)

    def _load_checkpoint(self) -> None:
        checkpoints = _checkpoints(self.writer.checkpoints_dir)
        if not checkpoints:
            return
        latest = checkpoints[-1]
        for name, model in (("policy", self.policy), ("critic", self.critic)):
            model.load_state_dict(load_file(str(latest / f"{name}.safetensors")), strict=False)
        state = torch.load(latest / "state.pt", weights_only=True)
        self.policy_optimizer.load_state_dict(state["policy"])
        self.critic_optimizer.load_state_dict(state["critic"])
        rng = latest / f"rng-{self.processes.rank}.pt"
        if not rng.exists():
            raise DataError(
                f"{latest}: no random state for process {self.processes.rank}; resume with as many processes as wrote it"
            )
        torch.set_rng_state(torch.load(rng, weights_only=True)["rng"])
        self.generator.set_state(state["generator"])
        self.order, self.ptx_order = state["order"].tolist(), state["ptx_order"].tolist()
        progress = json.loads((latest / "progress.json").read_text())
        self.step, self.history = progress["step"], progress["history"]
        self.kl.load_state_dict(progress["kl"])
        log = self.writer.logs_dir / "metrics.jsonl"
        if (
            log.exists() and self.processes.is_main
        ):  # steps logged after this checkpoint are about to be run again
            kept = [line for line in log.read_text().splitlines() if json.loads(line)["step"] <= self.step]
            log.write_text("".join(line + "\n" for line in kept))


def _prompt_texts(config: PPOConfig, tokenizer: Any, context: int) -> tuple[list[str], dict[str, Any]]:
    """Rendered prompts; those leaving no room for max_new_tokens in the context are dropped and counted."""
    data = load_data(config.prompts, "prompts", config.limit)
    room = context - config.ppo.max_new_tokens
    texts = [prompt_text(tokenizer, row["prompt"]) for row in data.rows]
    too_long = {
        i for i, t in enumerate(texts) if len(tokenizer(t, add_special_tokens=False)["input_ids"]) > room
    }
    data.drop(too_long, f"prompt longer than context - max_new_tokens = {room} tokens")
    texts = [t for i, t in enumerate(texts) if i not in too_long]
    if len(texts) < config.ppo.rollouts:
        raise DataError(
            f"{config.prompts}: {len(texts)} usable prompts, fewer than ppo.rollouts={config.ppo.rollouts}"
        )
    return texts, data.info()


def _ptx_rows(
    config: PPOConfig, tokenizer: Any, context: int
) -> tuple[list[dict[str, list[int]]], dict | None]:
    """PPO-ptx's demonstrations, chat-formatted with completion masks (none when ptx is off)."""
    if not config.ppo.ptx_coef:
        return [], None
    data = load_data(config.ptx_data, "sft", config.limit)
    return tokenize_sft(data, tokenizer, context), data.info()


def _context_length(model_config: Any) -> int:
    for name in ("n_positions", "max_position_embeddings"):
        if getattr(model_config, name, None):
            return int(getattr(model_config, name))
    return 2048


def _score_statistics(artifact: Any) -> tuple[float, float] | None:
    if artifact is None or "reward_std" not in artifact.metrics:
        return None
    return artifact.metrics["reward_mean"], max(artifact.metrics["reward_std"], 1e-6)


def _checkpoints(root: Path) -> list[Path]:
    return sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
