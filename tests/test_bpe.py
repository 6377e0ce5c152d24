"""llmbook.bpe: exact against tiktoken, round trips, training, files, errors, and
speed relative to chapter 3's naive encoder."""

import json
import math
import time
from typing import Any

import pytest
import regex
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.bpe import (
    GPT2_PATTERN,
    BPETokenizer,
    bpe_merge,
    naive_merge,
    train_merges,
)
from llmbook.data import data_file
from llmbook.tokenizer import gpt2_tokenizer

EOT = "<|endoftext|>"
DATA_FILES = ["the-verdict.txt", "SMSSpamCollection", "instruction-data.json"]

# Strings that stress the pre-tokenizer: contractions, digit and space runs, Unicode
# letters and spaces, line separators, and pieces of special tokens.
PIECES = list(" \t\n\r\x0b\x0c'sdmtlvreAZaz09_é日🙂!?.,-\u00a0\u2028\u3000<|>") + [
    EOT,
    "<|",
    "endoftext",
    "'ll",
    "'ve",
    "   ",
    "\n\n",
]
TRICKY = st.lists(st.sampled_from(PIECES), max_size=30).map("".join)


@pytest.fixture(scope="module")
def gpt2():
    return BPETokenizer.gpt2()


@pytest.fixture(scope="module")
def reference():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def trained(verdict):
    return BPETokenizer().train(verdict, vocab_size=700)


def test_pattern_is_gpt2s(reference):
    assert reference._pat_str == GPT2_PATTERN


@pytest.mark.parametrize("name", DATA_FILES)
def test_gpt2_mode_equals_tiktoken_on_the_data_files(gpt2, reference, name):
    text = data_file(name).read_text(encoding="utf-8")
    assert gpt2.encode(text) == reference.encode(text)
    assert gpt2.decode(gpt2.encode(text)) == text


@settings(max_examples=400, deadline=None)
@given(text=st.text())
def test_gpt2_mode_equals_tiktoken_on_any_unicode(gpt2, reference, text):
    ids = gpt2.encode(text, disallowed_special=())
    assert ids == reference.encode(text, disallowed_special=())
    assert gpt2.decode(ids) == text


@settings(max_examples=400, deadline=None)
@given(text=TRICKY)
def test_gpt2_mode_equals_tiktoken_on_tricky_text(gpt2, reference, text):
    options: list[dict[str, Any]] = [
        {"allowed_special": "all"},
        {"disallowed_special": ()},
    ]
    for kwargs in options:
        assert gpt2.encode(text, **kwargs) == reference.encode(text, **kwargs)
    if EOT in text:
        with pytest.raises(ValueError):
            reference.encode(text)
        with pytest.raises(ValueError, match="special token '<\\|endoftext\\|>'"):
            gpt2.encode(text)
    else:
        assert gpt2.encode(text) == reference.encode(text)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(), TRICKY))
def test_trained_tokenizer_equals_its_tiktoken_twin(trained, text):
    twin = trained.to_tiktoken()
    ids = trained.encode(text, allowed_special="all")
    assert ids == twin.encode(text, allowed_special="all")
    assert trained.decode(ids) == text


def test_trained_twin_on_the_story(trained, verdict):
    assert trained.encode(verdict) == trained.to_tiktoken().encode(verdict)


def test_training_is_deterministic_and_reaches_the_size(verdict):
    first = BPETokenizer().train(verdict, vocab_size=600)
    second = BPETokenizer().train(verdict, vocab_size=600)
    assert first.ranks == second.ranks
    assert first.vocab_size == 600
    assert first.special_tokens == {EOT: 599}
    assert sorted(first.ranks.values()) == list(range(599))  # contiguous ids


def test_training_stops_when_no_pair_occurs_twice():
    assert train_merges("abab", 10) == [(b"a", b"b")]
    assert train_merges("abcd", 10) == []
    tokenizer = BPETokenizer().train("abab", vocab_size=300, special_tokens=())
    assert tokenizer.vocab_size == 257


def test_merges_are_recovered_from_ranks(verdict):
    merges = train_merges(verdict, 200)
    tokenizer = BPETokenizer().train(verdict, vocab_size=256 + 200, special_tokens=())
    assert len(merges) == 200
    assert tokenizer.merges == merges


def test_bpe_merge_prefers_low_ranks_and_the_leftmost_pair():
    ranks = {bytes([b]): b for b in range(256)} | {b"aa": 256, b"ab": 257}
    assert bpe_merge(b"aaa", ranks) == [b"aa", b"a"]
    assert bpe_merge(b"aab", ranks) == [b"aa", b"b"]
    assert bpe_merge(b"", ranks) == []
    long = b"ab" * 5000  # the heap keeps long pre-tokens fast
    assert bpe_merge(long, ranks) == [b"ab"] * 5000


def test_save_and_load_round_trip(tmp_path, trained, verdict):
    path = tmp_path / "tok.json"
    trained.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.ranks == trained.ranks
    assert loaded.special_tokens == trained.special_tokens
    assert loaded.encode(verdict) == trained.encode(verdict)
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]  # no temp file left


def test_gpt2_survives_a_save_and_load(tmp_path, gpt2, reference, verdict):
    gpt2.save(tmp_path / "gpt2.json")
    loaded = BPETokenizer.load(tmp_path / "gpt2.json")
    assert loaded.encode(verdict) == reference.encode(verdict)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe not text", "is not a BPETokenizer file"),
        (b"{not json", "is not a BPETokenizer file"),
        (b'["a list"]', "no format tag 'llmbook-bpe'"),
        (json.dumps({"format": "other"}).encode(), "no format tag 'llmbook-bpe'"),
        (
            json.dumps({"format": "llmbook-bpe", "version": 99}).encode(),
            "version 99; this llmbook reads version 1",
        ),
    ],
)
def test_load_refuses_other_files(tmp_path, content, message):
    path = tmp_path / "file.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        BPETokenizer.load(path)


def test_vocab_size_too_small_is_an_error():
    with pytest.raises(ValueError, match="vocab_size=256 is too small.*at least 257"):
        BPETokenizer().train("text", vocab_size=256)
    with pytest.raises(ValueError, match="at least 258"):
        BPETokenizer().train("text", vocab_size=257, special_tokens=["<|a|>", "<|b|>"])


def test_unknown_ids_are_an_error(trained):
    with pytest.raises(KeyError, match="token id 700 is not in the vocabulary"):
        trained.decode([1, 700])
    with pytest.raises(KeyError, match="token id -1 is not"):
        trained.decode([-1])


def test_unknown_allowed_specials_are_ignored_as_in_tiktoken(gpt2, reference):
    text = "a <|nope|> b <|endoftext|>"
    allowed = {"<|nope|>", EOT}
    assert gpt2.encode(text, allowed_special=allowed) == reference.encode(
        text, allowed_special=allowed
    )


def test_ranks_must_contain_every_byte():
    with pytest.raises(ValueError, match="lacks 1 of the 256 single-byte tokens"):
        BPETokenizer({bytes([b]): b for b in range(255)})
    with pytest.raises(ValueError, match="ids of their own"):
        BPETokenizer(None, {EOT: 3})


BYTES = {bytes([b]): b for b in range(256)}


def test_train_refuses_a_string_for_special_tokens():
    with pytest.raises(TypeError, match=r"special_tokens=\['<\|endoftext\|>'\]"):
        BPETokenizer().train("some text", 300, special_tokens=EOT)


def test_train_refuses_an_empty_special_token():
    with pytest.raises(ValueError, match="empty string"):
        BPETokenizer().train("some text", 300, special_tokens=[""])


@pytest.mark.parametrize("size", [300.7, "300", True, None])
def test_train_refuses_a_vocab_size_that_is_not_an_int(size):
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        BPETokenizer().train("some text", size)


@pytest.mark.parametrize(
    "ranks, specials, message",
    [
        (BYTES | {b"ab": 300}, {}, "ids 0 to 256"),  # a gap
        (BYTES | {b"ab": -1}, {}, "ids 0 to 256"),  # negative
        (BYTES | {b"ab": 255}, {}, "ids 0 to 256"),  # repeated
        (BYTES | {b"ab": 256}, {EOT: 500, "<|x|>": 500}, "ids of their own"),
        (BYTES | {b"ab": 256}, {EOT: 256}, "ids of their own"),
        (
            BYTES | {b"bc": 256, b"ab": 257, b"cd": 258, b"abcd": 259},
            {},
            "can never be produced",
        ),  # 'abcd' is bc first, then stuck
    ],
)
def test_vocabularies_tiktoken_reads_otherwise_are_refused(ranks, specials, message):
    with pytest.raises(ValueError, match=message):
        BPETokenizer(ranks, specials)


def test_ids_must_be_ints():
    with pytest.raises(TypeError, match="int ids"):
        BPETokenizer(BYTES | {b"ab": "256"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int ids"):
        BPETokenizer(BYTES, {EOT: 256.0})  # type: ignore[dict-item]


def test_vocab_size_covers_the_largest_id_like_tiktoken():
    tokenizer = BPETokenizer(BYTES | {b"ab": 256}, {EOT: 300})  # specials may skip
    assert tokenizer.vocab_size == 301 == tokenizer.to_tiktoken().n_vocab


def test_what_is_accepted_agrees_with_tiktoken(reference):
    ours = BPETokenizer().train("abab cdcd abcd " * 30, vocab_size=270)
    text = "abcd dcba abab cd"
    assert ours.encode(text) == ours.to_tiktoken().encode(text)


def test_a_saved_file_with_string_ids_is_refused(tmp_path):
    path = tmp_path / "tok.json"
    BPETokenizer().train("a rose is a rose", vocab_size=260).save(path)
    data = json.loads(path.read_text())
    data["ranks"] = [[token, str(rank)] for token, rank in data["ranks"]]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not a valid BPETokenizer file"):
        BPETokenizer.load(path)


def test_from_tiktoken_round_trips_an_encoding(reference):
    again = BPETokenizer.from_tiktoken(reference).to_tiktoken("again")
    text = "Round trips: tiktoken -> BPETokenizer -> tiktoken. <|endoftext|>"
    assert again.encode(text, allowed_special="all") == reference.encode(
        text, allowed_special="all"
    )
    assert isinstance(again, tiktoken.Encoding)


def test_from_tiktoken_needs_the_pattern_of_a_non_gpt2_encoding():
    words = r"\S+|\s+"  # a pre-tokenizer unlike GPT-2's: spaces are tokens of their own
    ranks = BYTES | {b"12": 256, b"123": 257, b"45": 258, b"12345": 259, b" i": 260}
    encoding = tiktoken.Encoding(
        name="words", pat_str=words, mergeable_ranks=ranks, special_tokens={}
    )
    with pytest.raises(ValueError, match="unlike the 'words' encoding; pass the"):
        BPETokenizer.from_tiktoken(encoding)
    ours = BPETokenizer.from_tiktoken(encoding, pattern=words)
    assert ours.pattern == words
    assert ours.encode("it is 12345") == encoding.encode("it is 12345")


def test_heap_merge_equals_the_naive_rescan(verdict):
    import random

    tokenizer = BPETokenizer().train(verdict[:5000], vocab_size=400)
    rng = random.Random(0)
    words = [w.encode() for w in verdict.split()[:2000]]
    words += [
        bytes(rng.choice(b"aeinst ") for _ in range(rng.randint(1, 30)))
        for _ in range(500)
    ]
    for word in words:
        assert bpe_merge(word, tokenizer.ranks) == naive_merge(word, tokenizer.ranks)


def test_text_that_is_not_a_str_is_refused_where_it_enters(gpt2):
    with pytest.raises(TypeError, match="must be a str, not bytes, decode it first"):
        gpt2.encode(b"some bytes")
    with pytest.raises(TypeError, match="must be a str, not NoneType"):
        gpt2.encode_ordinary(None)


def test_the_encoder_stays_well_ahead_of_the_naive_one(gpt2, reference):
    """A ratio of two speeds measured side by side, not a time: the encoder with an
    empty cache against chapter 3's naive encoder (naive_merge on every pre-token),
    on 40 KB of text, each the best of 7 runs taken in turns. When this was written
    the ratio was 2.9-3.0 (2.8-3.8 beside a busy process); before the whole-token
    lookup, 1.3. The bound, 2.0, fails on a slowdown of a third in the encoder's
    path and not on a noisy machine: a measurement under it is taken again, twice."""
    text = data_file("SMSSpamCollection").read_text(encoding="utf-8")[:40_000]
    words = regex.compile(GPT2_PATTERN)
    ranks = gpt2.ranks

    def naive() -> list[int]:
        return [
            ranks[part]
            for word in words.findall(text)
            for part in naive_merge(word.encode("utf-8"), ranks)
        ]

    def ours() -> list[int]:
        gpt2._cache.clear()  # every pre-token new, as in text never seen before
        return gpt2.encode_ordinary(text)

    assert ours() == naive() == reference.encode_ordinary(text)
    ratios = []
    for _ in range(3):
        best = {naive: math.inf, ours: math.inf}
        for _ in range(7):
            for encode in best:
                start = time.perf_counter()
                encode()
                best[encode] = min(best[encode], time.perf_counter() - start)
        ratios.append(best[naive] / best[ours])
        if ratios[-1] >= 2.0:
            break
    assert ratios[-1] >= 2.0, f"only {ratios} times as fast as the naive encoder"
