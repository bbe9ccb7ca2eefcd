"""Stage 40: pretraining (loss, data mixing, optimizer, checkpoints and the training loop)."""
