"""Lumi-Lab: a config-driven pipeline from raw text to a served LLaMA-style chat model."""

__version__ = "0.1.0"
