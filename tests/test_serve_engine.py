"""The serving engine against transformers itself: the slot KV cache against a full forward pass, greedy decoding
against ``model.generate(do_sample=False)`` alone and batched, plus sampling, stop strings, detokenization, limits."""

from __future__ import annotations

import pytest
import torch
from serve_helpers import make_serving_dirs

from lumi.core.errors import LumiError
from lumi.serve.checkpoint import load_for_serving
from lumi.generation.detokenize import IncrementalDetokenizer, StopStringMatcher
from lumi.generation.engine import Engine, PromptTooLong, QueueFull
from lumi.generation.kv_cache import SlotKVCache, forward_with_cache
from lumi.generation.sampling import SamplingParams, TokenSampler, sample_categorical

PROMPTS = ["The king", "Once upon a time there was a small village by the sea where", "A",
           "Where is the library? It is next to the old bridge, the market and"]
GREEDY = SamplingParams(temperature=0, max_tokens=24)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    dirs = make_serving_dirs(tmp_path_factory.mktemp("serve"))
    model, tokenizer = load_for_serving(dirs["base"], device="cpu")
    return model, tokenizer


def reference(model, tokenizer, prompt_ids, stop_ids, max_new_tokens=24, **options) -> list[int]:
    output = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                            do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=sorted(stop_ids),
                            pad_token_id=tokenizer.pad_token_id, **options)
    return output[0, len(prompt_ids):].tolist()


def test_cached_decoding_equals_full_forward(served):
    model, tokenizer = served
    long_ids, short_ids = tokenizer.encode(PROMPTS[1]), tokenizer.encode(PROMPTS[0])
    cache = SlotKVCache(model, num_slots=3, context=64)
    got: dict[str, list[torch.Tensor]] = {"long": [], "short": []}
    # the long prompt in chunks of 4 into slot 2, the short one at once into slot 0
    for start in range(0, len(long_ids), 4):
        chunk = long_ids[start:start + 4]
        positions = torch.arange(start, start + len(chunk))[None]
        got["long"].append(forward_with_cache(model, cache, torch.tensor([chunk]), [2], positions)[0])
    got["short"].append(forward_with_cache(model, cache, torch.tensor([short_ids]), [0],
                                           torch.arange(len(short_ids))[None])[0])
    extra = {"long": [17, 99, 250], "short": [42, 7, 300]}
    for step in range(3):  # batched decode: both rows at their own positions
        positions = torch.tensor([[len(short_ids) + step], [len(long_ids) + step]])
        logits = forward_with_cache(model, cache, torch.tensor([[extra["short"][step]], [extra["long"][step]]]),
                                    [0, 2], positions)
        got["short"].append(logits[0])
        got["long"].append(logits[1])
    for name, ids in (("long", long_ids), ("short", short_ids)):
        full = model(torch.tensor([ids + extra[name]])).logits[0]
        assert torch.allclose(torch.cat(got[name]), full, atol=1e-4), name


def test_greedy_equals_generate_alone(served):
    model, tokenizer = served
    with Engine(model, tokenizer) as engine:
        for prompt in PROMPTS:
            ids = tokenizer.encode(prompt)
            completion = engine.generate(ids, GREEDY)
            assert completion.token_ids == reference(model, tokenizer, ids, engine.stop_ids)
            assert completion.completion_tokens == len(completion.token_ids)
            assert completion.prompt_tokens == len(ids)


def test_greedy_equals_generate_batched_with_others(served):
    """Prompts of different lengths share batched steps (3 slots for 4 requests: one waits for a slot) and the long
    prompts are prefilled in chunks of 5 while the others decode — every output stays exactly generate's."""
    model, tokenizer = served
    engine = Engine(model, tokenizer, max_batch=3, prefill_chunk=5)
    prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
    lengths = [24, 9, 30, 17]
    requests = [engine.submit(ids, SamplingParams(temperature=0, max_tokens=n)) for ids, n in zip(prompt_ids, lengths)]
    with engine:
        outputs = [[t for out in request for t in out.token_ids] for request in requests]
    for ids, n, output in zip(prompt_ids, lengths, outputs):
        assert output == reference(model, tokenizer, ids, engine.stop_ids, max_new_tokens=n)


@pytest.mark.parametrize("prefill_chunk", [256, 4])
def test_requests_of_one_prompt_share_its_prefill(served, prefill_chunk):
    """n choices or a GRPO group: the prompt is prefilled once and its keys/values copied to the other slots (also
    when its prefill takes several steps); each request still samples exactly as it would alone, and a request that
    asks for prompt log-probs prefills its own."""
    model, tokenizer = served
    ids = tokenizer.encode(PROMPTS[3])
    params = [SamplingParams(temperature=1.0, seed=seed, max_tokens=12) for seed in (1, 2, 3)]
    alone = [Engine(model, tokenizer, max_batch=1).run_all([(ids, p)])[0].token_ids for p in params]
    engine = Engine(model, tokenizer, max_batch=4, prefill_chunk=prefill_chunk)
    together = engine.run_all([(ids, p) for p in params] + [(tokenizer.encode(PROMPTS[0]), GREEDY)])
    assert [c.token_ids for c in together[:3]] == alone
    assert len({tuple(a) for a in alone}) > 1  # the samples differ: each kept its own sampler
    assert engine.stats["shared_prefills"] == 2
    engine = Engine(model, tokenizer, max_batch=2)
    requests = [engine.submit(ids, GREEDY), engine.submit(ids, GREEDY, prompt_logprobs=1)]
    with torch.inference_mode():
        while engine.waiting or engine.running:
            engine.step()
    outputs = [list(request) for request in requests]
    assert len(outputs[1][0].prompt_logprobs) == len(ids) and engine.stats["shared_prefills"] == 0


def test_stops_at_end_of_turn_ids_from_generation_config(served):
    model, tokenizer = served
    ids = tokenizer.encode(PROMPTS[3])
    free = reference(model, tokenizer, ids, {tokenizer.eos_token_id})
    stop_token = free[1]  # the random model soon repeats itself: its second token is one it produces
    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [stop_token, tokenizer.eos_token_id]
    try:
        with Engine(model, tokenizer) as engine:
            completion = engine.generate(ids, GREEDY)
    finally:
        model.generation_config.eos_token_id = original
    assert completion.token_ids == free[:free.index(stop_token) + 1]
    assert completion.finish_reason == "stop"


def test_repetition_penalty_matches_generate(served):
    model, tokenizer = served
    ids = tokenizer.encode(PROMPTS[0])
    with Engine(model, tokenizer) as engine:
        completion = engine.generate(ids, SamplingParams(temperature=0, max_tokens=24, repetition_penalty=1.5))
    assert completion.token_ids == reference(model, tokenizer, ids, engine.stop_ids, repetition_penalty=1.5)


def test_sampling_is_seeded_per_request_and_top_k_1_is_greedy(served):
    model, tokenizer = served
    ids = tokenizer.encode(PROMPTS[1])
    with Engine(model, tokenizer) as engine:
        params = SamplingParams(temperature=1.0, top_p=0.95, min_p=0.01, max_tokens=20, seed=7)
        first, second = engine.generate(ids, params), engine.generate(ids, params)
        other = engine.generate(ids, params.model_copy(update={"seed": 8}))
        top1 = engine.generate(ids, SamplingParams(temperature=1.3, top_k=1, max_tokens=20, seed=3))
        greedy = engine.generate(ids, SamplingParams(temperature=0, max_tokens=20))
    assert first.token_ids == second.token_ids
    assert first.token_ids != other.token_ids
    assert top1.token_ids == greedy.token_ids


@pytest.mark.parametrize("probabilities", [[0.1, 0.0, 0.2, 0.3, 0.4, 0.0], [0.0, 0.0, 1.0], [0.7, 0.3, 0.0, 0.0],
                                           [1e-9, 0.5 - 1e-9, 0.0, 0.5]])
def test_categorical_draws_follow_the_probabilities(probabilities):
    """The engine's sampler (inverse transform) against the distribution: 20,000 seeded draws, each frequency within
    five standard errors of its probability, a zero-probability token never drawn; the same seed, the same draws."""
    generator = torch.Generator().manual_seed(0)
    p = torch.tensor(probabilities)
    draws = [sample_categorical(p[None], [generator])[0] for _ in range(20_000)]
    counts = torch.bincount(torch.tensor(draws), minlength=len(p)).double() / len(draws)
    tolerance = 5 * (p.double() * (1 - p.double()) / len(draws)).sqrt() + 1e-12
    assert ((counts - p.double()).abs() <= tolerance).all(), (counts, p)
    assert all(p[i] > 0 for i in set(draws))
    generator.manual_seed(0)
    assert [sample_categorical(p[None], [generator])[0] for _ in range(100)] == draws[:100]
    rows = sample_categorical(torch.stack([torch.full_like(p, float("nan")), p]), [generator, generator])
    assert rows[0] is None and rows[1] is not None  # a row that is not a distribution is refused alone


def test_frequency_and_presence_penalties_lower_generated_tokens():
    params = SamplingParams(temperature=0, frequency_penalty=0.5, presence_penalty=0.2)
    sampler = TokenSampler(params, torch.device("cpu"))
    logits = torch.tensor([0.0, 1.0, 1.1, 0.9])
    # token 2 appeared twice in the output (-1.2), token 1 once in the prompt only (no penalty)
    assert sampler.choose(logits, [1, 2, 2], num_prompt=1) == 1
    assert TokenSampler(SamplingParams(temperature=0), torch.device("cpu")).choose(logits, [1, 2, 2], 1) == 2


def test_stop_string_spanning_tokens_cuts_the_text(served):
    model, tokenizer = served
    ids = tokenizer.encode("The old man said that")
    with Engine(model, tokenizer) as engine:
        # seeded sampling: the random model's greedy output is one repeated byte piece, sampled text is varied
        params = SamplingParams(temperature=1.0, max_tokens=60, seed=0)
        free = engine.generate(ids, params)
        assert len(free.text) > 12, free.text
        stop = free.text[6:12]  # a string over several tokens' text
        stopped = engine.generate(ids, params.model_copy(update={"stop": ["zzzz-never", stop]}))
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[:free.text.index(stop)]
    assert stop not in stopped.text


def test_stop_string_matcher_holds_back_partial_matches():
    matcher = StopStringMatcher(["END", "\n\n"])
    assert matcher.feed("hello E") == ("hello ", False)
    assert matcher.feed("N") == ("", False)
    assert matcher.feed("x and E") == ("ENx and ", False)
    assert matcher.feed("ND more") == ("", True)
    assert StopStringMatcher([]).feed("anything") == ("anything", False)


def test_incremental_detokenization_never_emits_broken_utf8(served):
    _, tokenizer = served
    text = " naïve café — 日本語 ✓ déjà vu 🙂 end"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert any(len(tokenizer.decode([i])) == 1 and tokenizer.decode([i]) == "\ufffd" for i in ids)  # byte pieces
    prompt = tokenizer.encode("Hello")
    detokenizer = IncrementalDetokenizer(tokenizer, prompt)
    pieces = [detokenizer.add(i) for i in ids] + [detokenizer.flush()]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == tokenizer.decode(prompt + ids, skip_special_tokens=True)[len("Hello"):]


def test_max_tokens_cancel_queue_and_context_limits(served):
    model, tokenizer = served
    ids = tokenizer.encode(PROMPTS[0])
    engine = Engine(model, tokenizer, max_batch=1, max_waiting=1)
    with pytest.raises(PromptTooLong):
        engine.submit(list(range(10, 10 + engine.context)), GREEDY)
    with pytest.raises(PromptTooLong):
        engine.submit(ids, SamplingParams(max_tokens=engine.context))
    first = engine.submit(ids, SamplingParams(temperature=0, max_tokens=5))
    second = engine.submit(ids, SamplingParams(temperature=0))  # waits; room for exactly one more
    with pytest.raises(QueueFull):
        engine.submit(ids, GREEDY)
    second.cancel()
    with engine:
        outputs = list(first)
        cancelled = list(second)
    assert outputs[-1].finish_reason == "length" and outputs[-1].completion_tokens == 5
    assert cancelled[-1].finish_reason == "cancelled" and engine.stats["cancelled"] == 1


def test_cancel_while_generating_frees_the_slot(served):
    model, tokenizer = served
    with Engine(model, tokenizer, max_batch=1) as engine:
        request = engine.submit(tokenizer.encode(PROMPTS[0]), SamplingParams(temperature=0))
        outputs = []
        for output in request:
            outputs.append(output)
            if len(outputs) == 3:
                request.cancel()
        assert outputs[-1].finish_reason == "cancelled" and len(outputs) < engine.context
        after = engine.generate(tokenizer.encode("A"), SamplingParams(temperature=0, max_tokens=2))
        assert after.completion_tokens == 2  # the slot was freed for the next request


def test_invalid_utf8_from_the_model_is_dropped_not_held_forever(served):
    _, tokenizer = served
    stray = tokenizer.convert_tokens_to_ids("<0x80>")  # a continuation byte: never the start of a character
    word = tokenizer.encode(" fine", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer, tokenizer.encode("Hello"))
    pieces = [detokenizer.add(i) for i in [stray] * 7 + word] + [detokenizer.flush()]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == " fine"


def test_an_id_past_the_embedding_table_is_refused_and_the_engine_keeps_serving(served):
    """Refused at submit (it would fail the shared forward step of every request batched with it)."""
    model, tokenizer = served
    with Engine(model, tokenizer) as engine:
        with pytest.raises(LumiError, match="prompt token ids"):
            engine.generate([2, model.config.vocab_size + 7], GREEDY)
        after = engine.generate(tokenizer.encode("A"), SamplingParams(temperature=0, max_tokens=3))
        assert after.completion_tokens == 3
