"""Multi-turn chat with a policy: the model's chat template, a bounded history, an optional safety filter.

    session = Conversation.load("runs/tiny/ppo", history_turns=4)
    session.reply("Add 2 and 3.")

The history window keeps the last `history_turns` exchanges (user + assistant), so a long chat never
outgrows the context. With a safety model (an RM or classifier artifact), each reply is scored and one
under the threshold is replaced by a refusal, and not kept in the history either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from align.chat import prompt_text
from align.generation import Sampling, sample_texts
from align.models import load_policy, load_tokenizer, pick_device, resolve_model
from align.rewards import RewardModel

REFUSAL = "I can't help with that."


@dataclass
class Conversation:
    model: Any
    tokenizer: Any
    sampling: Sampling = field(default_factory=Sampling)
    history_turns: int = 4
    system: str | None = None
    safety: RewardModel | None = None
    safety_threshold: float = 0.0
    history: list[dict[str, str]] = field(default_factory=list)
    seed: int = 0

    @classmethod
    def load(
        cls, model: str, safety_model: str | None = None, trust_remote_code: bool = False, **settings: Any
    ) -> Conversation:
        source = resolve_model(model)
        device = pick_device()
        policy = load_policy(source, trust_remote_code).to(device)
        safety = RewardModel.load(safety_model, device=device) if safety_model else None
        return cls(policy, load_tokenizer(source, trust_remote_code), safety=safety, **settings)

    def messages(self, user: str) -> list[dict[str, str]]:
        """What the model sees: the system prompt, the last `history_turns` exchanges, the new message."""
        window = self.history[-2 * self.history_turns :] if self.history_turns > 0 else []
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *window, {"role": "user", "content": user}]

    def reply(self, user: str) -> str:
        """The model's answer to `user` (without the EOS text), after the safety filter."""
        prompt = prompt_text(self.tokenizer, self.messages(user))
        self.seed += 1
        response = sample_texts(self.model, self.tokenizer, [prompt], self.sampling, 1, self.seed)[0]
        if self.safety is not None and self.safety.score([prompt], [response])[0] < self.safety_threshold:
            return REFUSAL
        answer = response.removesuffix(self.tokenizer.eos_token).strip()
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return answer

    def reset(self) -> None:
        self.history.clear()
