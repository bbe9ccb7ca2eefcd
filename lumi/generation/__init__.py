"""The generation engine (slot KV cache, continuous batching, sampling, stop handling, incremental detokenization):
one building block that the server, the terminal chat and the evaluator's generation checks all drive."""
