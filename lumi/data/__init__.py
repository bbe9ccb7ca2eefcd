"""Datasets fed to models: the synthetic world, the packed pretraining stream, chat conversations (templates,
readers, the SFT corpus)."""
