"""Stage 30: tokenize + pack, checked by decoding the packed streams back into the corpus documents."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from helpers import make_corpus_dir
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from lumi.cli import main
from lumi.core import special_tokens
from lumi.core.config import load_config
from lumi.core.errors import LumiError
from lumi.core.files import sha256_file
from lumi.formats.corpus import MANIFEST as CORPUS_MANIFEST
from lumi.formats.packed import MANIFEST, check_packed_tokenizer, load_packed_split, read_packed_manifest, token_dtype
from lumi.data import packing
from lumi.data.packing import (CUT_WINDOW, DocumentEncoder, DocumentSplitter, PackedSplitWriter, PackingConfig,
                              pack_corpus, split_tail)
from lumi.data.tokenizer_training import TokenizerConfig, train_tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
SEQ_LEN = 64
BPE = model_pb2.TrainerSpec.BPE


def train_raw_spm(directory: Path, texts: list[str], **ids: int) -> Path:
    """A bare SentencePiece model (no stage-20 metadata): another tokenizer, or another id layout."""
    directory.mkdir(parents=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(line for text in texts for line in text.splitlines() if line.strip()),
        model_prefix=str(directory / "spm"), vocab_size=500, model_type="bpe", byte_fallback=True, minloglevel=2,
        user_defined_symbols=list(special_tokens.CHAT_MARKERS),
        **{"pad_id": 0, "unk_id": 1, "bos_id": 2, "eos_id": 3, **ids})
    return directory


@pytest.fixture(scope="session")
def documents(samples_dir) -> list[str]:
    """Real web, encyclopedia and story text, with non-ASCII characters and an empty document."""
    texts = [json.loads(line)["text"] for line in (samples_dir / "c4_demo_llamafactory_first150.jsonl").open()][:80]
    texts += [json.loads(line)["text"] for line in (samples_dir / "dolma_cc_en_head-0091.jsonl").open()]
    texts += (samples_dir / "wiki_demo_llamafactory_first15.txt").read_text().splitlines()[:2]
    texts += (samples_dir / "tinystories_sample_cs336.txt").read_text().split("<|endoftext|>")
    texts.insert(7, "")
    texts.insert(8, "Ünïcödé ✓ — naïve café, 東京")
    return texts


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, documents) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("packing")
    corpus = make_corpus_dir(root / "corpus", documents, shard_bytes=100_000)
    # The real stage 20 (a lossless tokenizer: identity normalization, byte fallback), small and fast.
    train_tokenizer(corpus, root / "tokenizer",
                    TokenizerConfig(vocab_size=800, model_type="bpe", holdout_fraction=0.05, num_threads=2))
    return {"root": root, "corpus": corpus, "tokenizer": root / "tokenizer",
            "other_tokenizer": train_raw_spm(root / "other-tokenizer", documents[:40])}


@pytest.fixture(scope="session")
def packed(workspace) -> Path:
    config = PackingConfig(seq_len=SEQ_LEN, val_fraction=0.1, seed=7, batch_docs=16, num_threads=2)
    pack_corpus(workspace["corpus"], workspace["tokenizer"], workspace["root"] / "packed", config)
    return workspace["root"] / "packed"


@pytest.fixture(scope="session")
def processor(workspace) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(workspace["tokenizer"] / "spm.model"))


def split_stream(packed_dir: Path, split: str) -> np.ndarray:
    return load_packed_split(packed_dir, split).rows.reshape(-1)


def pieces(documents: list[str], plan: dict) -> list[tuple[int, str, str | None]]:
    """(document index, text, the split it must go to or None for either) in corpus order: a document longer than
    the plan's limit is its head (train) then its tail (val), every other one whole."""
    out = []
    for index, text in enumerate(documents):
        if len(text.encode("utf-8")) > plan["split_documents_over_bytes"]:
            head, tail = split_tail(text, plan["share"])
            assert head + tail == text and head.endswith(("\n", " ")) and head and tail
            out += [(index, head, "train"), (index, tail, "val")]
        else:
            out.append((index, text, None))
    return out


def assign_documents(documents, processor, streams, plan) -> dict[str, list[int]]:
    """Walk the corpus in order: each document (or piece of one split by bytes) must be the next ``BOS ids EOS`` of
    one split's stream, except that the last one in a stream may be cut and whole documents may follow it in the
    dropped tail (key "tail"). Returns the texts per split."""
    positions = {name: 0 for name in streams}
    assigned: dict[str, list[str]] = {name: [] for name in (*streams, "tail")}
    for index, text, required in pieces(documents, plan):
        expected = [special_tokens.BOS_ID, *processor.encode(text), special_tokens.EOS_ID]
        for name, stream in streams.items():
            if required not in (None, name):
                continue
            got = stream[positions[name]:positions[name] + len(expected)]
            if got.size and got.tolist() == expected[:got.size]:
                positions[name] += got.size
                assigned[name].append(text)
                break
        else:
            assert any(positions[name] == stream.size for name, stream in streams.items()), f"document {index}"
            assigned["tail"].append(text)
    assert positions == {name: stream.size for name, stream in streams.items()}
    return assigned


def test_streams_decode_back_to_the_documents_with_bos_eos(packed, documents, processor):
    streams = {split: split_stream(packed, split) for split in ("train", "val")}
    manifest = read_packed_manifest(packed)
    plan, splits = manifest["val_split"], manifest["splits"]
    assigned = assign_documents(documents, processor, streams, plan)
    texts = [text for _, text, _ in pieces(documents, plan)]
    assert plan["documents_split_by_bytes"] == len(texts) - len(documents) >= 1  # the long Wikipedia articles
    for split, stream in streams.items():
        indices = assigned[split]
        # Every complete document decodes to its exact text between one BOS and one EOS.
        bos = np.flatnonzero(stream == special_tokens.BOS_ID)
        eos = np.flatnonzero(stream == special_tokens.EOS_ID)
        assert bos[0] == 0 and len(bos) == len(indices) and len(eos) in (len(bos), len(bos) - 1)
        assert (eos[:len(bos) - 1] + 1 == bos[1:]).all()
        for start, end, text in zip(bos, eos, indices):
            assert processor.decode(stream[start + 1:end].tolist()) == text
        assert splits[split]["tokens"] == stream.size
        assert 0 <= splits[split]["dropped_tail_tokens"] < SEQ_LEN
        assert splits[split]["documents"] >= len(indices)
        # bytes: the text the rows hold, i.e. whole documents plus the decoded kept part of the one the tail cuts.
        cut = bos[-1] if len(eos) < len(bos) else stream.size
        kept = sum(len(text.encode("utf-8")) for text in indices[:len(eos)])
        kept += len(processor.decode(stream[cut + 1:].tolist()).encode("utf-8"))
        assert splits[split]["bytes"] == kept
    assert set(assigned["train"]).isdisjoint(assigned["val"])
    assert len(assigned["val"]) >= 1 and len(assigned["train"]) > len(assigned["val"])
    # Documents, UTF-8 bytes and tokens (BOS + text + EOS) all add up across the splits and their dropped tails.
    assert sum(info["documents"] for info in splits.values()) == len(texts)
    assert sum(info["bytes"] + info["dropped_tail_bytes"] for info in splits.values()) == sum(
        len(text.encode("utf-8")) for text in documents)
    assert sum(info["tokens"] + info["dropped_tail_tokens"] for info in splits.values()) == sum(
        len(processor.encode(text)) + 2 for text in texts)


def test_rows_are_whole_and_manifest_matches_files(packed, documents, workspace):
    manifest = read_packed_manifest(packed)
    dtype = np.dtype(manifest["dtype"])
    assert dtype == token_dtype(manifest["vocab_size"]) == np.uint16
    assert manifest["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert manifest["tokenizer_sha256"] == sha256_file(workspace["tokenizer"] / "spm.model")
    assert manifest["corpus"] == {"dir": str(workspace["corpus"].resolve()), "documents": len(documents),
                                  "manifest_sha256": sha256_file(workspace["corpus"] / CORPUS_MANIFEST)}
    assert "unshifted" in manifest["labels"]
    for split in ("train", "val"):
        info = manifest["splits"][split]
        raw = np.fromfile(packed / info["file"], dtype=dtype)
        assert raw.size == info["rows"] * SEQ_LEN == info["tokens"]
        loaded = load_packed_split(packed, split)
        assert loaded.rows.shape == (info["rows"], SEQ_LEN)
        assert np.array_equal(loaded.rows.reshape(-1), raw)  # rows concatenate back to the stream
        assert (loaded.documents, loaded.bytes) == (info["documents"], info["bytes"])
    assert sum(manifest["splits"][s]["documents"] for s in ("train", "val")) == len(documents) + manifest[
        "val_split"]["documents_split_by_bytes"]


def test_split_is_deterministic_per_seed_and_batch_size(workspace, packed):
    again = workspace["root"] / "again"
    pack_corpus(workspace["corpus"], workspace["tokenizer"], again,
                PackingConfig(seq_len=SEQ_LEN, val_fraction=0.1, seed=7, batch_docs=5, num_threads=1))
    for split in ("train", "val"):
        assert (again / f"{split}.bin").read_bytes() == (packed / f"{split}.bin").read_bytes()
    first = DocumentSplitter(1000, seed=7, val_fraction=0.1).val_mask(0, 1000)
    assert np.array_equal(first, DocumentSplitter(1000, seed=7, val_fraction=0.1).val_mask(0, 1000))
    assert not np.array_equal(first, DocumentSplitter(1000, seed=8, val_fraction=0.1).val_mask(0, 1000))
    assert 50 < first.sum() < 150


@pytest.mark.parametrize("total, fraction, expected_val", [(2, 0.5, 1), (3, 1e-9, 1), (50, 0.0, 0), (1, 0.5, 0)])
def test_val_split_is_never_empty_unless_asked(total, fraction, expected_val):
    for seed in range(20):
        splitter = DocumentSplitter(total, seed=seed, val_fraction=fraction)
        mask = np.concatenate([splitter.val_mask(start, 1) for start in range(total)])
        if expected_val:
            assert 1 <= mask.sum() < total
        else:
            assert mask.sum() == 0


def test_uint32_writer_keeps_large_ids(tmp_path, processor):
    with PackedSplitWriter(tmp_path, "train", token_dtype(100_000), seq_len=4, processor=processor) as writer:
        writer.write([np.array([2, 70_000, 99_999, 3], dtype=np.int32), np.array([2, 65_536, 3, 2], dtype=np.int32)],
                     text_bytes=[10, 7])
        info = writer.close()
    assert info == {"file": "train.bin", "sha256": sha256_file(tmp_path / "train.bin"), "rows": 2, "tokens": 8,
                    "documents": 2, "bytes": 17, "dropped_tail_tokens": 0, "dropped_tail_bytes": 0}
    assert np.fromfile(tmp_path / "train.bin", dtype=np.uint32).tolist() == [2, 70_000, 99_999, 3, 2, 65_536, 3, 2]


def test_writer_bytes_leave_out_the_dropped_tail(tmp_path, processor, documents):
    """Short documents, so the dropped tail holds several whole ones and cuts one more."""
    words = documents[0].split()
    texts = [" ".join(words[i:i + 4]) for i in range(0, len(words) - 4, 4)][:80]
    encoded = [np.array([special_tokens.BOS_ID, *processor.encode(t), special_tokens.EOS_ID], dtype=np.int32)
               for t in texts]
    ends = np.cumsum([doc.size for doc in encoded])
    count = max(range(40, len(texts)), key=lambda n: ends[n - 1] % SEQ_LEN)  # the longest tail available
    texts, encoded = texts[:count], encoded[:count]
    sizes = [len(t.encode("utf-8")) for t in texts]
    with PackedSplitWriter(tmp_path, "val", np.uint16, seq_len=SEQ_LEN, processor=processor) as writer:
        for first in range(0, count, 7):
            writer.write(encoded[first:first + 7], sizes[first:first + 7])
        info = writer.close()
    kept = np.concatenate(encoded)[:info["tokens"]]
    assert np.array_equal(np.fromfile(tmp_path / "val.bin", dtype=np.uint16), kept)
    assert (ends[:count] > info["tokens"]).sum() >= 3  # the tail really spans several documents
    expected = 0
    for doc, size, end in zip(encoded, sizes, ends):
        part = kept[end - doc.size:end]
        expected += size if part.size == doc.size else len(
            processor.decode(part.tolist()).encode("utf-8"))
    assert info["bytes"] == expected and info["bytes"] + info["dropped_tail_bytes"] == sum(sizes)


def pack_args(workspace, output: Path, *extra: str, tokenizer: Path | None = None) -> list[str]:
    return ["pack", "--corpus-dir", str(workspace["corpus"]), "--tokenizer-dir",
            str(tokenizer or workspace["tokenizer"]), "--output-dir", str(output),
            "--config", str(REPO_ROOT / "config" / "demo" / "packing.json"), "--seq-len", "32", *extra]


def test_cli_packs_refuses_existing_output_and_replaces_with_force(workspace, capsys):
    output = workspace["root"] / "cli"
    assert main(pack_args(workspace, output, "--set", "val_fraction=0.2")) == 0
    manifest = read_packed_manifest(output)
    assert (manifest["seq_len"], manifest["val_fraction"]) == (32, 0.2)  # the flag wins over the demo config
    before = (output / MANIFEST).read_bytes()
    assert main(pack_args(workspace, output)) == 2
    assert "already exists" in capsys.readouterr().err
    assert (output / MANIFEST).read_bytes() == before
    assert main(pack_args(workspace, output, "--force")) == 0
    assert read_packed_manifest(output)["val_fraction"] == 0.02
    assert main(pack_args(workspace, workspace["root"] / "bad", "--seq-len", "4")) == 2
    assert "--seq-len" in capsys.readouterr().err  # the flag is blamed, not the config file


def test_tampered_tokenizer_is_refused_unless_check_skipped(workspace, capsys):
    tampered = workspace["root"] / "tampered-tokenizer"
    shutil.copytree(workspace["tokenizer"], tampered)
    shutil.copy(workspace["other_tokenizer"] / "spm.model", tampered / "spm.model")  # metadata has the old hash
    assert main(pack_args(workspace, workspace["root"] / "t1", tokenizer=tampered)) == 2
    err = capsys.readouterr().err
    assert "spm.model" in err and "sha256" in err and "--skip-tokenizer-check" in err
    assert not (workspace["root"] / "t1").exists()
    assert main(pack_args(workspace, workspace["root"] / "t1", "--skip-tokenizer-check", tokenizer=tampered)) == 0
    manifest = read_packed_manifest(workspace["root"] / "t1")
    assert manifest["tokenizer_sha256"] == sha256_file(workspace["other_tokenizer"] / "spm.model")
    assert manifest["vocab_size"] == 500


def test_check_packed_tokenizer_names_both_hashes(packed, workspace):
    check_packed_tokenizer(packed, workspace["tokenizer"])
    with pytest.raises(LumiError) as caught:
        check_packed_tokenizer(packed, workspace["other_tokenizer"])
    assert sha256_file(workspace["other_tokenizer"] / "spm.model") in str(caught.value)
    assert sha256_file(workspace["tokenizer"] / "spm.model") in str(caught.value)


@pytest.mark.parametrize("missing", ["spm.model", "tokenizer_meta.json", "tokenizer.json"])
def test_tokenizer_dir_missing_files(workspace, tmp_path, missing, capsys):
    broken = tmp_path / "tokenizer"
    shutil.copytree(workspace["tokenizer"], broken)
    (broken / missing).unlink()
    assert main(pack_args(workspace, tmp_path / "out", tokenizer=broken)) == 2
    assert missing in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_tokenizer_with_other_special_ids_is_refused(workspace, documents, tmp_path):
    default_layout = train_raw_spm(tmp_path / "tok", documents[:40], pad_id=-1, unk_id=0, bos_id=1, eos_id=2)
    with pytest.raises(LumiError, match="special_tokens.py"):
        pack_corpus(workspace["corpus"], default_layout, tmp_path / "out", PackingConfig(seq_len=SEQ_LEN),
                    verify_tokenizer=False)


def test_empty_and_too_small_corpora_are_clear_errors(workspace, tmp_path):
    empty = make_corpus_dir(tmp_path / "empty", [])
    with pytest.raises(LumiError, match="no documents"):
        pack_corpus(empty, workspace["tokenizer"], tmp_path / "out", PackingConfig(seq_len=SEQ_LEN))
    tiny = make_corpus_dir(tmp_path / "tiny", ["one short line", "and another"])
    with pytest.raises(LumiError, match="too little text"):
        pack_corpus(tiny, workspace["tokenizer"], tmp_path / "out", PackingConfig(seq_len=SEQ_LEN))
    assert not (tmp_path / "out").exists()


def test_script_wrapper_runs_the_pack_verb():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "30_pack_dataset.py"), "--help"],
                            capture_output=True, text=True, check=True)
    assert "--skip-tokenizer-check" in result.stdout and "--seq-len" in result.stdout


@pytest.mark.parametrize("path, seq_len", [("pretrain/packing/default.json", 1024), ("demo/packing.json", 256)])
def test_shipped_configs_validate(path, seq_len):
    config = load_config(PackingConfig, REPO_ROOT / "config" / path)
    assert config.seq_len == seq_len and 0 < config.val_fraction <= 0.5


# --- a val split large enough to measure ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def three_books(samples_dir, tmp_path_factory) -> dict[str, Path]:
    """Three whole books as a user makes them a corpus (`lumi corpus --input`: one document per file) + a tokenizer."""
    root = tmp_path_factory.mktemp("books")
    books = [samples_dir / name for name in ("tinyshakespeare_train90.txt", "gutenberg_pg11.txt", "gutenberg_pg84.txt")]
    assert main(["corpus", "--input", *map(str, books), "--output-dir", str(root / "corpus")]) == 0
    assert main(["tokenizer", "--corpus-dir", str(root / "corpus"), "--output-dir", str(root / "tokenizer"),
                 "--vocab-size", "1000", "--set", "model_type=bpe", "--set", "max_training_bytes=300000"]) == 0
    return {"root": root, "corpus": root / "corpus", "tokenizer": root / "tokenizer"}


def test_three_books_get_a_val_split_large_enough_to_measure(three_books, caplog):
    """The default config (val_fraction 0.005) held out 18 rows of 3,543 at seq 128, all from whichever book drew
    val. Now the floor raises the share (up to 10%), and each book gives its last share of bytes to val."""
    output = three_books["root"] / "packed"
    with caplog.at_level("INFO"):
        assert main(["pack", "--corpus-dir", str(three_books["corpus"]), "--tokenizer-dir",
                     str(three_books["tokenizer"]), "--seq-len", "128", "--output-dir", str(output)]) == 0
    manifest = read_packed_manifest(output)
    plan, val, train = manifest["val_split"], manifest["splits"]["val"], manifest["splits"]["train"]
    assert manifest["val_fraction"] == 0.005 and plan["share"] > 0.005 and "min_val_tokens" in plan["reason"]
    assert plan["documents_split_by_bytes"] == 3 and val["documents"] == train["documents"] == 3
    expected_tokens = min(manifest["config"]["min_val_tokens"], 0.1 * (val["tokens"] + train["tokens"]))
    assert val["tokens"] >= 0.8 * expected_tokens and val["rows"] >= 100
    assert abs(val["bytes"] / (val["bytes"] + train["bytes"]) - plan["share"]) < 0.01  # measured in bytes
    assert "val split: " in caplog.text and "split by bytes" in caplog.text


def test_a_single_document_is_split_not_all_trained(three_books, tmp_path, samples_dir):
    corpus = make_corpus_dir(tmp_path / "corpus", [(samples_dir / "gutenberg_pg84.txt").read_text()])
    manifest = pack_corpus(corpus, three_books["tokenizer"], tmp_path / "packed",
                           PackingConfig(seq_len=128, val_fraction=0.05, min_val_tokens=0, num_threads=1))
    assert manifest["val_split"]["share"] == 0.05 and manifest["val_split"]["documents_split_by_bytes"] == 1
    assert manifest["splits"]["val"]["rows"] > 0 and manifest["splits"]["train"]["rows"] > 0


def test_split_tail_cuts_at_a_line_end_near_the_share():
    text = "".join(f"line {i:03d} of the text\n" for i in range(100))
    head, tail = split_tail(text, 0.1)
    assert head + tail == text and head.endswith("\n") and abs(len(tail) / len(text) - 0.1) < 0.02
    assert split_tail("nospaces" * 10, 0.5) == ("nospaces" * 5, "nospaces" * 5)


# --- long documents: encoded in parts, the ids of the whole ---------------------------------------------------------

@pytest.fixture(scope="module")
def long_document(samples_dir) -> str:
    """About 2 MB of real text as one document (the three books joined, twice): multi-MB, yet cheap to encode whole."""
    books = [(samples_dir / name).read_text() for name in
             ("gutenberg_pg11.txt", "gutenberg_pg84.txt", "tinyshakespeare_train90.txt")]
    return "".join(books) * 2 + "\n"


@pytest.fixture(scope="module", params=[("demo/tokenizer.json", "bpe"), ("pretrain/tokenizer/spm32k.json", "bpe"),
                                        ("pretrain/tokenizer/spm32k.json", "unigram")])
def shipped_tokenizer(request, three_books) -> spm.SentencePieceProcessor:
    """Stage 20 with a shipped config's settings (the demo's, pretraining's), a small vocabulary, both model types."""
    config, model_type = request.param
    output = three_books["root"] / f"{config.replace('/', '-')}-{model_type}"
    assert main(["tokenizer", "--config", str(REPO_ROOT / "config" / config), "--corpus-dir",
                 str(three_books["corpus"]), "--output-dir", str(output), "--vocab-size", "1000",
                 "--set", "max_training_bytes=300000", "--set", "num_threads=2",
                 "--set", f"model_type={model_type}"]) == 0
    return spm.SentencePieceProcessor(model_file=str(output / "spm.model"))


def differing_spans(processor, whole: np.ndarray, parts: np.ndarray) -> list[tuple[float, float]]:
    """Where two segmentations of the same text differ: (gap between the unigram scores of the two segmentations of
    the span, in float64; float32 resolution of the whole document's running score there, per token of the span).

    Byte-fallback pieces score as SentencePiece's unknown character (lowest piece score - 10, once per character)."""
    vocab = processor.get_piece_size()
    lengths = np.array([0 if processor.is_control(i) else 1 if processor.is_byte(i) else
                        len(processor.id_to_piece(i).encode("utf-8")) for i in range(vocab)])
    unknown = min(processor.get_score(i) for i in range(vocab)
                  if not (processor.is_byte(i) or processor.is_control(i) or processor.is_unknown(i))) - 10.0
    lead = {i for i in range(vocab) if processor.is_byte(i) and int(processor.id_to_piece(i)[1:-1], 16) & 0xC0 != 0x80}
    scores = np.array([unknown if i in lead else 0.0 if processor.is_byte(i) or processor.is_control(i)
                       else processor.get_score(i) for i in range(vocab)], dtype=np.float64)
    ends = {name: np.cumsum(lengths[ids]) for name, ids in (("whole", whole), ("parts", parts))}
    assert ends["whole"][-1] == ends["parts"][-1]  # the same text
    common = np.intersect1d(ends["whole"], ends["parts"])
    at = {name: np.searchsorted(ends[name], common) for name in ends}  # index of each shared end
    running = np.cumsum(scores[whole])
    spans = []
    for k in range(1, common.size):
        w = whole[at["whole"][k - 1] + 1:at["whole"][k] + 1]
        p = parts[at["parts"][k - 1] + 1:at["parts"][k] + 1]
        if not np.array_equal(w, p):
            resolution = float(np.spacing(np.float32(abs(running[at["whole"][k]]))))
            spans.append((abs(scores[w].sum() - scores[p].sum()), resolution * (w.size + p.size)))
    return spans


def test_a_long_document_encoded_in_parts_gives_the_whole_document_ids(shipped_tokenizer, long_document):
    """Cut where no vocabulary piece can span, the parts' ids are the whole document's: exactly for BPE; for unigram
    except where SentencePiece's float32 path scores tie within their resolution (its whole-document encode resolves
    such near-ties by the running total, which a part does not share)."""
    processor, part_chars = shipped_tokenizer, 1 << 16
    encoder = DocumentEncoder(processor, threads=2, part_chars=part_chars)
    assert encoder.whole_reason is None
    bounds = encoder.cuts(long_document)
    sizes = np.diff(bounds)
    assert len(bounds) > len(long_document) // part_chars and sizes.max() <= part_chars
    assert sizes[:-1].min() > part_chars - CUT_WINDOW  # a safe cut is always near in real text
    assert "".join(long_document[a:b] for a, b in zip(bounds, bounds[1:])) == long_document
    parts = encoder.encode([long_document])[0]
    whole = np.array([special_tokens.BOS_ID, *processor.encode(long_document), special_tokens.EOS_ID])
    assert processor.decode(parts.tolist()) == long_document
    if model_pb2.ModelProto.FromString(processor.serialized_model_proto()).trainer_spec.model_type == BPE:
        assert np.array_equal(parts, whole)
    else:
        spans = differing_spans(processor, whole, parts)
        print(f"unigram: {len(spans)} near-tie spans in {whole.size:,} tokens")
        assert all(gap <= bound for gap, bound in spans), spans


def test_pack_encodes_long_documents_in_parts_with_the_whole_documents_ids(three_books, samples_dir, tmp_path,
                                                                           monkeypatch):
    """End to end, with parts of 32 Ki characters: a book split by bytes (head to train, tail to val) and the short
    documents around it are each ``BOS ids EOS`` of its whole text in the packed streams."""
    monkeypatch.setattr(packing, "PART_CHARS", 1 << 15)
    documents = ["A short one.", (samples_dir / "gutenberg_pg84.txt").read_text(), "Another short one."]
    corpus = make_corpus_dir(tmp_path / "corpus", documents)
    manifest = pack_corpus(corpus, three_books["tokenizer"], tmp_path / "packed",
                           PackingConfig(seq_len=SEQ_LEN, val_fraction=0.2, min_val_tokens=0, num_threads=2))
    plan = manifest["val_split"]
    assert plan["documents_split_by_bytes"] == 1 and len(documents[1]) * (1 - plan["share"]) > 4 * (1 << 15)
    assert len(documents[1]) * plan["share"] > 1 << 15  # the val tail is cut into parts too
    processor = spm.SentencePieceProcessor(model_file=str(three_books["tokenizer"] / "spm.model"))
    streams = {name: split_stream(tmp_path / "packed", name) for name in ("train", "val")}
    assign_documents(documents, processor, streams, plan)


def test_text_without_whitespace_is_cut_elsewhere_and_text_without_a_safe_cut_is_encoded_whole(three_books,
                                                                                                 long_document):
    """The cut needs no whitespace, only a position no piece spans; where none lies within CUT_WINDOW of a part's
    target end the part grows (here: a character repeated, whose pair is a piece, can be cut nowhere)."""
    processor = spm.SentencePieceProcessor(model_file=str(three_books["tokenizer"] / "spm.model"))
    encoder = DocumentEncoder(processor, threads=2, part_chars=1 << 14)
    pair = next(piece for piece in encoder.pieces if len(piece) == 2 and piece[0] == piece[1] and piece.isalpha())
    for text, parts in (("".join(long_document[:1 << 18].split()), "several"), (pair[0] * (1 << 16), "one")):
        bounds = encoder.cuts(text)
        assert (len(bounds) > 2) == (parts == "several"), parts
        whole = [special_tokens.BOS_ID, *processor.encode(text), special_tokens.EOS_ID]
        assert encoder.encode([text])[0].tolist() == whole


def test_a_tokenizer_that_normalizes_across_characters_encodes_long_documents_whole(workspace, documents, caplog):
    """A bare SentencePiece model (NFKC rules, a dummy prefix): cutting could change its ids, so it is not done."""
    processor = spm.SentencePieceProcessor(model_file=str(workspace["other_tokenizer"] / "spm.model"))
    encoder = DocumentEncoder(processor, threads=2, part_chars=1 << 10)
    text = "\n".join(documents)
    assert len(text) > 4 << 10 and "normalizer" in encoder.whole_reason
    with caplog.at_level("WARNING"):
        assert encoder.encode([text, "short"])[0].tolist() == [special_tokens.BOS_ID, *processor.encode(text),
                                                               special_tokens.EOS_ID]
    assert caplog.text.count("cannot encode long documents in parts") == 1
