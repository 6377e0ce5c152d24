"""Shared test setup: the dependency-free scripts in tools/ become importable, and
the story that several test modules read is one fixture."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def verdict() -> str:
    """The text of *The Verdict*, the book's small corpus (verified by checksum)."""
    from llmbook.data import data_file

    return data_file("the-verdict.txt").read_text(encoding="utf-8")
