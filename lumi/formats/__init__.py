"""What lies on disk between stages: corpus store, tokenizer dir, packed rows, checkpoints, metrics log."""
