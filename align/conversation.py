"""Multi-turn chat with a policy: the model's chat template, a bounded history, an optional safety filter.

    session = Conversation.load("runs/tiny/ppo", history_turns=4)
    session.reply("Add 2 and 3.")

The history window keeps the last `history_turns` exchanges (user + assistant), so a long chat never
outgrows the context. With a safety model (an RM or classifier artifact), each reply is scored and one
under the threshold is replaced by a refusal, and not kept in the history either.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from align.decoding.generate import Decoding, sample_texts
from align.errors import ConfigError
from align.models import load_policy, load_tokenizer, pick_device, resolve_model
from align.rewards import RewardModel
from align.text.chat import prompt_text

REFUSAL = "I can't help with that."


@dataclass
class Conversation:
    model: Any
    tokenizer: Any
    decoding: Decoding = field(default_factory=Decoding)
    history_turns: int = 4
    system: str | None = None
    safety: RewardModel | None = None
    safety_threshold: float = 0.0
    history: list[dict[str, str]] = field(default_factory=list)
    seed: int = 0

    @classmethod
    def load(
        cls,
        model: str,
        safety_model: str | None = None,
        trust_remote_code: bool = False,
        decoding: Decoding | None = None,
        history_turns: int = 4,
        system: str | None = None,
        safety_threshold: float = 0.0,
    ) -> Conversation:
        if history_turns < 0:
            raise ConfigError("--history-turns must be >= 0")
        source = resolve_model(model)
        device = pick_device()
        policy = load_policy(source, trust_remote_code, inference=True).to(device)
        safety = RewardModel.load(safety_model, device=device) if safety_model else None
        tokenizer = load_tokenizer(source, trust_remote_code)
        return cls(policy, tokenizer, decoding or Decoding(), history_turns, system, safety, safety_threshold)

    def messages(self, user: str) -> list[dict[str, str]]:
        """What the model sees: the system prompt, the last `history_turns` exchanges, the new message."""
        window = self.history[-2 * self.history_turns :] if self.history_turns > 0 else []
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *window, {"role": "user", "content": user}]

    def reply(self, user: str) -> str:
        """The model's answer to `user` (without the EOS text), after the safety filter."""
        prompt = prompt_text(self.tokenizer, self.messages(user))
        self.seed += 1
        response = sample_texts(self.model, self.tokenizer, [prompt], self.decoding, 1, self.seed)[0]
        if self.safety is not None and self.safety.score([prompt], [response])[0] < self.safety_threshold:
            return REFUSAL
        answer = response.removesuffix(self.tokenizer.eos_token).strip()
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return answer

    def reset(self) -> None:
        self.history.clear()

    def run(self, lines: Iterable[str]) -> Iterator[str]:
        """The terminal chat: a reply per message line; `/reset` clears the history, `/exit` ends."""
        for line in lines:
            message = line.strip()
            if message == "/exit":
                return
            if message == "/reset":
                self.reset()
                yield "(history cleared)"
            elif message:
                yield f"assistant: {self.reply(message)}"
