"""Stage 100: serve a checkpoint — one generation engine (slot KV cache, continuous batching) behind a terminal chat,
an OpenAI-compatible HTTP API and a self-contained web chat page."""
