"""The training loop shared by every trainer (Trainer), its config part, optimizer, distributed runtime, metrics."""
