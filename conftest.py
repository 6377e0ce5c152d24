"""Test-session hooks for the whole repository (the unit tests have tests/conftest.py).

The snippet run of the chapters (pytest-codeblocks) executes every figure block of the
book, which for chapters 7-9 means training a model. The figure such a block draws is
saved into the figure cache, under the key that tools/figures.py computes from the
same code (and library), where `python tools/figures.py` finds it instead of
training again when a figure's code has changed.
"""

import os
import time
from pathlib import Path

import pytest

from tools import numerics  # the repository's root is on sys.path: this file is in it

# Chapters 8 and 9 and appendix E print the accuracies of training runs that a CPU
# which sums in another order would end elsewhere, so they run with Intel's math
# library and PyTorch's kernels pinned to code that sums alike on every x86-64 CPU
# (tools/numerics.py), at twice the cost of a matrix product. The other pages print
# nothing that the last bits of a float reach.
# One process pins itself, before anything imports PyTorch: the only one, or worker
# gw0 of a `pytest -n` run, which takes these pages (PinnedPagesScheduling below);
# the other workers run at full speed.
PINNED_PAGES = {
    "08-finetuning-classification.md",
    "09-finetuning-instructions.md",
    "appendix-e-lora.md",
}
PINNED_WORKER = "gw0"
if os.environ.get("PYTEST_XDIST_WORKER", PINNED_WORKER) == PINNED_WORKER:
    numerics.pin()
else:
    numerics.unpin()

from tools import figures  # noqa: E402


def pytest_report_header(config: pytest.Config) -> list[str]:
    off = numerics.pinned()
    if not off:
        return ["numerics: pinned as on the pages (tools/numerics.py)"]
    return [f"numerics: not as on the pages, {line}" for line in off]


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadfile`, but the pinned pages go to the pinned worker alone, first."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling  # type: ignore[import-untyped]

    class PinnedPagesScheduling(LoadFileScheduling):
        def _assign_work_unit(self, node) -> None:
            pinned = [s for s in self.workqueue if Path(s).name in PINNED_PAGES]
            if node.gateway.id == PINNED_WORKER:
                scope = (pinned or list(self.workqueue))[0]
            else:
                free = [s for s in self.workqueue if s not in pinned]
                if not free:
                    return  # this worker idles; the pinned one ends the run
                scope = free[0]
            self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)  # takes the first unit of the queue

    return PinnedPagesScheduling(config, log)


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


# Pages that start from files other pages write: appendix D from chapter 7's tokenizer
# and history, appendix E from chapter 8's pretrained model and chapter 9's skill model.
# In one process they run after those pages (they come later in the run's order);
# under `pytest -n` a worker waits for them.
PAGE_NEEDS = {
    "appendix-d-training-loop.md": ["07-pretraining.md"],
    "appendix-f-quantization.md": ["07-pretraining.md"],
    "appendix-e-lora.md": [
        "08-finetuning-classification.md",
        "09-finetuning-instructions.md",
    ],
}
LONGEST_PAGES = ["08-finetuning-classification.md", "09-finetuning-instructions.md"]
# The test modules that take longest, started before the many short ones, which then
# fill the end of the run evenly on every worker.
LONG_MODULES = [
    "test_site.py",  # the site build and the browser tests
    "test_cli.py",
    "test_distributed.py",
    "test_notebooks.py",
    "test_guarded_cells.py",
]
WAIT_FOR_PAGES_S = 1800
PAGES_RUN: pytest.StashKey[set[str]] = pytest.StashKey()


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Order the run for several processes (`pytest -n`, pytest-xdist, with
    `--dist loadfile --no-loadscope-reorder`, which keeps this order), longest work
    first: the two longest pages, which the pinned worker takes first (the other
    workers start on the rest); the other pages; the pages that need the files of
    those two (by then written); the long test modules; the short ones. Each page and
    each test module (each file) runs in order on one worker: a page's snippets read
    the files its earlier snippets write, and a module's fixtures are made once. (The
    site's tests need no snippet to have run first: `tools/figures.py --check` has
    checked the committed figures, and the site build draws any that are out of date
    itself.)"""

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        if item.path.suffix != ".md":
            return 3 if name in LONG_MODULES else 4
        if name in PAGE_NEEDS:
            return 2
        return 0 if name in LONGEST_PAGES else 1

    items.sort(key=rank)  # stable: each page and module keeps its order
    config.stash[PAGES_RUN] = {i.path.name for i in items if i.path.suffix == ".md"}


def _pages_done(config: pytest.Config) -> Path | None:
    """Where the workers of one `pytest -n` run note the pages they have finished;
    None in a run of one process."""
    if not hasattr(config, "workerinput"):
        return None
    factory = config._tmp_path_factory  # type: ignore[attr-defined]
    folder = factory.getbasetemp().parent / "pages-done"  # shared by the workers
    folder.mkdir(exist_ok=True)
    return folder


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.path.name in PINNED_PAGES and not numerics.is_pinned():
        pytest.fail(
            f"{item.path.name} prints the numbers of a pinned run, but this process "
            f"is not pinned: {'; '.join(numerics.pinned())} (see tools/numerics.py)"
        )
    done = _pages_done(item.config)
    needs = PAGE_NEEDS.get(item.path.name, [])
    if done is None or not needs:
        return
    waiting = [p for p in needs if p in item.config.stash.get(PAGES_RUN, set())]
    deadline = time.monotonic() + WAIT_FOR_PAGES_S
    while any(not (done / page).exists() for page in waiting):
        if time.monotonic() > deadline:
            pytest.fail(f"{item.path.name} waited in vain for {', '.join(waiting)}")
        time.sleep(0.5)


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    done = _pages_done(item.config)
    if done is None or item.path.suffix != ".md":
        return
    if nextitem is None or nextitem.path != item.path:  # the page's last snippet
        (done / item.path.name).touch()
