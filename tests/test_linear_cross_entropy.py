"""The chunked output projection + cross-entropy whose gradients are computed in the forward pass
(``lumi.lm.linear_cross_entropy``): value and gradients equal autograd through the full logits."""

import pytest
import torch
import torch.nn.functional as F

from lumi.lm.linear_cross_entropy import IGNORE_INDEX, linear_cross_entropy

VOCAB, WIDTH = 97, 16


def inputs(tokens: int, seed: int = 0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, WIDTH, generator=generator, dtype=dtype).requires_grad_()
    weight = (0.3 * torch.randn(VOCAB, WIDTH, generator=generator, dtype=dtype)).requires_grad_()
    targets = torch.randint(0, VOCAB, (tokens,), generator=generator)
    targets[::7] = IGNORE_INDEX  # unscored positions (row ends, BOS, PAD) are ignored, not removed
    return hidden, weight, targets


def reference(hidden, weight, targets):
    """What autograd computes through the whole (tokens, vocab) logits in fp32."""
    return F.cross_entropy(F.linear(hidden, weight).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.mark.parametrize("chunk_tokens", [1, 7, 50, 4096])
def test_value_and_gradients_equal_autograd_through_full_logits(chunk_tokens):
    hidden, weight, targets = inputs(50)
    scale = 2.5  # the trainer backpropagates nats * world_size / tokens: the kept gradients must be scaled by it
    fused = linear_cross_entropy(hidden, weight, targets, chunk_tokens=chunk_tokens)
    fused_grads = torch.autograd.grad(fused * scale, (hidden, weight))
    expected = reference(hidden, weight, targets)
    expected_grads = torch.autograd.grad(expected * scale, (hidden, weight))
    torch.testing.assert_close(fused, expected, rtol=1e-6, atol=1e-5)
    for got, want in zip(fused_grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not fused_grads[0][::7].any()  # ignored positions get no gradient


def test_without_grad_gives_the_same_loss():
    hidden, weight, targets = inputs(30)
    with_grad = linear_cross_entropy(hidden, weight, targets, chunk_tokens=8)
    with torch.no_grad():
        without = linear_cross_entropy(hidden, weight, targets, chunk_tokens=8)
    assert not without.requires_grad
    torch.testing.assert_close(without, with_grad.detach(), rtol=1e-6, atol=1e-5)


def test_gradients_accumulate_like_autograd_when_the_weight_is_used_twice():
    """Tied embeddings: the output weight also feeds the input; its two gradients must add up."""
    hidden, weight, targets = inputs(20)
    tokens = torch.randint(0, VOCAB, (20,), generator=torch.Generator().manual_seed(1))

    def loss(fn):
        features = hidden + F.embedding(tokens, weight)
        return fn(features, weight, targets)

    (fused,) = torch.autograd.grad(loss(lambda h, w, t: linear_cross_entropy(h, w, t, chunk_tokens=6)), weight)
    (expected,) = torch.autograd.grad(loss(reference), weight)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)


def test_under_bf16_autocast_matmuls_run_in_bf16_and_gradients_keep_the_inputs_dtype():
    hidden, weight, targets = inputs(40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(hidden, weight, targets, chunk_tokens=16)
        expected = reference(hidden, weight, targets)  # F.linear autocasts to bf16, the upcast is explicit
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, expected, rtol=1e-3, atol=1e-2)
    grads = torch.autograd.grad(fused, (hidden, weight))
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    for got, want, original in zip(grads, expected_grads, (hidden, weight)):
        assert got.dtype == original.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.02)
    exact = torch.autograd.grad(reference(hidden, weight, targets), weight)[0]
    assert not torch.equal(grads[1], exact), "bf16 matmuls must differ from the fp32 ones"


def test_compiled_chunks_give_the_same_loss_and_gradients():
    hidden, weight, targets = inputs(45)
    eager = linear_cross_entropy(hidden, weight, targets, chunk_tokens=20)
    compiled = linear_cross_entropy(hidden, weight, targets, chunk_tokens=20, compiled=True)  # chunks of 20, 20, 5
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for got, want in zip(torch.autograd.grad(compiled, (hidden, weight)), torch.autograd.grad(eager, (hidden, weight))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
