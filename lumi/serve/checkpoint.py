"""Load what the server serves: a ``save_pretrained`` model directory (pretrained, merged, DPO, any
``LlamaForCausalLM`` dir with a tokenizer) or a PEFT adapter directory, through the one verified way in
(``lumi.loading``): checksums, the adapter's recorded base (refused when its weights changed), one-line errors.

Safetensors only and never ``trust_remote_code``: a checkpoint is data, not code. An adapter is merged into its base
once at load time (``merge_and_unload``), so serving costs what the merged model costs.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lumi.loading import load_with_tokenizer


def load_for_serving(model_dir: str | Path, device: str = "auto",
                     dtype: str = "auto") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (eval mode, on ``device``) and tokenizer. The tokenizer comes from the directory itself, or for an
    adapter without tokenizer files from its base; it adds BOS to completion prompts as pretraining data has it."""
    return load_with_tokenizer(model_dir, "model to serve", device, dtype, add_bos=True)
