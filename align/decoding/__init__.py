"""Decoding: HF generate, the static GPT-2 decoder and rollout engines, packed rows, log-probs."""
