"""The PPO iteration loop: rollout, advantages, then epochs of clipped updates over shuffled minibatches.

Each iteration: (1) sample a response per prompt, (2) truncate at EOS, (3) score every token with the
policy, the reference and the critic, (4) score the response with the reward, (5) per-token rewards
with the KL penalty and the score at the last token, (6) GAE and whitened advantages, (7) several
epochs of clipped policy and value updates over shuffled minibatches.

Under several processes each samples its share of the prompts, the rollouts are gathered into one batch
on every process, and each global minibatch is dealt out evenly: the losses are token sums over the
process's rows divided by the minibatch's token count (times the number of processes, since DDP and
FSDP average gradients), so N processes take the step one process with the whole batch takes.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from align.artifacts import ArtifactWriter
from align.config import PPOSettings, TrainSettings
from align.decoding.engines import GenerateEngine, LeanEngine, rollout_uniforms
from align.decoding.logprobs import response_logprobs
from align.decoding.packing import batch_layout
from align.distributed import Processes
from align.errors import AlignError, Terminated, TrainingDiverged, step_boundaries, termination_requested
from align.logs import ProgressLines, interactive
from align.rewards import RewardFn
from align.stages.ppo import checkpoint, core
from align.stages.ppo.logbook import Logbook, step_stats
from align.stages.ppo.monitors import Monitors
from align.stages.ppo.networks import Networks, trainable
from align.stages.ppo.rollout import Rollout, Trajectory, gather_trajectory
from align.stages.ppo.validation import VALIDATION_STEP, Validation

# Before any update, the rollout's and the update's log-probs of the same tokens must agree. The limits
# per parameter precision: fp32 networks agree to float rounding (~1e-6 in a log-prob); bf16/fp16 round
# logits to 8/11 mantissa bits, ~0.05 in a log-prob, so their limits are looser.
RATIO_LIMITS = {torch.float32: (1e-4, 1e-2), torch.bfloat16: (1e-2, 0.5), torch.float16: (1e-2, 0.5)}
_LOSS_KEYS = ("policy_loss", "value_loss", "approxkl", "clipfrac", "value_clipfrac", "ratio")
_SHOWN = ("score", "kl", "entropy", "response_length", "gold")  # on a progress line


class RatioMismatch(AlignError):
    """The update does not see the distribution the rollout sampled from."""


@dataclass
class PPOData:
    """What the loop trains on: rendered prompts, PPO-ptx demonstrations, an optional validation judge
    (it may choose the step kept and stop the run) and an optional monitor (logged, chooses nothing)."""

    prompts: list[str]
    ptx_rows: list[dict[str, list[int]]]
    validation: Validation | None
    monitor: tuple[str, RewardFn] | None = None

    def judges(self) -> list[tuple[str, RewardFn]]:
        """Every judge that scores each step's rollouts, with its metric name: validation first."""
        named = [(self.validation.name, self.validation.judge)] if self.validation else []
        return named + ([self.monitor] if self.monitor else [])


class PPOLoop:
    def __init__(
        self,
        settings: PPOSettings,
        train: TrainSettings,
        networks: Networks,
        data: PPOData,
        tokenizer: Any,
        writer: ArtifactWriter,
        accelerator: Any,
    ):
        s, self.train_settings = settings, train
        self.settings = settings
        self.networks, self.data, self.tokenizer, self.writer = networks, data, tokenizer, writer
        self.accelerator, self.device = accelerator, accelerator.device
        self.processes = processes = Processes(accelerator)
        self.rollouts = processes.share(s.rollouts, "ppo.rollouts")  # this process's share
        processes.share(s.mini_batch_size, "ppo.mini_batch_size")
        self.policy, self.critic = networks.policy, networks.critic
        fused = {"fused": True} if self.device.type == "cuda" else {}
        adam = {"eps": 1e-5, "weight_decay": train.weight_decay, **fused}
        policy_optimizer = torch.optim.AdamW(trainable(self.policy), lr=train.learning_rate, **adam)
        critic_optimizer = torch.optim.AdamW(
            trainable(self.critic), lr=s.critic_learning_rate or train.learning_rate, **adam
        )
        # Prepared one pair at a time: FSDP2 shards the last model of a prepare call only, and remaps
        # optimiser parameters by name, which the policy and critic share. The update runs through the
        # prepared modules (DDP wrappers, or the FSDP modules themselves); the rollout and checkpoints use
        # the modules, gathering FSDP shards where they read weights.
        self.trained_policy, self.policy_optimizer = accelerator.prepare(self.policy, policy_optimizer)
        self.trained_critic, self.critic_optimizer = accelerator.prepare(self.critic, critic_optimizer)
        engine = (
            LeanEngine(tokenizer, s.temperature, s.max_new_tokens)
            if s.rollout_engine == "lean"
            else GenerateEngine(tokenizer, s.temperature, s.max_new_tokens, synced=processes.sharded)
        )
        self.rollout = Rollout(
            self.policy,
            networks.reference,
            self.critic,
            self._score,
            engine,
            tokenizer,
            s.temperature,
            s.missing_eos_penalty,
            s.packing,
        )
        self.kl = core.KLController(s.kl_coef, s.target_kl, s.kl_horizon)
        self.generator = torch.Generator().manual_seed(train.seed)  # the same on every process
        self.order: list[int] = []
        self.ptx_order: list[int] = []
        self.step = 0
        self.stopped: str | None = None  # why the run ended early, if it did
        self.ratio_limits = RATIO_LIMITS[next(self.policy.parameters()).dtype]
        judged = tuple(name for name, _ in data.judges())
        monitors = Monitors(judged[0] if judged else None, s.target_kl, self.ratio_limits)
        self.logbook = Logbook(
            writer.logs_dir, processes.is_main, train.logging_steps, monitors, judged,
            "tensorboard" in train.report_to, accelerator,
        )  # fmt: skip

    def train(self, resume: bool) -> dict[str, Any]:
        """Run the iterations; with a validation set, evaluate it at step 0 and every
        `ppo.validation_every` steps, stop early and keep the best step as asked."""
        from rich.progress import Progress

        if resume:
            checkpoint.load(self)
        s, validation, total = self.settings, self.data.validation, self.train_settings.max_steps
        main = self.processes.is_main
        lines = ProgressLines("ppo", total, max(self.train_settings.logging_steps, total // 20), self.step)
        with (
            self.logbook,
            step_boundaries(),
            Progress(transient=True, disable=not (main and interactive())) as progress,
        ):
            task = progress.add_task("ppo", total=total, completed=self.step)
            if validation is not None and validation.prompts and not validation.curve:
                self._validate()  # step 0: the SFT policy is a candidate too
            while self.step < total and self.stopped is None:
                self._stop_if_terminated()
                try:
                    stats = self.iteration()
                except TrainingDiverged as exc:
                    if not s.keep_best:
                        raise
                    self.stopped = str(exc).split(";")[0]
                    break
                self.step += 1
                self.logbook.record(self.step, stats)
                progress.update(
                    task, advance=1, description=f"ppo score {stats['score']:.3f} kl {stats['kl']:.2f}"
                )
                if main and not interactive():
                    lines.update(self.step, {k: stats[k] for k in _SHOWN if k in stats})
                if s.validation_every and self.step % s.validation_every == 0 and validation.prompts:
                    self._validate()
                if self.train_settings.save_steps and self.step % self.train_settings.save_steps == 0:
                    checkpoint.save(self)
        if s.keep_best and validation is not None and validation.best_step is not None:
            checkpoint.restore_best(self)
        summary = self.logbook.summary(self.processes.size)
        if validation is not None:
            summary.update(validation.summary())
        return {**summary, "stopped": self.stopped} if self.stopped else summary

    def _validate(self) -> None:
        """Score the policy's answers to the validation prompts; keep its weights when they are the best,
        and stop the run when they have not improved for `ppo.early_stop_patience` evaluations."""
        validation, s = self.data.validation, self.settings
        self.policy.eval()
        prompts = self.processes.mine(validation.prompts)
        uniforms = rollout_uniforms(
            self.train_settings.seed, VALIDATION_STEP, len(validation.prompts), s.max_new_tokens
        )
        responses = self.rollout.respond(prompts, self.processes.mine(uniforms))
        scores = self.processes.gather_objects(validation.judge(prompts, responses))
        if validation.record(self.step, scores) and s.keep_best:
            checkpoint.save_best(self)
        if validation.exhausted(s.early_stop_patience):
            self.stopped = f"{validation.name} has not improved for {s.early_stop_patience} evaluations"

    def iteration(self) -> dict[str, Any]:
        s = self.settings
        start = time.perf_counter()
        self.policy.eval()
        self.critic.eval()
        uniforms = rollout_uniforms(self.train_settings.seed, self.step, s.rollouts, s.max_new_tokens)
        local = self.rollout.collect(self._next_prompts(), self.processes.mine(uniforms))
        trajectory = gather_trajectory(local, self.processes, self.tokenizer.pad_token_id)
        rollout_seconds = time.perf_counter() - start
        # 5. per-token rewards: KL penalty everywhere, the score at the last real token
        rewards, kl = core.per_token_rewards(
            trajectory.scores, trajectory.logprobs, trajectory.ref_logprobs, trajectory.mask, self.kl.value
        )
        if s.whiten_rewards:
            rewards = core.masked_whiten(rewards, trajectory.mask, shift_mean=False)
        # 6. advantages and value targets
        advantages, returns = core.gae(rewards, trajectory.values, trajectory.mask, s.gamma, s.lam)
        advantages = core.masked_whiten(advantages, trajectory.mask)
        # 7. PPO epochs
        update_start = time.perf_counter()
        update = self.update(trajectory, advantages, returns)
        update_seconds = time.perf_counter() - update_start
        sequence_kl = kl.sum(1).mean().item()
        if s.kl_ceiling is not None and sequence_kl > s.kl_ceiling:
            raise TrainingDiverged(
                f"KL to the reference {sequence_kl:.2f} passed ppo.kl_ceiling={s.kl_ceiling} at "
                f"step {self.step + 1}; raise ppo.kl_coef or lower the learning rate"
            )
        beta = self.kl.value
        self.kl.update(sequence_kl, s.rollouts)
        stats = step_stats(trajectory, kl, returns, beta)
        lengths = trajectory.mask.sum().item()
        stats.update(seconds_rollout=rollout_seconds, seconds_update=update_seconds, **update)
        stats["tokens_per_second"] = lengths / max(rollout_seconds + update_seconds, 1e-9)
        scorer = self.networks.scorer
        if scorer is not None and len(scorer.members) > 1:
            stats["ensemble_disagreement"] = statistics.fmean(scorer.spread)
        for name, judge in self.data.judges():
            stats[name] = statistics.fmean(judge(trajectory.prompt_texts, trajectory.response_texts))
        if s.sample_every and (self.step + 1) % s.sample_every == 0:
            pairs = zip(trajectory.prompt_texts[:3], trajectory.response_texts[:3], strict=True)
            stats["samples"] = [{"prompt": p[-80:], "response": r} for p, r in pairs]
        return stats

    def _stop_if_terminated(self) -> None:
        """At a step boundary after a SIGTERM on any process: checkpoint this step, then stop."""
        asked = self.processes.total(torch.tensor(float(termination_requested())))
        if float(asked) > 0:
            if self.step and not (self.writer.checkpoints_dir / f"step-{self.step}").is_dir():
                checkpoint.save(self)
            raise Terminated

    def update(
        self, trajectory: Trajectory, advantages: torch.Tensor, returns: torch.Tensor
    ) -> dict[str, float]:
        s = self.settings
        train_policy = self.step >= s.critic_warmup_steps
        self.policy.train()
        self.critic.train()
        records: list[dict[str, float]] = []
        for _epoch in range(s.ppo_epochs):
            order = torch.randperm(s.rollouts, generator=self.generator)
            epoch_kls = []
            for start in range(0, s.rollouts, s.mini_batch_size):
                minibatch = order[start : start + s.mini_batch_size]
                record = self._minibatch(trajectory, advantages, returns, minibatch, train_policy)
                if not records:
                    self._check_first_minibatch(record)
                self._optimizer_step(train_policy)
                records.append(record)
                epoch_kls.append(record["approxkl"])
            if s.stop_kl is not None and statistics.fmean(epoch_kls) > s.stop_kl:
                break
        summary = {key: statistics.fmean(r[key] for r in records) for key in records[0]}
        summary.update({f"first_{k}": records[0][k] for k in ("ratio", "approxkl", "clipfrac")})
        summary["first_max_log_ratio"] = records[0]["max_log_ratio"]
        summary["max_log_ratio"] = max(r["max_log_ratio"] for r in records)
        summary["epochs_run"] = len(records) * s.mini_batch_size / s.rollouts
        return summary

    def _minibatch(
        self,
        trajectory: Trajectory,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        minibatch: torch.Tensor,
        train_policy: bool,
    ) -> dict[str, float]:
        """Accumulate the gradients of one global minibatch (this process's rows of it, in micro-batches)
        and return its statistics, as token means over the whole minibatch."""
        s, processes = self.settings, self.processes
        tokens = trajectory.mask[minibatch].sum()  # the whole minibatch's, the same on every process
        q = trajectory.query_length
        sums = torch.zeros(len(_LOSS_KEYS), device=self.device)
        max_log_ratio = torch.zeros((), device=self.device)
        mine = processes.mine(minibatch)
        for start in range(0, len(mine), s.micro_batch_size):
            idx = mine[start : start + s.micro_batch_size]
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
                token_count=tokens,
            )
            loss = s.vf_coef * stats.value_loss + (stats.policy_loss if train_policy else 0.0)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"PPO loss is {loss.item()} at step {self.step + 1}; the last checkpoint is "
                    "kept (lower ppo.learning_rate and rerun with --resume)"
                )
            self.accelerator.backward(loss * processes.size)  # DDP and FSDP average over the processes
            sums += torch.stack([getattr(stats, key).detach() for key in _LOSS_KEYS])
            max_log_ratio = torch.maximum(max_log_ratio, stats.max_log_ratio)
        record = dict(zip(_LOSS_KEYS, processes.total(sums).tolist(), strict=True))
        record["max_log_ratio"] = processes.maximum(max_log_ratio).item()
        if train_policy and self.data.ptx_rows:
            ptx_loss = self._ptx_loss()
            self.accelerator.backward(s.ptx_coef * ptx_loss)
            record["ptx_loss"] = ptx_loss.item()
        return record

    def _check_first_minibatch(self, record: dict[str, float]) -> None:
        """Before any update the policy is the rollout's: its log-probs must be the rollout's own."""
        kl_limit, log_ratio_limit = self.ratio_limits
        if self.settings.allow_ratio_mismatch or (
            record["approxkl"] <= kl_limit and record["max_log_ratio"] <= log_ratio_limit
        ):
            return
        raise RatioMismatch(
            f"PPO step {self.step + 1}: before any update the policy scores its own rollouts differently "
            f"(approx-KL {record['approxkl']:.2e} > {kl_limit:g} or max |log ratio| "
            f"{record['max_log_ratio']:.2e} > {log_ratio_limit:g}); likely causes: dropout left on, "
            "position ids, sampling temperature, padding, or a reference that is not the rollout policy "
            "(ppo.allow_ratio_mismatch=true trains anyway)"
        )

    def _optimizer_step(self, train_policy: bool) -> None:
        max_norm = self.train_settings.max_grad_norm
        for optimizer, model, active in (
            (self.policy_optimizer, self.trained_policy, train_policy),
            (self.critic_optimizer, self.trained_critic, True),
        ):
            self.accelerator.clip_grad_norm_(trainable(model), max_norm)
            if active:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def _ptx_loss(self) -> torch.Tensor:
        """PPO-ptx (Ouyang et al. 2022): the policy's LM loss on the completions of the next demonstrations,
        so optimising the reward does not erode what SFT taught. Each process takes its own rows."""
        rows_all, processes = self.data.ptx_rows, self.processes
        wanted = self.settings.ptx_batch_size * processes.size
        while len(self.ptx_order) < wanted:
            self.ptx_order += torch.randperm(len(rows_all), generator=self.generator).tolist()
        batch, self.ptx_order = self.ptx_order[:wanted], self.ptx_order[wanted:]
        rows = [rows_all[i] for i in processes.mine(batch)]
        lengths = torch.tensor([len(row["input_ids"]) for row in rows], device=self.device)
        width = int(lengths.max())

        def padded(key: str, value: int) -> torch.Tensor:
            return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows], device=self.device)

        ids = padded("input_ids", self.tokenizer.pad_token_id)
        attention = (torch.arange(width, device=self.device) < lengths[:, None]).long()
        logits = self.trained_policy(input_ids=ids, attention_mask=attention).logits
        return core.language_model_loss(logits, ids, padded("completion_mask", 0))

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        scores = self.networks.reward(prompts, responses)
        if self.networks.score_statistics is not None:
            mean, std = self.networks.score_statistics
            scores = [(x - mean) / std for x in scores]
        if self.settings.score_clip is not None:
            c = self.settings.score_clip
            scores = [max(-c, min(c, x)) for x in scores]
        return scores

    def _next_prompts(self) -> list[str]:
        """This process's slice of the next global batch of prompts (every process draws the same one)."""
        prompts, wanted = self.data.prompts, self.settings.rollouts
        while len(self.order) < wanted:
            self.order += torch.randperm(len(prompts), generator=self.generator).tolist()
        batch, self.order = self.order[:wanted], self.order[wanted:]
        return [prompts[i] for i in self.processes.mine(batch)]
