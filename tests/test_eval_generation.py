"""The evaluator's generation checks run on the shared engine: a whole run submitted at once (continuous batching,
fewer KV-cache slots than requests, greedy and sampled requests side by side) gives greedy outputs equal to
``model.generate(do_sample=False)`` token for token, and sampled ones that a seed reproduces; stage 80's synthetic QA
answers equal the left-padded batched ``generate`` it used before."""

from __future__ import annotations

import pytest
import torch
from serve_helpers import make_serving_dirs

from lumi.eval.generation import GREEDY, encode, format_prompt, generate_all, run_generation, stop_token_ids
from lumi.eval.loglikelihood import padding_id
from lumi.eval.synthetic_qa import greedy_answers
from lumi.serve.checkpoint import load_for_serving

PROMPTS = {"story": ["Once upon a time there was a small village by the sea where", "The king"],
           "facts": ["A", "Where is the library? It is next to the old bridge, the market and"]}
CONTEXT = 64  # the tiny model's context: short, so the longest chat prompt is cut
SAMPLING = {"temperature": 1.0, "top_p": 0.95, "top_k": 50}


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny model whose tokenizer has a ChatML template (the serving loader: the template edit is not a trained
    tokenizer file, which the evaluator's integrity check would refuse)."""
    return load_for_serving(make_serving_dirs(tmp_path_factory.mktemp("eval_generation"), max_seq_len=CONTEXT)["chat"],
                            device="cpu")


def reference(model, tokenizer, prompt_ids, stop_ids, max_new_tokens) -> list[int]:
    """What the evaluator generated before the engine: one ``model.generate`` call per prompt."""
    input_ids = torch.tensor([prompt_ids])
    output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                            max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
    return output[0, len(prompt_ids):].tolist()


@pytest.mark.parametrize("prompt_format", ["plain", "chat"])
def test_greedy_equals_generate_in_a_batched_run(chat_model, prompt_format):
    model, tokenizer = chat_model
    max_new_tokens = 30  # the longest chat prompt is longer than CONTEXT - 30 tokens: it is cut from the left
    outputs, _ = run_generation(model, tokenizer, PROMPTS, prompt_format, max_new_tokens, greedy=True,
                                samples_per_prompt=2, sampling=SAMPLING, repetition_ngram=3, seed=0, max_batch=3)
    stop_ids = stop_token_ids(tokenizer, prompt_format)
    greedy = [record for record in outputs if record["mode"] == "greedy"]
    assert [(r["category"], r["prompt"]) for r in greedy] == [(c, p) for c, ps in PROMPTS.items() for p in ps]
    assert len(outputs) == 3 * len(greedy)
    for record in greedy:
        prompt_ids = encode(tokenizer, format_prompt(tokenizer, record["prompt"], prompt_format))
        prompt_ids = prompt_ids[-(CONTEXT - max_new_tokens):]
        expected = reference(model, tokenizer, prompt_ids, stop_ids, max_new_tokens)
        stopped = expected[-1] in stop_ids
        content = expected[:-1] if stopped else expected
        assert (record["text"], record["num_tokens"], record["stopped_at_eos"]) == \
            (tokenizer.decode(content, skip_special_tokens=True), len(content), stopped), record["prompt"]


def test_generate_all_ids_equal_generate_token_for_token(chat_model):
    model, tokenizer = chat_model
    stop_ids = stop_token_ids(tokenizer, "plain")
    prompt_ids = [encode(tokenizer, prompt) for prompts in PROMPTS.values() for prompt in prompts]
    got = generate_all(model, tokenizer, prompt_ids, [GREEDY] * len(prompt_ids), stop_ids, max_new_tokens=12,
                       max_batch=2)
    assert got == [reference(model, tokenizer, ids, stop_ids, 12) for ids in prompt_ids]


def test_sampled_outputs_are_reproducible_for_a_seed(chat_model):
    model, tokenizer = chat_model

    def sampled(seed: int, max_batch: int) -> list[str]:
        outputs, _ = run_generation(model, tokenizer, PROMPTS, "plain", 16, greedy=False, samples_per_prompt=2,
                                    sampling=SAMPLING, repetition_ngram=3, seed=seed, max_batch=max_batch)
        return [record["text"] for record in outputs]

    first = sampled(seed=5, max_batch=4)
    assert sampled(seed=5, max_batch=2) == first  # batching does not change a seeded request
    assert sampled(seed=6, max_batch=4) != first


def test_synthetic_qa_answers_equal_left_padded_generate(chat_model):
    model, tokenizer = chat_model
    prompts = ["Where does Tova live?", "A", "Who is the king of the old town by the sea?", "Why?"]  # short questions
    stop_ids, pad = stop_token_ids(tokenizer, "chat"), padding_id(tokenizer)
    encoded = [encode(tokenizer, format_prompt(tokenizer, prompt, "chat")) for prompt in prompts]
    width = max(map(len, encoded))
    output = model.generate(input_ids=torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded]),
                            attention_mask=torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded]),
                            max_new_tokens=8, do_sample=False, eos_token_id=stop_ids, pad_token_id=pad)
    expected = []
    for row in output[:, width:].tolist():
        cut = next((i for i, token in enumerate(row) if token in stop_ids), len(row))
        expected.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    assert greedy_answers(model, tokenizer, prompts, max_new_tokens=8, batch_size=3) == expected
