"""Stage 100: serve a checkpoint — the generation engine (``lumi.generation``: slot KV cache, continuous batching)
behind a terminal chat, an OpenAI-compatible HTTP API and a self-contained web chat page."""
