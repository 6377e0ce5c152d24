"""Test-session hooks for the whole repository (the unit tests have tests/conftest.py).

The snippet run of the chapters (pytest-codeblocks) executes every figure block of the
book, which for chapters 7-9 means training a model. The figure such a block draws is
saved into the figure cache, under the key that tools/figures.py computes from the
same code (and library), where `python tools/figures.py` finds it instead of
training again when a figure's code has changed. The site's tests run last.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "tools"))

import figures  # noqa: E402  (tools/ is not a package)

SITE_TESTS = "test_site.py"  # the site build and the browser tests


def _figure_block(item: pytest.Item) -> figures.FigureBlock | None:
    """The figure block that a pytest-codeblocks item runs, if it runs one."""
    block = getattr(item, "obj", None)
    if item.path.suffix != ".md" or block is None or not hasattr(block, "lineno"):
        return None
    for figure in figures.page_figures(item.path.read_text(encoding="utf-8")):
        if figure.line == block.lineno and _lines(figure.code) == _lines(block.code):
            return figure
    return None


def _lines(code: str) -> list[str]:
    # pytest-codeblocks drops the blank lines of a block inside an admonition
    return [line for line in code.splitlines() if line.strip()]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    figure = _figure_block(item)
    if figure is None:
        return (yield)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    try:
        result = yield  # the block runs; a failure raises here and caches nothing
        new = sorted(set(plt.get_fignums()) - before)
        if len(new) == 1:  # the block's `fig`; several would be ambiguous
            figures.store_figure(figure.path, figure.key, plt.figure(new[0]))
        return result
    finally:
        for number in set(plt.get_fignums()) - before:
            plt.close(number)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Build the site after the chapters' snippets, so that it finds their figures."""
    last = [item for item in items if item.path.name == SITE_TESTS]
    items[:] = [item for item in items if item.path.name != SITE_TESTS] + last
