"""Evaluation of a checkpoint directory: perplexity, zero-shot benchmarks, generation checks, reports.

One evaluator serves every stage (after pretraining, SFT and DPO) so numbers are comparable across them. Scoring
follows lm-evaluation-harness exactly (prompt formats, tokenization of context + continuation, acc_norm, standard
errors), so our numbers can be checked against ``lm_eval --model hf`` on the same directory.
"""
