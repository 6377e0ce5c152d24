"""llmbook.tokenizer: splitting, vocabularies, the two word tokenizers, GPT-2's BPE."""

import pytest
import tiktoken

from llmbook import tokenizer as tk
from llmbook.tokenizer import (
    END_OF_TEXT,
    UNKNOWN,
    SimpleTokenizerV1,
    SimpleTokenizerV2,
    build_vocab,
    gpt2_tokenizer,
    join_pieces,
    split_text,
)


@pytest.mark.parametrize(
    "text, pieces",
    [
        ("", []),
        ("  \n\t ", []),
        ("Hello, world.", ["Hello", ",", "world", "."]),
        ("wait--what?!", ["wait", "--", "what", "?", "!"]),
        ("a---b", ["a", "--", "-", "b"]),
        ("_felt_ it's", ["_", "felt", "_", "it", "'", "s"]),
        ("naïve café 42", ["naïve", "café", "42"]),
        ("line\nbreak\ttab", ["line", "break", "tab"]),
    ],
)
def test_split_text(text, pieces):
    assert split_text(text) == pieces


def test_join_pieces_removes_spaces_before_punctuation_only():
    assert join_pieces(["Yes", ",", "he", "said", "--", "twice", "."]) == (
        "Yes, he said-- twice."
    )
    assert join_pieces(["end", ".", END_OF_TEXT, "Next"]) == "end. <|endoftext|> Next"


def test_build_vocab_is_sorted_contiguous_and_appends_specials():
    vocab = build_vocab("b a c a", special_tokens=[END_OF_TEXT, UNKNOWN, END_OF_TEXT])
    assert vocab == {"a": 0, "b": 1, "c": 2, END_OF_TEXT: 3, UNKNOWN: 4}


def test_v1_round_trip_on_the_whole_story(verdict):
    tokenizer = SimpleTokenizerV1(build_vocab(verdict))
    ids = tokenizer.encode(verdict)
    # 4,766 pieces: counted by split_text itself, the figure chapter 2 prints; a
    # change here means the splitting rule changed, and the chapter must say so.
    assert len(ids) == len(split_text(verdict)) == 4766
    decoded = tokenizer.decode(ids)
    assert decoded == join_pieces(split_text(verdict))
    assert split_text(decoded) == split_text(verdict)  # only whitespace changes


def test_v1_unknown_word_names_the_word(verdict):
    tokenizer = SimpleTokenizerV1(build_vocab(verdict))
    with pytest.raises(KeyError, match="'espresso' is not in the vocabulary"):
        tokenizer.encode("I had an espresso.")


@pytest.mark.parametrize("cls", [SimpleTokenizerV1, SimpleTokenizerV2])
def test_decode_unknown_id_is_an_error(cls):
    tokenizer = cls(build_vocab("a b", special_tokens=[UNKNOWN]))
    with pytest.raises(KeyError, match="token id 99 is not in the vocabulary"):
        tokenizer.decode([0, 99])


def test_v2_requires_an_unknown_token():
    with pytest.raises(ValueError, match="no <\\|unk\\|> entry"):
        SimpleTokenizerV2(build_vocab("a b"))


def test_v2_maps_unknown_words_and_keeps_specials_whole(verdict):
    vocab = build_vocab(verdict, special_tokens=[END_OF_TEXT, UNKNOWN])
    tokenizer = SimpleTokenizerV2(vocab)
    ids = tokenizer.encode("the espresso<|endoftext|>the")
    assert ids == [vocab["the"], vocab[UNKNOWN], vocab[END_OF_TEXT], vocab["the"]]
    assert tokenizer.decode(ids) == "the <|unk|> <|endoftext|> the"


def test_v2_agrees_with_v1_on_known_text(verdict):
    v1 = SimpleTokenizerV1(build_vocab(verdict, special_tokens=[UNKNOWN]))
    v2 = SimpleTokenizerV2(build_vocab(verdict, special_tokens=[UNKNOWN]))
    assert v1.encode(verdict) == v2.encode(verdict)


def test_gpt2_tokenizer_is_tiktokens_gpt2(verdict):
    encoding = gpt2_tokenizer()
    assert encoding.n_vocab == 50257
    assert encoding.encode(verdict) == tiktoken.get_encoding("gpt2").encode(verdict)
    assert len(encoding.encode(verdict)) == 5145  # tiktoken's count, as in chapter 2


def test_gpt2_tokenizer_failure_mentions_the_cache_variable(monkeypatch):
    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tk.tiktoken, "get_encoding", offline)
    with pytest.raises(RuntimeError, match="TIKTOKEN_CACHE_DIR") as err:
        gpt2_tokenizer()
    assert "ConnectionError: no network" in str(err.value)


@pytest.mark.parametrize("cls", [SimpleTokenizerV1, SimpleTokenizerV2])
def test_a_vocabulary_with_a_repeated_id_is_refused(cls):
    vocab = {"a": 0, "b": 1, "c": 1, UNKNOWN: 2}
    with pytest.raises(ValueError, match="gives id 1 to both 'b' and 'c'"):
        cls(vocab)
    with pytest.raises(TypeError, match="must be an int"):
        cls({"a": 0, "b": "1", UNKNOWN: 2})


@pytest.mark.parametrize(
    "text",
    ["Don't stop.", "it's his; I'm sure we'll see, they've said, they're, he'd"],
)
def test_contractions_come_back_whole(text):
    assert join_pieces(split_text(text)) == text
    tokenizer = SimpleTokenizerV2(build_vocab(text, [UNKNOWN]))
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_a_quote_mark_that_is_not_a_contraction_keeps_its_space():
    assert join_pieces(["the", "dogs", "'", "toys"]) == "the dogs' toys"
