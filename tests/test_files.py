"""llmbook.files: writes that leave a file whole or untouched, checksums, JSON."""

import hashlib
import json
import os

import pytest

from llmbook import files
from llmbook.files import file_sha256, save_json


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_file_sha256_is_the_checksum_of_the_bytes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * (3 << 20))  # more than one read of 1 MiB
    assert file_sha256(path) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()


def test_atomic_write_replaces_whole_files_and_cleans_up(tmp_path):
    target = tmp_path / "out.bin"
    files.atomic_write(target, lambda tmp: tmp.write_bytes(b"first"))
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600
    with pytest.raises(RuntimeError, match="disk full"):

        def fail(tmp):
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")

        files.atomic_write(target, fail)
    assert target.read_bytes() == b"first"  # the old file is intact
    assert leftovers(tmp_path) == ["out.bin"]  # and no temporary file is left


def test_atomic_write_names_the_problem_with_a_path(tmp_path, monkeypatch):
    def write(tmp):
        tmp.write_bytes(b"x")

    with pytest.raises(IsADirectoryError, match="it is a folder"):
        files.atomic_write(tmp_path, write)
    with pytest.raises(FileNotFoundError, match="the folder .*nowhere does not exist"):
        files.atomic_write(tmp_path / "nowhere" / "f.bin", write)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files.os, "open", refuse)
    with pytest.raises(PermissionError, match="no permission to create files in"):
        files.atomic_write(tmp_path / "f.bin", write)
    monkeypatch.undo()

    def fill(tmp):  # what a write to a full disk raises: no file name in it
        tmp.write_bytes(b"part")
        raise OSError(28, "No space left on device")

    full = r"\[Errno 28\] cannot write .*f.bin \(No space left on device\)"
    with pytest.raises(OSError, match=full):
        files.atomic_write(tmp_path / "f.bin", fill)
    assert not list(tmp_path.iterdir())  # and no part of the file is left


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere"
)
def test_atomic_write_in_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="no permission"):
            files.atomic_write(folder / "f.bin", lambda tmp: tmp.write_bytes(b"x"))
    finally:
        folder.chmod(0o700)


def test_save_json_is_atomic_and_round_trips(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    save_json([{"a": "é"}], path)
    assert json.loads(path.read_text(encoding="utf-8")) == [{"a": "é"}]
    with pytest.raises(TypeError):
        save_json([{"a": object()}], path)  # cannot be written as JSON
    assert json.loads(path.read_text(encoding="utf-8")) == [{"a": "é"}]
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
