"""The offline default's tokenizer, trained from scratch on the embedded corpus (needs no trainer stack)."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from align.config import TokenizerSettings
from align.text.chat import DEFAULT_CHAT_TEMPLATE, ROLE_TOKENS

EOS, PAD = "<|endoftext|>", "<|pad|>"


def train_tokenizer(texts: list[str], settings: TokenizerSettings) -> PreTrainedTokenizerFast:
    """Byte-level BPE with digits split one by one (numbers stay learnable) and our chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=settings.vocab_size,
        min_frequency=settings.min_frequency,
        special_tokens=[EOS, PAD, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
    )
    fast.chat_template = DEFAULT_CHAT_TEMPLATE
    return fast
