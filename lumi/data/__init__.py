"""Datasets fed to models: the synthetic world and the packed pretraining stream (chat and preference data later)."""
