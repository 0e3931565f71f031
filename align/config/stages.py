"""One config per stage: what its command, its recipe file and `--set` can fill."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from align.config.settings import (
    ArchSettings,
    LoraSettings,
    PairSampling,
    Settings,
    TokenizerSettings,
    TrainSettings,
    require,
    require_paths,
)


class DataStage(Settings):
    """What SFT, RM and DPO share: a model trained on a data source, with a held-out share."""

    model: str = ""  # hub id, local HF directory or align artifact
    data: str = ""  # file, directory or hub id `name[:config][@split]`
    output: str = ""
    eval_data: str | None = None  # None: hold out eval_fraction of the data (whole groups at a time)
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    limit: int | None = Field(None, ge=1)  # use only the first N usable rows
    max_length: int = Field(512, ge=8)  # longest row in tokens
    # an over-long row: dropped and counted, cut from the prompt's left (the response kept), or cut at the end
    truncation: Literal["drop", "keep_end", "keep_start"] = "drop"
    trust_remote_code: bool = False
    lora: LoraSettings = LoraSettings()
    train: TrainSettings = TrainSettings()

    @model_validator(mode="after")
    def _paths(self) -> DataStage:
        require_paths(self, "model", "data", "output")
        return self


class SFTConfig(DataStage):
    """`align sft`: supervised fine-tuning on instruction or chat data."""

    packing: bool = False
    completion_only_loss: bool = True  # prompt tokens get label -100
    save_merged: bool = False  # with LoRA, also write merged full weights to merged/


class RMConfig(DataStage):
    """`align rm`: a scalar reward model on preference pairs (Bradley-Terry loss)."""

    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    margin: float = Field(0.0, ge=0.0)  # required score gap: loss = -log sigmoid(r_c - r_r - margin)
    center_rewards: float | None = Field(None, ge=0.0)  # coefficient of the mean((r_c + r_r)^2) term
    group_rankings: bool = True  # keep the pairs of one K-way ranking in the same batch (InstructGPT)
    ensemble: int = Field(1, ge=1)  # members, each its own trunk (member i > 0: seed + i, bootstrapped pairs)
    init_reward_model: str | None = (
        None  # an RM artifact whose weights (score head included) training starts from
    )


class EnsembleJudging(Settings):
    """How an RM ensemble's members combine into one score (Coste et al. 2023)."""

    ensemble_objective: Literal["mean", "min", "uwo"] = "mean"
    uwo_penalty: float = Field(1.0, ge=0.0)  # uwo: the members' mean - penalty x their variance


class Judged(EnsembleJudging):
    """A stage that samples from a policy and scores with one judge: an RM artifact or a function."""

    reward_model: str | None = None  # RM artifact
    reward: str | None = None  # or a Python reward `module:function`

    def require_one_judge(self) -> None:
        require(
            (self.reward_model is None) != (self.reward is None),
            "give exactly one of --reward-model ARTIFACT or --reward module:function",
        )


class PairsConfig(Judged):
    """`align pairs`: preference pairs sampled from a policy and labelled by a judge (RM or function).

    InstructGPT's comparison data: the policy's own answers, ranked. Prompts whose samples all score the
    same give no pair and are counted.
    """

    model: str = ""
    prompts: str = ""
    output: str = ""
    limit: int | None = Field(None, ge=1)
    seed: int = 0
    trust_remote_code: bool = False
    sampling: PairSampling = PairSampling()

    @model_validator(mode="after")
    def _inputs(self) -> PairsConfig:
        require_paths(self, "model", "prompts", "output")
        self.require_one_judge()
        return self


class DPOConfig(DataStage, Judged):
    """`align dpo`: the SFT policy trained directly on preference pairs (DPO and its variants).

    Iterative (online) DPO: with rounds > 0, each round samples pairs from the current policy on
    `prompts`, labels them with the judge and trains on them; the next round's reference is this round's
    result. `data` is then optional (used in round 1 if given).
    """

    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    beta: float = Field(0.1, gt=0)
    loss_type: str = "sigmoid"  # sigmoid (DPO), ipo, hinge, robust, ... (any TRL DPO loss)
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)  # robust DPO: the assumed label-flip rate
    sft_weight: float = Field(0.0, ge=0.0)  # add the SFT loss on chosen answers with this weight (RPO)
    precompute_ref_log_probs: bool = False
    rounds: int = Field(0, ge=0)
    prompts: str | None = None
    sampling: PairSampling = PairSampling()

    @model_validator(mode="after")
    def _paths(self) -> DPOConfig:
        if self.rounds:  # iterative DPO: pairs come from the policy and a judge
            require_paths(self, "model", "output", "prompts")
            self.require_one_judge()
        else:
            require_paths(self, "model", "data", "output")
        return self


class OnlineConfig(Judged):
    """Critic-free online RL through TRL (GRPO, RLOO): sample groups of responses, reward them, update."""

    model: str = ""  # SFT artifact
    prompts: str = ""
    output: str = ""
    limit: int | None = Field(None, ge=1)
    num_generations: int = Field(4, ge=2)  # responses per prompt (the group the baseline comes from)
    max_new_tokens: int = Field(24, ge=1)
    temperature: float = Field(0.7, gt=0)
    beta: float = Field(0.05, ge=0.0)  # KL coefficient to the reference
    trust_remote_code: bool = False
    lora: LoraSettings = LoraSettings()
    train: TrainSettings = TrainSettings()

    @model_validator(mode="after")
    def _inputs(self) -> OnlineConfig:
        require_paths(self, "model", "prompts", "output")
        self.require_one_judge()
        require(
            self.train.batch_size % self.num_generations == 0,
            "train.batch_size must be a multiple of num_generations",
        )
        return self


class GRPOConfig(OnlineConfig):
    """`align grpo`: group-relative policy optimisation (TRL GRPOTrainer)."""


class RLOOConfig(OnlineConfig):
    """`align rloo`: REINFORCE leave-one-out (TRL RLOOTrainer)."""


class PPOSettings(Settings):
    """PPO-RLHF hyper-parameters (names and defaults follow Huang et al.'s reference implementation);
    steps, learning rate, seed, logging and checkpoints are `train.*`, as in every stage."""

    rollouts: int = Field(64, ge=1)  # prompts sampled per iteration
    mini_batch_size: int = Field(16, ge=1)
    micro_batch_size: int = Field(16, ge=1)  # gradient accumulation inside a minibatch
    ppo_epochs: int = Field(4, ge=1)
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(0.7, gt=0)  # sampling temperature; log-probs use the same
    rollout_engine: Literal["lean", "generate"] = "lean"  # our decode loop, or transformers' generate
    packing: bool = True  # score and update on packed rows (padding dropped); false: padded batches
    critic_learning_rate: float | None = Field(None, gt=0)  # None: train.learning_rate
    critic_warmup_steps: int = Field(0, ge=0)  # iterations that train the critic only
    kl_coef: float = Field(0.05, ge=0.0)  # beta of the per-token KL penalty
    target_kl: float | None = Field(None, gt=0)  # adaptive beta (Ziegler et al.): sequence KL target
    kl_horizon: int = 10000
    kl_ceiling: float | None = None  # stop the run when the mean sequence KL passes this
    missing_eos_penalty: float | None = 1.0  # subtracted from the score of a response without EOS
    normalize_scores: bool = True  # (score - mean) / std with the RM's stored statistics
    score_clip: float | None = None  # clip scores to [-c, c] after normalisation
    whiten_rewards: bool = False
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    lam: float = Field(0.95, ge=0.0, le=1.0)
    clip_range: float = Field(0.2, gt=0)
    clip_range_value: float = Field(0.2, gt=0)
    vf_coef: float = 0.1
    stop_kl: float | None = None  # end an update's epochs early when approx-KL passes this
    allow_ratio_mismatch: bool = False  # train on although the first minibatch's ratio is not 1 (loop.py)
    ptx_coef: float = Field(0.0, ge=0.0)  # PPO-ptx (InstructGPT): weight of the LM loss on ptx_data rows
    ptx_batch_size: int = Field(8, ge=1)  # ptx_data rows per minibatch
    sample_every: int = 10  # log a few generations every N iterations
    validation_every: int = Field(0, ge=0)  # score the validation prompts every N steps (0: never)
    validation_prompts: int = Field(64, ge=1)  # how many of the training prompts are split off for it
    keep_best: bool = False  # the artifact is the policy of the best validation step (step 0: SFT)
    early_stop_patience: int | None = Field(None, ge=1)  # stop after this many evaluations without a gain

    @model_validator(mode="after")
    def _batches(self) -> PPOSettings:
        require(
            self.rollouts % self.mini_batch_size == 0,
            "ppo.rollouts must be a multiple of ppo.mini_batch_size",
        )
        require(
            self.mini_batch_size % self.micro_batch_size == 0,
            "ppo.mini_batch_size must be a multiple of ppo.micro_batch_size",
        )
        return self


class PPOTrainSettings(TrainSettings):
    """What PPO reads of the shared training settings: iterations (`max_steps`), learning rate, seed,
    TensorBoard period (`logging_steps`), checkpoints (`save_steps`, `save_total_limit`), gradient clipping
    and AdamW's weight decay (its own default, as the reference implementations use)."""

    learning_rate: float = Field(1e-5, gt=0)
    max_steps: int = Field(100, ge=1)
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(25, ge=0)
    weight_decay: float = Field(0.01, ge=0.0)


class PPOConfig(Judged):
    """`align ppo`: the SFT policy optimised against a reward model (or a reward function) with PPO."""

    model: str = ""  # SFT artifact (the policy and, adapters disabled, the reference)
    validation_reward: str | None = None  # a `module:function` judging each step's rollouts, never optimised
    validation_reward_model: str | None = None  # or an RM artifact (a held-out ensemble member, a second RM)
    monitor_reward: str | None = (
        None  # a `module:function` logged per step (the synthetic gold); chooses nothing
    )
    prompts: str = ""  # prompts file (or a pairs/sft file: its prompts)
    ptx_data: str | None = None  # SFT data (demonstrations) whose LM loss PPO-ptx mixes in
    init_adapter: str | None = None  # a PPO artifact of this `model`: the policy starts from its adapter
    output: str = ""
    limit: int | None = Field(None, ge=1)
    critic: Literal["auto", "rm_lora", "rm_copy", "policy_copy"] = "auto"  # see stages/ppo/networks.py
    trust_remote_code: bool = False
    lora: LoraSettings = LoraSettings()  # enabled: false = full fine-tuning + a frozen reference copy
    critic_lora: LoraSettings = LoraSettings()
    train: PPOTrainSettings = PPOTrainSettings()
    ppo: PPOSettings = PPOSettings()

    @model_validator(mode="after")
    def _inputs(self) -> PPOConfig:
        require_paths(self, "model", "prompts", "output")
        self.require_one_judge()
        require(
            self.reward_model is not None or self.critic in ("auto", "policy_copy"),
            f"critic '{self.critic}' needs --reward-model",
        )
        require(self.ppo.ptx_coef == 0 or bool(self.ptx_data), "ppo.ptx_coef > 0 needs ptx_data (SFT data)")
        require(
            self.validation_reward is None or self.validation_reward_model is None,
            "give at most one of --validation-reward and --validation-reward-model",
        )
        judged = self.validation_reward is not None or self.validation_reward_model is not None
        needs = self.ppo.keep_best or self.ppo.early_stop_patience is not None
        require(
            not needs or (judged and self.ppo.validation_every > 0),
            "ppo.keep_best and ppo.early_stop_patience need a validation judge and ppo.validation_every > 0",
        )
        require(self.init_adapter is None or self.lora.enabled, "init_adapter continues a LoRA policy")
        return self


class RoundsConfig(Settings):
    """`align rounds`: iterated RLHF. Round 0 is PPO against `reward_model`; each refresh round then has
    the current policy answer a fresh slice of `refresh_prompts`, the judge rank the answers, an RM
    trained on `data` and every round's pairs so far, and PPO against it, continuing the last round's
    policy (or, with `restart`, from the SFT policy); the KL is always to `model`, the SFT policy."""

    model: str = ""  # SFT artifact: the policy every round's KL is measured against
    reward_model: str = ""  # round 0's RM
    data: str = ""  # the pairs that RM was trained on; every refreshed RM trains on them too
    prompts: str = ""  # PPO's prompts
    refresh_prompts: str = ""  # the pool each refresh round takes a fresh slice of
    judge: str = ""  # `module:function` ranking the samples (the simulated annotators), or `people`
    double_share: float = Field(0.1, ge=0.0, le=1.0)  # people: items two annotators judge (agreement)
    output: str = ""
    rounds: int = Field(2, ge=0)  # refresh rounds after round 0
    steps: list[int] = [50, 50, 50]  # PPO iterations of round 0 and of each refresh round
    restart: bool = False  # each round's PPO from the SFT policy instead of the last round's
    # the refreshed RM: trained from the SFT policy on every pair so far (`sft`), or the last round's RM
    # trained further on this round's pairs and as many earlier ones replayed (`previous`, faster)
    rm_init: Literal["sft", "previous"] = "sft"
    refresh_weight: int = Field(1, ge=1)  # each round's own pairs count this many times in the RM's data
    # who answers the refresh prompts: the current policy (on-policy data), or the SFT policy, the
    # control that tells on-policy data from more data
    samples_from: Literal["policy", "sft"] = "policy"
    holdout: float = Field(
        0.2, gt=0.0, lt=1.0
    )  # each round's judged pairs kept from training: the blind spot
    seed: int = 0
    ppo_recipe: str = ""  # the PPO recipe each round runs (its model, RM, prompts and output are wired)
    rm_recipe: str = ""  # the RM recipe each refresh trains by
    overrides: dict[Literal["ppo", "rm"], dict[str, Any]] = {}  # e.g. {ppo: {ppo.kl_coef: 0.2}}
    sampling: PairSampling = PairSampling(prompts_per_round=400, label_noise=0.1, pairs="all")
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _inputs(self) -> RoundsConfig:
        require_paths(self, "model", "reward_model", "data", "prompts", "output", "ppo_recipe", "rm_recipe")
        require(
            self.rounds == 0 or bool(self.refresh_prompts and self.judge),
            "refresh rounds need refresh_prompts and a judge",
        )
        require(
            len(self.steps) == self.rounds + 1 and min(self.steps) >= 1,
            f"steps needs one PPO step count >= 1 per round: {self.rounds + 1} values",
        )
        return self


class PretrainConfig(Settings):
    """`align pretrain`: a tokenizer and a small GPT-2 from scratch on a text corpus."""

    data: str = "data/synthetic/pretrain.jsonl"
    output: str = ""
    eval_fraction: float = Field(0.05, gt=0.0, lt=1.0)
    block_size: int = Field(128, ge=8)  # packed sequence length, at most arch.n_positions
    tokenizer: TokenizerSettings = TokenizerSettings()
    arch: ArchSettings = ArchSettings()
    train: TrainSettings = TrainSettings(learning_rate=1e-3, batch_size=16)

    @model_validator(mode="after")
    def _inputs(self) -> PretrainConfig:
        require_paths(self, "data", "output")
        require(self.block_size <= self.arch.n_positions, "block_size must be <= arch.n_positions")
        return self


class EvalConfig(EnsembleJudging):
    """`align eval`: gold score, RM score and KL of a policy on held-out prompts."""

    model: str = ""
    prompts: str = "data/synthetic/eval.jsonl"
    reward_model: str | None = None  # also report the RM's mean score of the responses
    reference: str | None = None  # KL reference; default: the SFT parent of a PPO/DPO artifact
    limit: int | None = Field(1200, ge=1)
    temperature: float = Field(0.7, gt=0)
    greedy: bool = True  # also report greedy decoding beside sampling
    max_new_tokens: int = Field(32, ge=1)
    batch_size: int = Field(128, ge=1)
    seed: int = 0
    best_of_n: list[int] = []  # best-of-n baselines (needs reward_model)
    shortest_of_n: list[int] = []  # the shortest of n samples: does saying less win?
    perplexity_data: str | None = None  # a text set whose perplexity is reported
    record: bool = True  # keep the figures beside the artifact, in evaluations/<what was evaluated>.json

    @model_validator(mode="after")
    def _inputs(self) -> EvalConfig:
        require_paths(self, "model", "prompts")
        require(all(n >= 2 for n in self.best_of_n + self.shortest_of_n), "best_of_n values must be >= 2")
        require(not self.best_of_n or bool(self.reward_model), "best_of_n needs a reward_model to pick with")
        return self


__all__ = [
    "DataStage",
    "SFTConfig",
    "RMConfig",
    "Judged",
    "PairsConfig",
    "DPOConfig",
    "OnlineConfig",
    "GRPOConfig",
    "RLOOConfig",
    "PPOSettings",
    "PPOTrainSettings",
    "PPOConfig",
    "RoundsConfig",
    "PretrainConfig",
    "EvalConfig",
]
