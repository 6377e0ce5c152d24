"""Shared test setup: the story that several test modules read is one fixture."""

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def verdict() -> str:
    """The text of *The Verdict*, the book's small corpus (verified by checksum)."""
    from llmbook.data import data_file

    return data_file("the-verdict.txt").read_text(encoding="utf-8")
