#!/usr/bin/env bash
# The book's two commands, each of which first sets everything up in .venv:
#
#   bash tools/book.sh test    tangle, notebook and figure checks, ruff (lint and
#                              format), mypy, then pytest: unit tests, docstring
#                              examples, every snippet of the book, the notebooks, the
#                              strict site build and the site in Chromium (skipped,
#                              with the reason, without one)
#   bash tools/book.sh serve   build the site and serve it on http://127.0.0.1:8000
#   bash tools/book.sh fix     after editing a chapter: regenerate the library code,
#                              the notebooks and the figures from the chapters (a
#                              stale figure is drawn by running its code), then let
#                              ruff fix and format what it can
#
# Extra arguments go to pytest or to `mkdocs serve`. Environment:
#   PYTHON                  the Python that creates .venv (default: python3, 3.11 or
#                           newer)
#   LLMBOOK_TORCH           the pip requirement for PyTorch (default: torch)
#   LLMBOOK_TORCH_INDEX_URL the package index to take PyTorch from, for example
#                           https://download.pytorch.org/whl/cpu for the CPU build
#   LLMBOOK_INSTALLER       uv (default: uv installs everything but PyTorch, and
#                           pip takes over if it fails) or pip (pip installs all)
#   LLMBOOK_DATA_DIR        a folder holding the data files, for offline machines
#   LLMBOOK_TEST_WORKERS    pytest processes (default: one per core; 1 runs the tests
#                           in one process, in order)
#
# The tests run with one thread per process (OMP_NUM_THREADS=1, inherited by the
# subprocesses that tests start) and one process per core: PyTorch's threads in
# several processes at once would fight over the same cores. Freed memory stays with
# the process that freed it (GLIBC_TUNABLES, below), for the next training step.
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_MKDOCS_2_WARNING=1

install_torch() {
  local index=()
  case "${LLMBOOK_TORCH:-torch}" in
    *" "*)
      echo "error: LLMBOOK_TORCH='$LLMBOOK_TORCH' is not one requirement; give the" \
        "index in LLMBOOK_TORCH_INDEX_URL (for example LLMBOOK_TORCH=torch" \
        "LLMBOOK_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu)" >&2
      return 2
      ;;
  esac
  if [ -n "${LLMBOOK_TORCH_INDEX_URL:-}" ]; then
    index=(--index-url "$LLMBOOK_TORCH_INDEX_URL")
  fi
  # ${LLMBOOK_TORCH} is one requirement ("torch", "torch==2.13.0"): the index URL
  # has its own variable, so that no option hides inside a requirement.
  .venv/bin/python -m pip install --quiet "${index[@]}" "${LLMBOOK_TORCH:-torch}"
}

install_book() {
  # uv installs the hundred-odd packages of the book's tools in seconds where pip
  # takes a minute, so it does the work where it can be had; pip takes over wherever
  # uv cannot (no PyPI, a mirror that only pip is configured for). PyTorch itself
  # comes from pip, above, which reads this machine's pip settings.
  if [ "${LLMBOOK_INSTALLER:-uv}" = uv ]; then
    if { [ -x .venv/bin/uv ] || .venv/bin/python -m pip install --quiet "uv>=0.4"; } \
        && .venv/bin/uv pip install --quiet --python .venv/bin/python -e ".[test]"; then
      return 0
    fi
    echo "warning: uv could not install the tools; pip does it instead" >&2
  fi
  .venv/bin/python -m pip install --quiet -e ".[test]"
}

setup() {
  if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "${PYTHON:-python3}" -m venv .venv
  fi
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "== installing ${LLMBOOK_TORCH:-torch} (once; this is the big download)"
    install_torch
  fi
  echo "== installing llmbook and the tools of the book"
  install_book
  if [ ! -f the-verdict.txt ]; then
    echo "== fetching the-verdict.txt"
    .venv/bin/python -c 'import shutil; from llmbook.data import data_file
shutil.copyfile(data_file("the-verdict.txt"), "the-verdict.txt")'
  fi
}

case "${1:-}" in
  test)
    shift
    setup
    echo "== tangle check"
    .venv/bin/python tools/tangle.py --check
    .venv/bin/python tools/notebooks.py --check
    .venv/bin/python tools/figures.py --check
    echo "== ruff"
    .venv/bin/ruff check src tools tests bench conftest.py
    .venv/bin/ruff format --check src tools tests bench conftest.py
    echo "== mypy"
    .venv/bin/mypy
    echo "== pytest"
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    # glibc hands large freed blocks (a GPT-2-sized embedding's gradient, 13 MB) back
    # to the kernel and page-faults them in again at the next step; keeping up to 1 GiB
    # of them per process saves a tenth of the tests' time and changes no result.
    export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824}"
    workers="${LLMBOOK_TEST_WORKERS:-auto}"
    parallel=()
    if [ "$workers" != 1 ]; then
      parallel=(-n "$workers" --dist loadfile --no-loadscope-reorder)
    fi
    .venv/bin/python -m pytest "${parallel[@]}" --durations=15 "$@"
    ;;
  fix)
    shift
    setup
    echo "== library code, figures and notebooks from the chapters"
    .venv/bin/python tools/tangle.py
    .venv/bin/python tools/figures.py
    .venv/bin/python tools/notebooks.py  # last: the notebooks carry the figures
    echo "== ruff: fixes and formatting"
    .venv/bin/ruff check --fix --quiet src tools tests bench conftest.py
    .venv/bin/ruff format --quiet src tools tests bench conftest.py
    ;;
  serve)
    shift
    setup || echo "warning: setup incomplete; serving the book anyway" >&2
    .venv/bin/mkdocs serve -a 127.0.0.1:8000 "$@"
    ;;
  *)
    echo "usage: bash tools/book.sh test|fix|serve [arguments for pytest or mkdocs serve]" >&2
    exit 2
    ;;
esac
