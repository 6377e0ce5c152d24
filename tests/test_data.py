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
