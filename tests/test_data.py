"""llmbook.data.data_file: resolution order, checksums, atomic downloads, errors."""

import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest

from llmbook import data
from llmbook.data import DATA_SOURCES, DataFileError, DataSource, data_file

CONTENT = b"A tiny corpus, for testing.\n"
DIGEST = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No data dir, an empty cache, and one extra registered file served from disk."""
    monkeypatch.delenv("LLMBOOK_DATA_DIR", raising=False)
    monkeypatch.setenv("LLMBOOK_CACHE_DIR", str(tmp_path / "cache"))
    origin = tmp_path / "origin" / "tiny.txt"
    origin.parent.mkdir()
    origin.write_bytes(CONTENT)
    sources = dict(DATA_SOURCES)
    sources["tiny.txt"] = DataSource(url=origin.as_uri(), sha256=DIGEST)
    monkeypatch.setattr(data, "DATA_SOURCES", sources)
    return tmp_path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_registry_declares_the_books_files():
    assert set(DATA_SOURCES) == {
        "the-verdict.txt",
        "SMSSpamCollection",
        "instruction-data.json",
        "instruction-data-with-preference.json",
    }
    for source in DATA_SOURCES.values():
        assert source.url.startswith("https://")
        assert len(source.sha256) == 64
        int(source.sha256, 16)


@pytest.mark.skipif(not os.environ.get("LLMBOOK_DATA_DIR"), reason="no local data")
@pytest.mark.parametrize("name", sorted(DATA_SOURCES))
def test_local_copies_verify(name):
    path = data_file(name)
    assert path.parent == Path(os.environ["LLMBOOK_DATA_DIR"])


def test_unknown_name_lists_the_known_files(isolated):
    with pytest.raises(DataFileError, match="unknown data file 'verdict.txt'") as err:
        data_file("verdict.txt")
    assert "the-verdict.txt" in str(err.value)


def test_explicit_path_is_verified(isolated, tmp_path):
    good = tmp_path / "good.txt"
    good.write_bytes(CONTENT)
    assert data_file("tiny.txt", good) == good
    bad = tmp_path / "bad.txt"
    bad.write_bytes(CONTENT + b"tampered")
    with pytest.raises(DataFileError, match="does not match the checksum") as err:
        data_file("tiny.txt", bad)
    assert DIGEST in str(err.value)
    with pytest.raises(DataFileError, match="no file at the given path"):
        data_file("tiny.txt", tmp_path / "missing.txt")


def test_data_dir_comes_before_the_cache_and_is_never_used_if_corrupt(
    isolated, monkeypatch
):
    folder = isolated / "data"
    folder.mkdir()
    monkeypatch.setenv("LLMBOOK_DATA_DIR", str(folder))
    (folder / "tiny.txt").write_bytes(CONTENT)
    assert data_file("tiny.txt") == folder / "tiny.txt"
    (folder / "tiny.txt").write_bytes(b"corrupt")
    with pytest.raises(DataFileError, match="does not match the checksum"):
        data_file("tiny.txt")
    assert leftovers(isolated / "cache") == []  # no silent fallback to a download


def test_data_dir_without_the_file_falls_through_to_the_download(isolated, monkeypatch):
    monkeypatch.setenv("LLMBOOK_DATA_DIR", str(isolated / "empty"))
    path = data_file("tiny.txt")
    assert path == isolated / "cache" / "tiny.txt"


def test_download_is_cached_and_verified(isolated):
    path = data_file("tiny.txt")
    assert path.read_bytes() == CONTENT
    assert leftovers(isolated / "cache") == ["tiny.txt"]  # no temporary files
    (isolated / "origin" / "tiny.txt").unlink()
    assert data_file("tiny.txt") == path  # second call: no download needed


def test_corrupt_cache_is_replaced_by_a_fresh_download(isolated):
    cache = isolated / "cache"
    cache.mkdir()
    (cache / "tiny.txt").write_bytes(b"half a fi")
    assert data_file("tiny.txt").read_bytes() == CONTENT


def test_bad_download_is_discarded(isolated):
    (isolated / "origin" / "tiny.txt").write_bytes(b"an error page")
    with pytest.raises(DataFileError, match="it was discarded"):
        data_file("tiny.txt")
    assert leftovers(isolated / "cache") == []


def test_offline_error_names_file_url_and_variable(isolated):
    (isolated / "origin" / "tiny.txt").unlink()
    with pytest.raises(DataFileError) as err:
        data_file("tiny.txt")
    message = str(err.value)
    assert "tiny.txt is not available locally" in message
    assert (isolated / "origin" / "tiny.txt").as_uri() in message
    assert "LLMBOOK_DATA_DIR" in message


def test_interrupted_write_leaves_nothing_behind(isolated, monkeypatch):
    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(data.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        data_file("tiny.txt")
    assert leftovers(isolated / "cache") == []


def test_offline_with_a_corrupt_cached_copy_says_it_is_corrupt(isolated):
    cache = isolated / "cache"
    cache.mkdir()
    (cache / "tiny.txt").write_bytes(b"half a fi")
    (isolated / "origin" / "tiny.txt").unlink()
    with pytest.raises(DataFileError, match="cached copy .*tiny.txt.* is corrupt"):
        data_file("tiny.txt")


def test_member_of_a_zip_archive(isolated, monkeypatch):
    archive = isolated / "origin" / "bundle.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("readme.txt", "not this one")
        zf.writestr("tiny.txt", CONTENT)
    archive.write_bytes(buffer.getvalue())
    sources = dict(data.DATA_SOURCES)
    sources["zipped.txt"] = DataSource(archive.as_uri(), DIGEST, member="tiny.txt")
    sources["absent.txt"] = DataSource(archive.as_uri(), DIGEST, member="nope.txt")
    monkeypatch.setattr(data, "DATA_SOURCES", sources)
    assert data_file("zipped.txt").read_bytes() == CONTENT
    with pytest.raises(DataFileError, match="no readable member 'nope.txt'"):
        data_file("absent.txt")


def test_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMBOOK_CACHE_DIR", str(tmp_path / "c"))
    assert data.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LLMBOOK_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "llmbook"


# -- GPTDataset, create_dataloader, check_token_ids (chapter 4) ----------------------

import itertools  # noqa: E402

import torch  # noqa: E402

from llmbook.data import GPTDataset, check_token_ids, create_dataloader  # noqa: E402


class CharTokenizer:
    """One token per character, id = code point: makes expected pairs easy to write."""

    def encode(self, text, allowed_special=frozenset()):
        return [ord(c) for c in text]


CHARS = CharTokenizer()


def test_pairs_are_shifted_windows():
    dataset = GPTDataset("abcdefg", max_length=3, stride=2, tokenizer=CHARS)
    samples = (dataset[i] for i in range(len(dataset)))
    pairs = [(bytes(x.tolist()), bytes(y.tolist())) for x, y in samples]
    assert pairs == [(b"abc", b"bcd"), (b"cde", b"def")]  # "efg" needs an "h"


def test_samples_are_views_of_one_tensor():
    dataset = GPTDataset("abcdefghij", max_length=4, stride=3, tokenizer=CHARS)
    x, y = dataset[1]
    base = dataset.token_ids
    assert x.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
    assert y.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
    assert x.data_ptr() == base[3:].data_ptr()


def test_sample_count_uses_every_window_that_fits():
    for num_tokens, max_length, stride in itertools.product(
        [5, 6, 17, 100], [1, 4, 5], [1, 2, 3, 7]
    ):
        if num_tokens < max_length + 1:
            continue  # too short: see test_text_too_short_states_the_token_count
        dataset = GPTDataset("x" * num_tokens, max_length, stride, tokenizer=CHARS)
        starts = [i * stride for i in range(len(dataset))]
        assert all(s + max_length + 1 <= num_tokens for s in starts)  # each fits
        assert starts[-1] + stride + max_length + 1 > num_tokens  # no more fits
        for i in range(len(dataset)):
            x, y = dataset[i]
            assert x.shape == y.shape == (max_length,)


def test_index_out_of_range():
    dataset = GPTDataset("abcd", max_length=2, stride=1, tokenizer=CHARS)
    assert len(dataset) == 2
    with pytest.raises(IndexError, match="sample 2 of a dataset of 2 samples"):
        dataset[2]


def test_text_too_short_states_the_token_count():
    with pytest.raises(ValueError, match="the text has 4 tokens.*max_length <= 3"):
        GPTDataset("abcd", max_length=4, stride=1, tokenizer=CHARS)
    with pytest.raises(ValueError, match="the text has 0 tokens"):
        GPTDataset("", max_length=1, stride=1, tokenizer=CHARS)


@pytest.mark.parametrize("max_length, stride", [(0, 1), (4, 0), (-1, 2), (3, -3)])
def test_non_positive_sizes_are_errors(max_length, stride):
    with pytest.raises(ValueError, match="must be a positive integer"):
        GPTDataset("abcdefgh", max_length, stride, tokenizer=CHARS)


def test_loader_batches_and_their_arithmetic():
    text = "".join(chr(65 + i % 26) for i in range(101))  # 101 tokens
    loader = create_dataloader(
        text, batch_size=4, max_length=10, stride=10, shuffle=False, tokenizer=CHARS
    )
    assert isinstance(loader.dataset, GPTDataset)
    assert len(loader.dataset) == 10 and len(loader) == 2  # 10 samples, last 2 dropped
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 10), (4, 10)]
    assert torch.equal(batches[1][0][0], loader.dataset[4][0])
    kept = create_dataloader(
        text, 4, 10, 10, shuffle=False, drop_last=False, tokenizer=CHARS
    )
    assert [len(x) for x, _ in kept] == [4, 4, 2]


def test_a_split_too_small_for_one_batch_is_an_error():
    with pytest.raises(ValueError, match="make 2 sample.*fewer than one batch of 3"):
        create_dataloader("abcdefg", 3, max_length=3, stride=2, tokenizer=CHARS)
    loader = create_dataloader(
        "abcdefg", 3, max_length=3, stride=2, drop_last=False, tokenizer=CHARS
    )
    assert len(loader) == 1
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        create_dataloader("abcdefg", 0, max_length=3, stride=2, tokenizer=CHARS)


def test_shuffle_is_deterministic_with_a_seed():
    text = "".join(chr(65 + i % 26) for i in range(200))

    def order(seed):
        loader = create_dataloader(text, 5, 3, 3, seed=seed, tokenizer=CHARS)
        return [x[:, 0].tolist() for x, _ in loader]

    assert order(1) == order(1)
    assert order(1) != order(2)
    unshuffled = create_dataloader(text, 5, 3, 3, shuffle=False, tokenizer=CHARS)
    first = next(iter(unshuffled))[0][:, 0].tolist()
    assert first == [ord(text[i]) for i in range(0, 15, 3)]


def test_default_tokenizer_is_gpt2_with_end_of_text():
    dataset = GPTDataset("Hello<|endoftext|>world", max_length=2, stride=1)
    # tiktoken's GPT-2 ids: 'Hello', <|endoftext|>, 'world'
    assert dataset.token_ids.tolist() == [15496, 50256, 6894]


def test_check_token_ids_names_the_offender():
    check_token_ids(torch.tensor([0, 4, 2]), vocab_size=5)  # fine: no exception
    with pytest.raises(ValueError, match=r"token id 5 at index \(1,\).*ids 0 to 4"):
        check_token_ids(torch.tensor([0, 5, 7]), vocab_size=5)
    with pytest.raises(ValueError, match=r"token id -1 at index \(0, 1\)"):
        check_token_ids(torch.tensor([[3, -1]]), vocab_size=5)


@pytest.mark.parametrize("size", [4.5, 4.0, "4", True, None])
def test_sizes_that_are_not_integers_are_named(size):
    with pytest.raises(
        TypeError, match=f"max_length must be a positive integer, got {size!r}"
    ):
        GPTDataset("abcdefgh", size, 1, tokenizer=CHARS)
    with pytest.raises(
        TypeError, match=f"stride must be a positive integer, got {size!r}"
    ):
        GPTDataset("abcdefgh", 2, size, tokenizer=CHARS)
    with pytest.raises(TypeError, match="batch_size must be a positive integer"):
        create_dataloader("abcdefgh", batch_size=size, max_length=2, tokenizer=CHARS)


def test_numpy_integers_are_sizes_too():
    np = pytest.importorskip("numpy")
    dataset = GPTDataset("abcdefgh", np.int64(3), np.int32(2), tokenizer=CHARS)
    assert len(dataset) == 3


def test_loader_takes_the_word_tokenizer_of_chapter_2():
    from llmbook.tokenizer import END_OF_TEXT, UNKNOWN, SimpleTokenizerV2, build_vocab

    text = "the cat sat. <|endoftext|> the dog sat."
    tokenizer = SimpleTokenizerV2(build_vocab(text, [END_OF_TEXT, UNKNOWN]))
    loader = create_dataloader(
        text, batch_size=2, max_length=3, stride=3, shuffle=False, tokenizer=tokenizer
    )
    x, y = next(iter(loader))
    assert tokenizer.decode(x[0].tolist()) == "the cat sat"
    assert tokenizer.decode(x[1].tolist()) == ". <|endoftext|> the"
