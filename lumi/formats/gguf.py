"""A ``LlamaForCausalLM`` and its tokenizer as one GGUF file for llama.cpp (and Ollama), written with the ``gguf``
package's writer: LLaMA architecture metadata, the tokenizer (``lumi.formats.gguf_tokenizer``), the chat template,
the end-of-turn id, and the weights in f32, f16, bf16 or q8_0 (norms stay f32, as llama.cpp's converter keeps them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumi.core.errors import LumiError
from lumi.formats.gguf_tokenizer import GGUFVocab

DTYPES = ("f32", "f16", "bf16", "q8_0")


def _ggml_types() -> dict[str, Any]:
    import gguf

    Q = gguf.GGMLQuantizationType
    return {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}


def _file_type(dtype: str) -> int:
    import gguf

    F = gguf.LlamaFileType
    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0}[dtype]


def check_exportable(config: Any) -> None:
    """Refuse a model whose architecture the ``llama`` GGUF layout cannot describe."""
    rope = getattr(config, "rope_parameters", None) or {}
    problems = [what for what, bad in (
        (f"model_type {config.model_type!r}", config.model_type != "llama"),
        (f"hidden_act {config.hidden_act!r}", config.hidden_act != "silu"),
        ("attention_bias", getattr(config, "attention_bias", False)),
        ("mlp_bias", getattr(config, "mlp_bias", False)),
        (f"rope_type {rope.get('rope_type')!r}", rope.get("rope_type", "default") != "default")) if bad]
    if problems:
        raise LumiError(f"cannot export to GGUF: {', '.join(problems)} (export writes plain LLaMA models: SwiGLU, "
                        "no biases, default RoPE)")


def rope_interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """q/k projection rows reordered from transformers' RoPE layout (each head's two halves rotate together) to
    llama.cpp's (adjacent pairs rotate together). Hand-written: it is the one line of index arithmetic that layout
    change needs, and no installed package exposes it."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _tensor(value: torch.Tensor, dtype: str) -> tuple[np.ndarray, Any]:
    """(data, raw ggml type or None) for ``GGUFWriter.add_tensor``."""
    import gguf

    data = value.detach().to(torch.float32).cpu().numpy()
    if data.ndim == 1 or dtype == "f32":
        return data, None
    if dtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]:
        dtype = "f16"  # a row that is not a whole number of q8_0 blocks (as llama.cpp's converter does)
    qtype = _ggml_types()[dtype]
    if dtype == "f16":
        return data.astype(np.float16), None
    return gguf.quants.quantize(data, qtype), qtype


def write_gguf(model: Any, vocab: GGUFVocab, path: str | Path, dtype: str = "f16", name: str = "lumi",
               chat_template: str | None = None) -> None:
    """Write ``model`` (a ``LlamaForCausalLM`` on the CPU) and ``vocab`` to ``path``."""
    import gguf

    if dtype not in DTYPES:
        raise LumiError(f"GGUF dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    config = model.config
    check_exportable(config)
    if len(vocab.tokens) != config.vocab_size:
        raise LumiError(f"the tokenizer has {len(vocab.tokens)} pieces but the model {config.vocab_size} embeddings")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(_file_type(dtype))
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_unk_token_id(vocab.unk_id)
    writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(True)  # a raw prompt starts with BOS, as every pretraining document does
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)  # SentencePiece was trained with add_dummy_prefix=False
    if chat_template:
        writer.add_chat_template(chat_template)
        writer.add_eot_token_id(vocab.end_of_turn_id)  # generation stops at <|im_end|> as well as </s>
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, value in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp uses token_embd as the output head when output.weight is absent
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise LumiError(f"cannot export to GGUF: no llama.cpp name for tensor {hf_name}")
        if hf_name.endswith("q_proj.weight"):
            value = rope_interleaved(value, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            value = rope_interleaved(value, config.num_key_value_heads)
        data, raw_dtype = _tensor(value, dtype)
        writer.add_tensor(gguf_name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
