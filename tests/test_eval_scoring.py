"""The scoring core: lm-eval's tokenization of context + continuation, batched log-likelihoods equal to unbatched
and to a direct forward pass, left truncation instead of a crash, lm-eval's metrics, and perplexity (packed split
with document masking; sliding window on raw text) against independent reference computations."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from eval_helpers import make_tiny_model_dir, training_text, write_jsonl, write_tokenizer
from helpers import make_corpus_dir

from lumi.core.errors import LumiError
from lumi.core.files import read_text
from lumi.core.special_tokens import BOS_ID, PAD_ID
from lumi.eval.loglikelihood import encode_pair, score_continuations
from lumi.eval.perplexity import evaluate_packed_split, read_dataset_text, sliding_windows, text_perplexity
from lumi.eval.scoring import score_items
from lumi.eval.tasks import Task, TaskSource
from lumi.eval.tasks.base import choice_item
from lumi.loading import load_for_evaluation
from lumi.formats.packed import load_packed_split
from lumi.data.packing import PackingConfig, pack_corpus

CONTEXT = 64  # the tiny model's context window, small so truncation is easy to reach


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, tokenizer_dir):
    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("model"), tokenizer_dir, max_seq_len=CONTEXT)
    return load_for_evaluation(model_dir, device="cpu")


@pytest.fixture(scope="module")
def packed_dir(tmp_path_factory, tokenizer_dir) -> Path:
    root = tmp_path_factory.mktemp("packed")
    corpus = make_corpus_dir(root / "corpus", [doc[:150] for doc in training_text(200)])  # rows hold 2+ documents
    pack_corpus(corpus, tokenizer_dir, root / "packed", PackingConfig(seq_len=CONTEXT, val_fraction=0.3, num_threads=1))
    return root / "packed"


def reference_logprob(model, context_ids: list[int], continuation_ids: list[int]) -> float:
    """Unbatched, untruncated: one forward pass over context + continuation."""
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    start = len(context_ids)
    return sum(float(logprobs[start + i - 1, token]) for i, token in enumerate(continuation_ids))


def test_encode_pair_follows_lm_eval(loaded):
    _, tokenizer = loaded
    context_ids, continuation_ids = encode_pair(tokenizer, "Question: who?\nAnswer: ", "Ana Veldt")
    # The trailing space moves to the continuation; the continuation is the whole encoding past the context's.
    assert context_ids == tokenizer.encode("Question: who?\nAnswer:")
    assert context_ids[0] == BOS_ID  # the evaluator loads the tokenizer with add_bos (our models saw BOS first)
    assert continuation_ids == tokenizer.encode("Question: who?\nAnswer: Ana Veldt")[len(context_ids):]
    assert tokenizer.decode(continuation_ids) == " Ana Veldt"
    assert encode_pair(tokenizer, "", " hello")[0] == [BOS_ID]


def test_batched_scores_equal_unbatched_and_a_direct_forward(loaded):
    model, tokenizer = loaded
    texts = [doc[:n] for doc, n in zip(training_text(12), (40, 90, 15, 60, 200, 33, 75, 20, 50, 180, 10, 65))]
    pairs = [encode_pair(tokenizer, text, " and then they went home") for text in texts]
    one_by_one = score_continuations(model, pairs, max_length=CONTEXT, batch_size=1)
    batched = score_continuations(model, pairs, max_length=CONTEXT, batch_size=5)
    for pair, single, batch in zip(pairs, one_by_one, batched):
        assert batch.logprob == pytest.approx(single.logprob, abs=1e-4)
        assert batch.is_greedy == single.is_greedy and batch.num_tokens == single.num_tokens == len(pair[1])
        if not single.truncated:
            assert single.logprob == pytest.approx(reference_logprob(model, *pair), abs=1e-4)
    assert any(s.truncated for s in batched) and not all(s.truncated for s in batched)


def test_too_long_input_is_cut_from_the_left_not_a_crash(loaded):
    model, tokenizer = loaded
    context_ids, continuation_ids = encode_pair(tokenizer, " ".join(training_text(3)), " the end")
    assert len(context_ids) > 3 * CONTEXT
    [score] = score_continuations(model, [(context_ids, continuation_ids)], max_length=CONTEXT)
    window = (context_ids + continuation_ids)[-(CONTEXT + 1):]  # lm-eval: keep max_length + 1, feed all but last
    assert score.truncated and score.num_tokens == len(continuation_ids)
    assert score.logprob == pytest.approx(
        reference_logprob(model, window[:-len(continuation_ids)], continuation_ids), abs=1e-4)
    # A continuation longer than the window itself: only its last CONTEXT tokens can be predicted.
    long_continuation = tokenizer.encode(" " + training_text(1)[0])
    [score] = score_continuations(model, [([BOS_ID], long_continuation)], max_length=CONTEXT)
    assert score.truncated and score.num_tokens == CONTEXT
    assert math.isfinite(score.logprob)


def test_metrics_follow_lm_eval_definitions(loaded):
    model, tokenizer = loaded
    words = ["red", "a very long green choice", "blue", "yellowish"]
    items = [choice_item(str(i), f"Item {i}: the colour is", words[i % 2:] + words[:i % 2], gold=i % 3)
             for i in range(12)]
    task = Task("colours", "multiple_choice", ("acc", "acc_norm"), TaskSource(path="unused"), lambda r, i: None)
    summary, records = score_items(model, tokenizer, task, items, max_length=CONTEXT, batch_size=4)
    for item, record in zip(items, records):
        choices = [continuation[1:] for _, continuation in item.requests]
        normalized = [lp / len(choice) for lp, choice in zip(record["logprobs"], choices)]
        assert record["pred"] == record["logprobs"].index(max(record["logprobs"]))
        assert record["pred_norm"] == normalized.index(max(normalized))
    for metric in ("acc", "acc_norm"):
        values = [float(r[f"pred{'_norm' if metric == 'acc_norm' else ''}"] == item.gold)
                  for r, item in zip(records, items)]
        assert summary["metrics"][metric]["value"] == pytest.approx(statistics.mean(values))
        assert summary["metrics"][metric]["stderr"] == pytest.approx(statistics.stdev(values) / math.sqrt(12))
    assert summary["chance"] == pytest.approx(0.25)
    assert summary["majority_baseline"] == pytest.approx(4 / 12)
    assert any(r["pred"] != r["pred_norm"] for r in records)  # length normalisation changes some answers


def reference_packed_row_nats(model, row: list[int]) -> tuple[float, int]:
    """Each document of a packed row scored on its own (positions from 0), targets that are BOS/PAD skipped: what
    document masking must reproduce."""
    starts = [0] + [i for i, token in enumerate(row) if token == BOS_ID and i > 0] + [len(row)]
    nats, count = 0.0, 0
    for begin, end in zip(starts, starts[1:]):
        segment = torch.tensor([row[begin:end]])
        if segment.shape[1] < 2:
            continue
        with torch.no_grad():
            logits = model(input_ids=segment).logits[0, :-1].float()
        targets = segment[0, 1:]
        keep = (targets != PAD_ID) & (targets != BOS_ID)
        nats += float(F.cross_entropy(logits[keep], targets[keep], reduction="sum"))
        count += int(keep.sum())
    return nats, count


def test_packed_split_equals_documents_scored_separately(loaded, packed_dir):
    model, _ = loaded
    split = load_packed_split(packed_dir, "val")
    assert split.num_rows >= 4
    assert any(BOS_ID in split.rows[i][1:] for i in range(4))  # some row packs two documents: masking matters
    model.train()
    result = evaluate_packed_split(model, split, batch_size=3, max_rows=4)
    assert model.training  # the trainer calls this mid-run: its mode is restored
    model.eval()
    reference = [reference_packed_row_nats(model, [int(t) for t in split.rows[i]]) for i in range(4)]
    nats, tokens = sum(r[0] for r in reference), sum(r[1] for r in reference)
    assert result["tokens"] == tokens and result["rows"] == 4
    assert result["loss"] == pytest.approx(nats / tokens, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nats / tokens), rel=1e-5)
    prorated_bytes = split.bytes * 4 / split.num_rows
    assert result["bits_per_byte"] == pytest.approx(nats / (math.log(2) * prorated_bytes), rel=1e-5)
    whole = evaluate_packed_split(model, split, batch_size=8)
    assert whole["rows"] == split.num_rows and whole["bytes"] == split.bytes


def test_packed_split_causal_mode_scores_whole_rows(loaded, packed_dir):
    """The causal mode: each row through the plain model (documents see the earlier ones of the row), the same
    targets (BOS and PAD left out); it differs from the documents-alone score on rows that pack several documents."""
    model, _ = loaded
    model.eval()
    split = load_packed_split(packed_dir, "val")
    evaluated = evaluate_packed_split(model, split, batch_size=3, max_rows=4)
    result = evaluated["causal"]
    rows = torch.from_numpy(split.rows[:4].astype("int64"))
    with torch.no_grad():
        logits = model(input_ids=rows).logits[:, :-1].float()
    targets = rows[:, 1:]
    keep = (targets != PAD_ID) & (targets != BOS_ID)
    nats = float(F.cross_entropy(logits[keep], targets[keep], reduction="sum"))
    assert evaluated["tokens"] == int(keep.sum())  # the same targets in both modes
    assert result["loss"] == pytest.approx(nats / int(keep.sum()), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-6)
    assert result["loss"] != pytest.approx(evaluated["loss"])


def reference_sliding_window(model, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """The transformers perplexity guide's loop (labels -100 on tokens already scored), with exact sums."""
    nats, count, previous_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        target_len = end - previous_end
        input_ids = torch.tensor([ids[begin:end]])
        labels = input_ids.clone()
        labels[:, :-target_len] = -100
        with torch.no_grad():
            logits = model(input_ids=input_ids).logits[0, :-1].float()
        shifted = labels[0, 1:]
        nats += float(F.cross_entropy(logits, shifted, ignore_index=-100, reduction="sum"))
        count += int((shifted != -100).sum())
        previous_end = end
        if end == len(ids):
            break
    return nats, count


@pytest.mark.parametrize("window,stride", [(CONTEXT, 16), (CONTEXT, 48), (40, 40)])
def test_sliding_window_matches_the_hf_recipe(loaded, window, stride):
    model, tokenizer = loaded
    text = "\n\n".join(training_text(4))
    ids = tokenizer(text)["input_ids"]
    result = text_perplexity(model, tokenizer, text, window=window, stride=stride, batch_size=3)
    nats, count = reference_sliding_window(model, ids, window, stride)
    assert result["tokens"] == count
    if stride < window:
        assert count == len(ids) - 1  # every token but the first (BOS) scored exactly once
    assert result["loss"] == pytest.approx(nats / count, rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(nats / (math.log(2) * len(text.encode())), rel=1e-5)


def test_text_file_and_dataset_paths_score_the_same_text(loaded, tmp_path):
    model, tokenizer = loaded
    documents = training_text(3)
    (tmp_path / "text.txt").write_text("\n\n".join(documents), encoding="utf-8")
    write_jsonl(tmp_path / "rows.jsonl", [{"text": d} for d in documents])
    from_file = read_text(tmp_path / "text.txt")
    from_dataset = read_dataset_text("json", None, "train", "text", str(tmp_path / "rows.jsonl"))
    assert from_file == from_dataset
    with pytest.raises(LumiError, match="no column 'body'"):
        read_dataset_text("json", None, "train", "body", str(tmp_path / "rows.jsonl"))
    with pytest.raises(LumiError, match="stride must be between 1 and the window"):
        text_perplexity(model, tokenizer, from_file, window=32, stride=33)


def test_sliding_windows_cover_every_token_once():
    for n, window, stride in [(100, 32, 8), (100, 32, 31), (33, 32, 16), (5, 32, 16)]:
        spans = sliding_windows(n, window, stride)
        scored = [t for _, end, k in spans for t in range(end - k, end)]
        assert scored == list(range(1, n))
        assert all(end - begin <= window and k <= end - begin - 1 for begin, end, k in spans)
