"""Stage 20: the trained SentencePiece tokenizer, its transformers export, metadata, sampling and bad input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from eval_helpers import head_lines
from helpers import load_sample_documents, make_corpus_dir

from lumi.cli import main
from lumi.core.config import CONFIG_DIR, load_config
from lumi.core.errors import LumiError
from lumi.core.files import sha256_file
from lumi.core.special_tokens import BOS_ID, CHAT_MARKERS, EOS_ID, IM_END_ID, IM_START_ID, SPECIAL_IDS, UNK_ID
from lumi.formats.corpus import read_manifest as read_corpus_manifest
from lumi.formats.tokenizer import (HF_TOKENIZER, META, REPORT, SPM_MODEL, check_tokenizer_integrity, load_hf_tokenizer,
                                    load_sentencepiece, load_tokenizer_meta, tokenizer_sha256)
from lumi.data.tokenizer_training import (UNIGRAM_EXACT_CHARS, CorpusSample, TokenizerConfig, chunk_document,
                                         train_tokenizer)

REPO_ROOT = Path(__file__).resolve().parent.parent
VOCAB_SIZE = 800
ODD_STRINGS = [
    "emoji 😀👍🏽👨‍👩‍👧 🇯🇵 and ✓✗",
    "中文字符，日本語のテキスト。한국어 문장.",
    "  two leading spaces, three trailing   ",
    "tab\tseparated\tcolumns\nwindows\r\nline\r\nends\n\n\n\nmany newlines",
    "\u00a0no-break\u2009thin\u3000ideographic\u200bzero-width\u2028line-sep",
    "digits 0123456789, year 2024, pi 3.14159265, -42, 1,000,000",
    "Ünïcödé — naïve café, “curly quotes” ‘single’ … ﬁ ligature",
    "literal <s> and </s> and <pad> <unk> <0x41> are plain text",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "",
]


@pytest.fixture(scope="module")
def sample_docs(samples_dir) -> dict[str, list[str]]:
    return load_sample_documents(samples_dir, max_bytes_per_source=200_000)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_docs) -> Path:
    texts = [doc for docs in sample_docs.values() for doc in docs]
    return make_corpus_dir(tmp_path_factory.mktemp("corpus") / "corpus", texts, shard_bytes=400_000)


@pytest.fixture(scope="module")
def tokenizers_by_type(tmp_path_factory, corpus) -> dict[str, Path]:
    """unigram through the CLI and the demo config (flag and --set overrides), bpe through the library call."""
    root = tmp_path_factory.mktemp("tokenizers")
    assert main(["tokenizer", "--corpus-dir", str(corpus), "--output-dir", str(root / "unigram"),
                 "--config", str(CONFIG_DIR / "demo" / "tokenizer.json"), "--vocab-size", str(VOCAB_SIZE),
                 "--set", "model_type=unigram", "--set", "holdout_fraction=0.1"]) == 0
    train_tokenizer(corpus, root / "bpe",
                    TokenizerConfig(vocab_size=VOCAB_SIZE, model_type="bpe", holdout_fraction=0.1))
    return {"unigram": root / "unigram", "bpe": root / "bpe"}


@pytest.fixture(params=["unigram", "bpe"])
def tokenizer_dir(request, tokenizers_by_type) -> Path:
    return tokenizers_by_type[request.param]


def windows(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [text]


# --- ids and the transformers export

def test_special_token_ids_are_the_fixed_layout(tokenizer_dir):
    sp = load_sentencepiece(tokenizer_dir)
    hf = load_hf_tokenizer(tokenizer_dir)
    for token, token_id in SPECIAL_IDS.items():
        assert sp.id_to_piece(token_id) == token
        assert hf.convert_tokens_to_ids(token) == token_id
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
    assert (hf.pad_token_id, hf.unk_token_id, hf.bos_token_id, hf.eos_token_id) == (0, 1, 2, 3)
    assert load_tokenizer_meta(tokenizer_dir)["special_tokens"] == SPECIAL_IDS
    assert sp.get_piece_size() == len(hf) == VOCAB_SIZE


@pytest.mark.parametrize("source", ["tinyshakespeare", "gutenberg", "wiki", "c4", "dolma"])
def test_transformers_gives_sentencepiece_ids_on_real_text(tokenizers_by_type, sample_docs, source):
    for model_type, directory in tokenizers_by_type.items():
        sp, hf = load_sentencepiece(directory), load_hf_tokenizer(directory)
        texts = sample_docs[source]
        if model_type == "unigram":  # exact up to this length only (float32 sums in SentencePiece)
            texts = [w for text in texts for w in windows(text, UNIGRAM_EXACT_CHARS)]
        expected = sp.encode(texts)
        assert hf(texts)["input_ids"] == expected, model_type
        for text, ids in zip(texts, expected):
            assert UNK_ID not in ids
            assert sp.decode(ids) == text
            assert hf.decode(ids) == text


@pytest.mark.parametrize("text", ODD_STRINGS)
def test_odd_strings_encode_identically_and_round_trip(tokenizer_dir, text):
    sp, hf = load_sentencepiece(tokenizer_dir), load_hf_tokenizer(tokenizer_dir)
    ids = sp.encode(text)
    assert hf(text)["input_ids"] == ids
    assert hf.encode(text) == ids
    assert UNK_ID not in ids
    assert sp.decode(ids) == text
    assert hf.decode(ids) == text


def test_digits_are_split_one_per_token(tokenizer_dir):
    sp = load_sentencepiece(tokenizer_dir)
    pieces = sp.encode("1984 and 31415926", out_type=str)
    digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
    assert "".join(digit_pieces) == "198431415926"
    assert all(len(p) == 1 for p in digit_pieces)


def test_chat_markers_are_single_tokens_and_control_tokens_never_come_from_text(tokenizer_dir):
    sp, hf = load_sentencepiece(tokenizer_dir), load_hf_tokenizer(tokenizer_dir)
    chat = "<|im_start|>user\nHi<|im_end|>\n"
    for ids in (sp.encode(chat), hf(chat)["input_ids"]):
        assert ids[0] == IM_START_ID and ids.count(IM_START_ID) == 1 and ids.count(IM_END_ID) == 1
    for text in ("<s>", "</s>", "x</s>y<s>", "<pad><unk>"):
        for ids in (sp.encode(text), hf(text)["input_ids"]):
            assert not set(ids) & {0, 1, BOS_ID, EOS_ID}
    assert hf.decode(hf(chat)["input_ids"], skip_special_tokens=True) == chat  # the markers are text, not special
    assert hf.decode([BOS_ID, *sp.encode("hi"), EOS_ID], skip_special_tokens=True) == "hi"


def test_transformers_adds_no_bos_or_eos(tokenizer_dir):
    hf = load_hf_tokenizer(tokenizer_dir)
    sp = load_sentencepiece(tokenizer_dir)
    for text in ("Hello world.", "x"):
        ids = hf(text)["input_ids"]
        assert ids == sp.encode(text)
        assert ids[0] != BOS_ID and ids[-1] != EOS_ID
    meta = load_tokenizer_meta(tokenizer_dir)
    assert meta["hf_encoding"]["adds_bos"] is False and meta["hf_encoding"]["adds_eos"] is False


def test_chat_markers_are_not_among_the_special_tokens_transformers_skips(tokenizer_dir):
    hf = load_hf_tokenizer(tokenizer_dir)
    assert set(hf.all_special_ids) == {0, 1, BOS_ID, EOS_ID}
    assert hf.convert_tokens_to_ids(list(CHAT_MARKERS)) == [IM_START_ID, IM_END_ID]


# --- metadata and validation report

def test_metadata_records_model_corpus_and_training(tokenizers_by_type, corpus):
    directory = tokenizers_by_type["unigram"]
    meta = load_tokenizer_meta(directory)
    assert meta["sha256"] == sha256_file(directory / SPM_MODEL) == tokenizer_sha256(directory)
    assert meta["files"][HF_TOKENIZER] == sha256_file(directory / HF_TOKENIZER)
    assert meta["vocab_size"] == VOCAB_SIZE and meta["config"]["vocab_size"] == VOCAB_SIZE
    assert meta["model_type"] == "unigram" and meta["config"]["holdout_fraction"] == 0.1
    assert meta["corpus"]["manifest_sha256"] == sha256_file(corpus / "manifest.json")
    corpus_bytes = json.loads((corpus / "manifest.json").read_text())["bytes"]
    training = meta["training"]
    assert 0 < training["bytes"] < corpus_bytes and training["sentences"] >= training["documents"] > 0
    assert training["heldout_documents"] > 0
    assert meta["normalization"]["rule"] == "identity"


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_validation_report_on_heldout_documents(tokenizers_by_type, model_type):
    report = json.loads((tokenizers_by_type[model_type] / REPORT).read_text())
    assert report["documents"] == load_tokenizer_meta(tokenizers_by_type[model_type])["training"]["heldout_documents"]
    assert report["bytes_per_token"] == pytest.approx(report["bytes"] / report["tokens"])
    assert report["bytes_per_token"] > 1  # it compresses
    assert report["unk_rate"] == 0
    assert report["roundtrip_exact_fraction"] == report["hf_roundtrip_exact_fraction"] == 1
    limit = report["hf_exact_guaranteed_up_to_chars"]
    assert all(limit is not None and chars > limit for chars in report["hf_disagreeing_documents_chars"])
    if model_type == "bpe":
        assert report["hf_id_agreement_fraction"] == 1


# --- the training sample

def test_chunks_respect_the_byte_limit_and_reassemble(tmp_path):
    text = ("short line\n" * 30 + "word " * 200 + "\n" + "ü" * 500 + "x" * 300 + "\nend")
    limit = 256
    chunks = list(chunk_document(text, limit))
    assert "".join(chunks) == text
    assert all(0 < len(chunk.encode("utf-8")) <= limit for chunk in chunks)
    assert chunks[0].endswith("\n")  # cut at a line end when the line fits
    assert any(chunk.startswith(" word") for chunk in chunks)  # a long line is cut before a space


def test_sample_holds_out_whole_documents_deterministically(tmp_path):
    texts = [f"document {i}\n" + f"line of text number {i} " * (i % 7 + 1) for i in range(300)]
    texts += texts[:20]  # duplicates must land on the same side
    corpus = make_corpus_dir(tmp_path / "corpus", texts)
    config = TokenizerConfig(vocab_size=512, holdout_fraction=0.3, max_sentence_length=256)
    sample = CorpusSample(corpus, config)
    chunks = list(sample)
    trained = "".join(chunks)
    heldout = set(sample.heldout)
    training_docs = [t for t in texts if t not in heldout]
    assert sorted(chunks) == sorted(training_docs)  # every training document whole, once; no held-out text
    assert 0.15 < len(heldout) / 300 < 0.45
    assert sample.documents == len(training_docs) and sample.bytes == len(trained.encode("utf-8"))
    again = CorpusSample(corpus, config)
    list(again)
    assert again.heldout == sample.heldout
    other_seed = CorpusSample(corpus, config.model_copy(update={"seed": config.seed + 1}))
    list(other_seed)
    assert other_seed.heldout != sample.heldout


def test_sample_is_capped_and_spread_over_the_corpus(tmp_path):
    texts = [f"document number {i} with some words in it\n" * 5 for i in range(1000)]
    corpus = make_corpus_dir(tmp_path / "corpus", texts)
    total = sum(len(t.encode("utf-8")) for t in texts)
    config = TokenizerConfig(vocab_size=512, holdout_fraction=0.05, max_training_bytes=total // 10,
                             max_validation_bytes=total // 100)
    sample = CorpusSample(corpus, config)
    chunks = list(sample)
    assert sample.bytes <= config.max_training_bytes + config.max_sentence_length
    assert sample.heldout_bytes <= config.max_validation_bytes + max(len(t) for t in texts)
    sampled = {int(number) for chunk in chunks for number in re.findall(r"document number (\d+)", chunk)}
    assert len(sampled) < len(texts) // 5
    assert min(sampled) < 100 and max(sampled) >= 900  # spread over the corpus, not its head


# --- loading, integrity and bad input

@pytest.mark.parametrize("missing", [SPM_MODEL, META, HF_TOKENIZER])
def test_missing_tokenizer_file_is_named(tokenizers_by_type, tmp_path, missing):
    broken = tmp_path / "tok"
    shutil.copytree(tokenizers_by_type["bpe"], broken)
    (broken / missing).unlink()
    for load in (load_tokenizer_meta, load_sentencepiece, load_hf_tokenizer, check_tokenizer_integrity):
        with pytest.raises(LumiError, match=missing) as info:
            load(broken)
        assert str(broken) in str(info.value)


def test_not_a_directory_is_a_clear_error(tmp_path):
    with pytest.raises(LumiError, match="tokenizer directory not found"):
        load_tokenizer_meta(tmp_path / "nowhere")


@pytest.mark.parametrize("tampered", [SPM_MODEL, HF_TOKENIZER])
def test_tampered_model_is_refused(tokenizers_by_type, tmp_path, tampered):
    copy = tmp_path / "tok"
    shutil.copytree(tokenizers_by_type["bpe"], copy)
    check_tokenizer_integrity(copy)
    with open(copy / tampered, "ab") as handle:
        handle.write(b" ")
    for load in (check_tokenizer_integrity, load_sentencepiece, load_hf_tokenizer):
        with pytest.raises(LumiError, match=f"{tampered}: sha256 differs"):
            load(copy)


def test_existing_output_dir_needs_force(tmp_path, sample_docs, capsys):
    corpus = make_corpus_dir(tmp_path / "corpus", sample_docs["tinyshakespeare"][:400])
    output = tmp_path / "tok"
    output.mkdir()
    (output / "keep.txt").write_text("earlier result")
    args = ["tokenizer", "--corpus-dir", str(corpus), "--output-dir", str(output), "--vocab-size", "400",
            "--set", "model_type=bpe", "--set", "holdout_fraction=0.1"]
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert (output / "keep.txt").read_text() == "earlier result" and not (output / SPM_MODEL).exists()
    assert main([*args, "--force"]) == 0
    assert not (output / "keep.txt").exists()
    check_tokenizer_integrity(output)


def test_empty_corpus_is_a_clear_error(tmp_path, capsys):
    corpus = make_corpus_dir(tmp_path / "corpus", [])
    assert main(["tokenizer", "--corpus-dir", str(corpus), "--output-dir", str(tmp_path / "tok")]) == 2
    assert "corpus is empty" in capsys.readouterr().err
    assert not (tmp_path / "tok").exists()


def test_missing_corpus_is_a_clear_error(tmp_path, capsys):
    assert main(["tokenizer", "--corpus-dir", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "tok")]) == 2
    assert "corpus directory not found" in capsys.readouterr().err


def test_vocabulary_too_large_for_the_corpus_is_a_clear_error(tmp_path, capsys):
    corpus = make_corpus_dir(tmp_path / "corpus", [f"tiny corpus line {i}\n" for i in range(50)])
    assert main(["tokenizer", "--corpus-dir", str(corpus), "--output-dir", str(tmp_path / "tok"),
                 "--vocab-size", "5000", "--set", "holdout_fraction=0.2"]) == 2
    assert "Vocabulary size too high" in capsys.readouterr().err
    assert not (tmp_path / "tok").exists()


@pytest.mark.parametrize("override, field", [
    ("vocab_size=100", "vocab_size"), ("vocab_size=2000000", "vocab_size"), ("model_type=wordpiece", "model_type"),
    ("character_coverage=0", "character_coverage"), ("holdout_fraction=0", "holdout_fraction"),
    ("num_threads=-1", "num_threads"), ("typo=1", "typo")])
def test_bad_config_values_are_refused(override, field):
    with pytest.raises(LumiError, match=f"field '{field}'"):
        load_config(TokenizerConfig, CONFIG_DIR / "demo" / "tokenizer.json", [override])


def test_shipped_configs_validate():
    pretrain = load_config(TokenizerConfig, CONFIG_DIR / "pretrain" / "tokenizer" / "spm32k.json")
    assert (pretrain.vocab_size, pretrain.model_type) == (32000, "bpe")  # exports to llama.cpp exactly
    demo = load_config(TokenizerConfig, CONFIG_DIR / "demo" / "tokenizer.json")
    assert demo.vocab_size < pretrain.vocab_size and demo.model_type == "bpe"


def test_script_is_the_cli_verb():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "20_train_tokenizer.py"), "--help"],
                            capture_output=True, text=True, check=True)
    assert "--corpus-dir" in result.stdout and "--vocab-size" in result.stdout


# --- small corpora: validation by bytes when documents are few or very unequal -------------------------------------

def corpus_from_files(tmp_path: Path, *files: Path) -> Path:
    """`lumi corpus --input FILE...`, as a user builds a corpus from a few books (each .txt file one document)."""
    output = tmp_path / "corpus"
    assert main(["corpus", "--input", *map(str, files), "--output-dir", str(output)]) == 0
    return output


SMALL_CORPORA = {
    "1 book": lambda s, tmp: [s / "tinyshakespeare_train90.txt"],
    "3 books": lambda s, tmp: [s / "tinyshakespeare_train90.txt", s / "gutenberg_pg11.txt", s / "gutenberg_pg84.txt"],
    "120 web pages + 2 books": lambda s, tmp: [head_lines(s / "c4_demo_llamafactory_first150.jsonl",
                                                          tmp / "c4_120.jsonl", 120),
                                               s / "gutenberg_pg11.txt", s / "gutenberg_pg84.txt"],
    "1 giant among 10 small": lambda s, tmp: [s / "tinyshakespeare_train90.txt", s / "c4_olmo_fixture_01.json.gz"],
}
DOCUMENTS = {"1 book": 1, "3 books": 3, "120 web pages + 2 books": 122, "1 giant among 10 small": 11}


@pytest.mark.parametrize("case", sorted(SMALL_CORPORA))
def test_tokenizer_validates_on_small_corpora_through_the_cli(case, samples_dir, tmp_path):
    """Any corpus the trainer accepts validates with the default holdout_fraction (0.01): long documents are held
    out block by block, so a few books or one giant document give held-out text near 1% of the bytes."""
    corpus = corpus_from_files(tmp_path, *SMALL_CORPORA[case](samples_dir, tmp_path))
    assert read_corpus_manifest(corpus)["documents"] == DOCUMENTS[case]
    output = tmp_path / "tok"
    assert main(["tokenizer", "--corpus-dir", str(corpus), "--output-dir", str(output), "--vocab-size", "512",
                 "--set", "model_type=bpe", "--set", "max_training_bytes=400000"]) == 0
    heldout = load_tokenizer_meta(output)["training"]["heldout"]
    report = json.loads((output / REPORT).read_text())
    assert report["documents"] == heldout["texts"] >= 5 and report["roundtrip_exact_fraction"] == 1.0
    assert 0.004 < heldout["share_of_corpus_bytes"] < 0.025 and not heldout["forced"]

    sample = CorpusSample(corpus, load_config(TokenizerConfig, CONFIG_DIR / "pretrain" / "tokenizer" / "spm32k.json"))
    trained = "\n".join(sample)
    assert sample.heldout and not any(text in trained for text in sample.heldout)  # never trained on
    if case == "1 giant among 10 small":
        giant = (samples_dir / "tinyshakespeare_train90.txt").read_text()
        assert sum(text in giant for text in sample.heldout) >= 5  # the giant document is validated on too


def test_tiny_corpus_holds_out_its_one_unit_with_the_lowest_draw(tmp_path):
    """Where no unit is held out by chance (two short documents), the training one with the lowest draw validates."""
    texts = ["a first short document\n", "and a second one\n"]
    sample = CorpusSample(make_corpus_dir(tmp_path / "corpus", texts), TokenizerConfig(vocab_size=512))
    trained = list(sample)
    assert sample.forced_heldout and len(sample.heldout) == 1 and sorted(trained + sample.heldout) == sorted(texts)


def test_corpus_too_small_to_train_and_validate_says_so(tmp_path, capsys):
    corpus = make_corpus_dir(tmp_path / "corpus", ["one short line of text\n"])
    assert main(["tokenizer", "--corpus-dir", str(corpus), "--output-dir", str(tmp_path / "tok"),
                 "--vocab-size", "400", "--set", "model_type=bpe"]) == 2
    assert "too little text (23 bytes) to train on and also hold some out" in capsys.readouterr().err
