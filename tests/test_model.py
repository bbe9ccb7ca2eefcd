"""The model builder and the causal-LM loss: exact parameter counts, special ids, document masking, one shift."""

from __future__ import annotations

import math

import pytest
import torch

from lumi.core.errors import LumiError
from lumi.core.special_tokens import BOS_ID, EOS_ID, PAD_ID
from lumi.lm.loss import count_scored_tokens, position_ids_from_bos, summed_nats
from lumi.model import ArchitectureConfig, build_model, flops_per_token, load_architecture, parameter_counts
from lumi.train.distributed import wrap_for_training
from lumi.train.objectives.pretrain import PackedLMLoss

VOCAB = 97


def causal_lm_loss(model, input_ids: torch.Tensor, *, document_masking: bool = True,
                   reduction: str = "mean", **options):
    """``summed_nats`` (the loss training minimises and evaluation scores) with its token count: the mean, or
    ``(sum, count)`` for ``reduction="sum"``."""
    total = summed_nats(model, input_ids, document_masking=document_masking, **options)
    count = count_scored_tokens(input_ids)
    return (total, count) if reduction == "sum" else total / count


def small_arch(**changes) -> ArchitectureConfig:
    fields = dict(load_architecture("micro", vocab_size=VOCAB).model_dump())
    fields.update(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64, max_seq_len=64)
    fields.update(changes)
    return ArchitectureConfig(**fields)


def document(length: int, generator: torch.Generator) -> torch.Tensor:
    body = torch.randint(len((PAD_ID, BOS_ID, EOS_ID)) + 3, VOCAB, (length,), generator=generator)
    return torch.cat([torch.tensor([BOS_ID]), body, torch.tensor([EOS_ID])])


@pytest.mark.parametrize("name", ["micro", "tiny", "small", "base"])
def test_shipped_architectures_load_and_flops_exceed_6n(name):
    arch = load_architecture(name)
    counts = parameter_counts(arch)
    assert counts["total"] == counts["non_embedding"] + counts["embedding"]
    assert flops_per_token(arch, arch.max_seq_len) > 6 * counts["non_embedding"]


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_counts_match_the_built_model(tied):
    arch = small_arch(tie_embeddings=tied)
    model = build_model(arch)
    counts = parameter_counts(arch)
    assert model.num_parameters() == counts["total"]
    # Our "non-embedding" excludes the input table and the output head (tied or not), as in Kaplan et al.
    body = model.model.layers.parameters(), model.model.norm.parameters()
    assert sum(p.numel() for group in body for p in group) == counts["non_embedding"]


def test_vocab_override_and_bad_shapes_are_refused():
    assert load_architecture("micro", vocab_size=1234).vocab_size == 1234
    with pytest.raises(LumiError, match="no-such-arch"):
        load_architecture("no-such-arch")
    with pytest.raises(ValueError, match="must divide"):
        small_arch(num_kv_heads=3)
    with pytest.raises(ValueError, match="must divide"):
        small_arch(hidden_size=30)


def test_special_ids_in_model_and_generation_config():
    model = build_model(small_arch())
    for config in (model.config, model.generation_config):
        assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (BOS_ID, EOS_ID, PAD_ID)


def test_position_ids_restart_at_every_bos():
    ids = torch.tensor([[7, 8, BOS_ID, 9, EOS_ID, BOS_ID, BOS_ID, 10]])
    assert position_ids_from_bos(ids).tolist() == [[0, 1, 0, 1, 2, 0, 0, 1]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_documents_do_not_attend_to_each_other(attn):
    torch.manual_seed(0)
    model = build_model(small_arch(), attn_implementation=attn).eval()
    generator = torch.Generator().manual_seed(1)
    first, second, third = document(9, generator), document(13, generator), document(5, generator)
    row = torch.cat([first, second, third]).unsqueeze(0)
    start, end = len(first), len(first) + len(second)
    with torch.no_grad():
        alone = model(input_ids=second.unsqueeze(0)).logits[0]
        packed = model(input_ids=row, position_ids=position_ids_from_bos(row), use_cache=False).logits[0]
        leaky = model(input_ids=row, use_cache=False).logits[0]
    torch.testing.assert_close(packed[start:end], alone, atol=1e-5, rtol=0)
    assert not torch.allclose(leaky[start:end], alone, atol=1e-3)  # without document masking they would differ


def test_loss_with_document_masking_equals_documents_scored_alone():
    torch.manual_seed(0)
    model = build_model(small_arch()).eval()
    generator = torch.Generator().manual_seed(2)
    docs = [document(n, generator) for n in (6, 11, 8)]
    row = torch.cat(docs).unsqueeze(0)
    with torch.no_grad():
        packed_sum, packed_count = causal_lm_loss(model, row, reduction="sum")
        alone = [causal_lm_loss(model, d.unsqueeze(0), reduction="sum") for d in docs]
        leaky_sum, _ = causal_lm_loss(model, row, reduction="sum", document_masking=False)
    assert packed_count == sum(count for _, count in alone) == row.numel() - len(docs)  # BOS targets unscored
    torch.testing.assert_close(packed_sum, sum(total for total, _ in alone), atol=1e-4, rtol=0)
    assert abs(float(leaky_sum) - float(packed_sum)) > 1e-3


def test_labels_are_shifted_exactly_once():
    """Against log-probabilities read off the full logits: shift 1 matches; shifts 0 and 2 (the bugs) do not."""
    torch.manual_seed(0)
    model = build_model(small_arch()).eval()
    ids = torch.randint(6, VOCAB, (2, 24))
    with torch.no_grad():
        loss = causal_lm_loss(model, ids, document_masking=False)
        log_probs = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)

    def nll_with_shift(shift: int) -> torch.Tensor:
        predicted = log_probs[:, : ids.shape[1] - shift] if shift else log_probs
        return -predicted.gather(-1, ids[:, shift:].unsqueeze(-1)).mean()

    torch.testing.assert_close(loss, nll_with_shift(1), atol=1e-5, rtol=0)
    assert abs(float(loss - nll_with_shift(0))) > 1e-2
    assert abs(float(loss - nll_with_shift(2))) > 1e-3


def test_loss_matches_transformers_own_loss_and_is_independent_of_chunking():
    torch.manual_seed(0)
    model = build_model(small_arch())
    ids = torch.randint(6, VOCAB, (3, 20))
    ids[:, 0] = BOS_ID
    ids[1, 9:11] = torch.tensor([EOS_ID, BOS_ID])
    positions = position_ids_from_bos(ids)
    labels = torch.where(ids == BOS_ID, -100, ids)  # transformers shifts labels itself, once
    reference = model(input_ids=ids, position_ids=positions, labels=labels, use_cache=False).loss
    chunked = causal_lm_loss(model, ids, chunk_tokens=7)
    torch.testing.assert_close(chunked, reference, atol=1e-5, rtol=0)
    (grad_chunked,) = torch.autograd.grad(chunked, model.model.embed_tokens.weight)
    (grad_reference,) = torch.autograd.grad(reference, model.model.embed_tokens.weight)
    torch.testing.assert_close(grad_chunked, grad_reference, atol=1e-6, rtol=1e-4)
    total, count = causal_lm_loss(model, ids, reduction="sum")
    assert count == count_scored_tokens(ids)
    torch.testing.assert_close(total / count, chunked, atol=1e-6, rtol=0)


def test_initial_loss_is_close_to_uniform():
    """At init the logits are ~ N(0, s^2) with s = init std x sqrt(hidden) (the final RMSNorm makes the hidden state's
    RMS 1, the head is the tied embedding), so the loss is log(vocab) + s^2 / 2 (log-normal mean of the partition
    sum); a wrong init scale or a broken head moves it away from that."""
    torch.manual_seed(0)
    arch = load_architecture("micro")
    model = build_model(arch).eval()
    ids = torch.randint(6, arch.vocab_size, (4, 128))
    with torch.no_grad():
        loss = float(causal_lm_loss(model, ids, document_masking=False))
    expected = math.log(arch.vocab_size) + arch.init_std ** 2 * arch.hidden_size / 2
    assert abs(loss - expected) / expected < 0.01


def test_init_draws_output_projections_with_their_own_std_when_set():
    torch.manual_seed(0)
    arch = load_architecture("micro", vocab_size=2048)
    litgpt = arch.model_copy(update={"init_std": math.sqrt(2 / (5 * 128)), "output_init_std": 1 / (math.sqrt(128) * 4)})
    for config, output_std in ((arch, arch.init_std), (litgpt, litgpt.output_init_std)):
        model = build_model(config)
        for name, param in model.named_parameters():
            if param.ndim == 2:
                expected = output_std if name.endswith(("o_proj.weight", "down_proj.weight")) else config.init_std
                assert float(param.std()) == pytest.approx(expected, rel=0.05), name


def test_rows_laid_end_to_end_give_the_same_loss(monkeypatch):
    """The flash-attention path (one long row) scores exactly what the batched path scores; checked with sdpa,
    which detects packing either way."""
    torch.manual_seed(0)
    model = build_model(small_arch()).eval()
    generator = torch.Generator().manual_seed(3)
    ids = torch.cat([document(n, generator) for n in (20, 9, 14, 21)])[:64].reshape(2, 32)
    with torch.no_grad():
        batched = causal_lm_loss(model, ids, reduction="sum")
        monkeypatch.setattr("lumi.lm.loss.packs_only_single_rows", lambda model: True)
        one_row = causal_lm_loss(model, ids, reduction="sum")
    assert one_row[1] == batched[1]
    torch.testing.assert_close(one_row[0], batched[0], atol=1e-4, rtol=0)


def test_document_masking_and_gradients_hold_when_backbone_and_loss_are_compiled():
    """``compile: true`` (what GPU runs use): transformers finds the packed documents under torch.compile too, and
    the compiled loss chunks give the eager loss and gradients."""
    torch.manual_seed(0)
    model = build_model(small_arch())
    generator = torch.Generator().manual_seed(4)
    docs = [document(n, generator) for n in (9, 14, 7)]
    row = torch.cat(docs).unsqueeze(0)
    with torch.no_grad():
        alone = sum(causal_lm_loss(model, d.unsqueeze(0), reduction="sum")[0] for d in docs)
    eager_sum, _ = causal_lm_loss(model, row, reduction="sum")
    eager_grads = torch.autograd.grad(eager_sum, list(model.parameters()))
    compiled = wrap_for_training(PackedLMLoss(model, compile_chunks=True), "ddp", compile_model=True)
    compiled_sum = compiled(row, True)
    compiled_grads = torch.autograd.grad(compiled_sum, list(model.parameters()))
    torch.testing.assert_close(compiled_sum, alone, atol=1e-4, rtol=0)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
