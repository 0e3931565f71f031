"""Text: the chat template and prompt rendering, data rows to token ids, and BPE training."""
