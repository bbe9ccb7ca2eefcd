"""The model: transformers' ``LlamaForCausalLM`` built from a small, validated architecture config.

The architecture lives in ``config/architectures/<name>.json`` (``micro``, ``tiny``, ``small``, ``base``). The model
is the stock transformers class, so every checkpoint is a ``save_pretrained`` directory that ``AutoModelForCausalLM``
loads with no code of ours; the special-token ids come from ``lumi.core.special_tokens`` and are written into both the
model config and the generation config so ``generate`` stops at EOS and pads with PAD out of the box.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field, model_validator
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from lumi.core.config import CONFIG_DIR, ConfigModel, load_config
from lumi.core.errors import LumiError
from lumi.core.special_tokens import BOS_ID, EOS_ID, PAD_ID, SPECIAL_IDS

ARCHITECTURES_DIR = CONFIG_DIR / "architectures"
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flex_attention")


class ArchitectureConfig(ConfigModel):
    """Shape of a LLaMA-style decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention)."""

    name: str = Field(min_length=1, description="default run name and checkpoint subdirectory")
    vocab_size: int = Field(gt=len(SPECIAL_IDS), le=1 << 20,
                            description="replaced at build time by the tokenizer's exact vocabulary size")
    hidden_size: int = Field(gt=0, description="residual stream width")
    num_layers: int = Field(gt=0, description="decoder blocks")
    num_heads: int = Field(gt=0, description="query heads; must divide hidden_size (head dim even, for RoPE)")
    num_kv_heads: int = Field(gt=0, description="key/value heads (grouped-query attention); must divide num_heads")
    intermediate_size: int = Field(gt=0, description="SwiGLU FFN width")
    max_seq_len: int = Field(gt=1, description="longest sequence (packed rows must not be longer)")
    rope_theta: float = Field(gt=0, description="RoPE base frequency")
    tie_embeddings: bool = Field(description="share the input embedding and the output head")
    dropout: float = Field(ge=0.0, lt=1.0, description="attention dropout (LLaMA has no other dropout site)")
    init_std: float = Field(gt=0.0, le=1.0, description="std of the normal init of linear and embedding weights "
                                                     "(litgpt's sqrt(2 / (5 hidden_size)) is better for AdamW, 0.02 "
                                                     "for Muon: docs/BENCHMARKS.md, peer benchmark)")
    output_init_std: float | None = Field(None, gt=0.0, le=1.0,
                                          description="std of the normal init of the attention and MLP output "
                                                      "projections, which add into the residual stream (default: "
                                                      "init_std; litgpt: 1 / (sqrt(hidden_size) num_layers))")
    rms_norm_eps: float = Field(gt=0.0, lt=1e-2, description="RMSNorm epsilon")

    @model_validator(mode="after")
    def _check_heads(self) -> "ArchitectureConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"head dim {self.hidden_size // self.num_heads} must be even for RoPE")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def load_architecture(name_or_path: str | Path, vocab_size: int | None = None) -> ArchitectureConfig:
    """Load ``config/architectures/<name>.json`` (or a JSON path); ``vocab_size`` (the tokenizer's) overrides the
    file's."""
    text = str(name_or_path)
    path = Path(text) if text.endswith(".json") or "/" in text else ARCHITECTURES_DIR / f"{text}.json"
    if not path.is_file():
        known = sorted(p.stem for p in ARCHITECTURES_DIR.glob("*.json"))
        raise LumiError(f"architecture {text!r}: {path} not found (known: {', '.join(known)})")
    overrides = [f"vocab_size={vocab_size}"] if vocab_size is not None else []
    return load_config(ArchitectureConfig, path, overrides)


def llama_config(arch: ArchitectureConfig, attn_implementation: str = "sdpa") -> LlamaConfig:
    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise LumiError(f"attention implementation {attn_implementation!r}: expected one of "
                        f"{ATTENTION_IMPLEMENTATIONS}")
    config = LlamaConfig(
        vocab_size=arch.vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads,
        max_position_embeddings=arch.max_seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rope_theta},
        tie_word_embeddings=arch.tie_embeddings,
        attention_dropout=arch.dropout,
        initializer_range=arch.init_std,
        rms_norm_eps=arch.rms_norm_eps,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    config._attn_implementation = attn_implementation
    return config


def generation_config() -> GenerationConfig:
    return GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)


def build_model(arch: ArchitectureConfig, attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    """A freshly initialised model (weights drawn from torch's global RNG: seed it first for reproducibility)."""
    model = LlamaForCausalLM(llama_config(arch, attn_implementation))
    if arch.output_init_std is not None:  # transformers draws every weight with one std; these get their own
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.normal_(0.0, arch.output_init_std)
                layer.mlp.down_proj.weight.normal_(0.0, arch.output_init_std)
    model.generation_config = generation_config()
    return model


def parameter_counts(arch: ArchitectureConfig) -> dict[str, int]:
    """Exact parameter counts from the shapes (matches ``model.num_parameters()``; a test checks it).

    ``embedding`` is the input table plus the output head when untied; ``non_embedding`` is everything else (Kaplan
    et al.; note transformers' ``num_parameters(exclude_embeddings=True)`` counts an untied head as non-embedding).
    """
    h, kv = arch.hidden_size, arch.num_kv_heads * arch.head_dim
    attention = h * h + 2 * h * kv + h * h  # q, k, v, o projections (no biases)
    mlp = 3 * h * arch.intermediate_size  # gate, up, down
    per_layer = attention + mlp + 2 * h  # two RMSNorm weights
    non_embedding = arch.num_layers * per_layer + h  # final norm
    embedding = arch.vocab_size * h * (1 if arch.tie_embeddings else 2)
    return {"total": non_embedding + embedding, "non_embedding": non_embedding, "embedding": embedding,
            "per_layer": per_layer}


def flops_per_token(arch: ArchitectureConfig, seq_len: int) -> int:
    """Training FLOPs per token, PaLM's convention (Chowdhery et al. 2022, appendix B):

        6 * N + 12 * num_layers * hidden_size * seq_len

    where N = non-embedding parameters + the output projection (vocab_size * hidden_size, a matmul whether tied or
    not; the input lookup is free), 6 = 2 (multiply-add) x 3 (forward + backward), and the second term is attention's
    QK^T and AV products (not halved for causality), so MFU figures compare with published ones.
    """
    matmul_params = parameter_counts(arch)["non_embedding"] + arch.vocab_size * arch.hidden_size
    return 6 * matmul_params + 12 * arch.num_layers * arch.hidden_size * seq_len


def describe(arch: ArchitectureConfig, seq_len: int | None = None) -> str:
    """Human-readable summary: shape, exact parameter counts, FLOPs per token, Chinchilla-optimal tokens."""
    seq_len = seq_len or arch.max_seq_len
    counts = parameter_counts(arch)
    return "\n".join([
        f"architecture {arch.name}: {arch.num_layers} layers x {arch.hidden_size} hidden, {arch.num_heads} heads "
        f"({arch.num_kv_heads} kv), FFN {arch.intermediate_size}, vocab {arch.vocab_size}, "
        f"{'tied' if arch.tie_embeddings else 'untied'} embeddings, max_seq_len {arch.max_seq_len}",
        f"parameters: total {counts['total']:,}  non-embedding {counts['non_embedding']:,}  "
        f"embedding {counts['embedding']:,}",
        f"training FLOPs/token at seq_len {seq_len}: {flops_per_token(arch, seq_len):,}",
        f"Chinchilla-optimal budget (20 tokens/param): {20 * counts['total']:,} tokens",
    ])
