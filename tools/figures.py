"""The book's figures: drawn by the code on its pages, kept in docs/figures/.

A ```python fence under `<!--figure: figures/NAME.svg-->` draws `docs/figures/NAME.svg`:
the matplotlib figure that the block leaves in the variable `fig`. Like src/, the
drawn files are committed, each stamped with a key over the code that drew it (and
the sources of the library modules that code uses, less the comments and docstrings,
which draw nothing), so building the site runs
no figure code: a fresh clone builds in seconds although the training plots of
chapters 7-9 take minutes to draw.

    python tools/figures.py            draw every figure whose code changed
    python tools/figures.py --check    exit 1 and name each figure out of date

The snippet tests run every figure block too (pytest-codeblocks) and leave what it drew
in a cache (.cache/figures, see conftest.py); this command takes a figure from there
before it draws one. A site build that meets a figure out of date draws it (or takes
it from the cache) and says so; the check makes the tests fail until it is committed.
A page's figure blocks run in order in a scratch folder, so a block may read a file
that an earlier one wrote (a trained model, say) and nothing lands in the repository.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import hashlib
import io
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

try:
    from tools import conventions, numerics
except ImportError:  # run as a script, `python tools/figures.py`: tools/ is on the path
    import conventions  # type: ignore[no-redef, import-not-found]
    import numerics  # type: ignore[no-redef, import-not-found]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Drawn figures, by key: the snippet tests leave theirs here (see conftest.py).
FIGURE_CACHE = Path(os.environ.get("LLMBOOK_FIGURE_CACHE", ROOT / ".cache" / "figures"))
# The line that a committed figure carries after its XML declaration.
STAMP = re.compile(rb"<!-- llmbook figure key: (?P<key>[0-9a-f]+) -->")


class FigureBlock(NamedTuple):
    path: str  # the figure's path in the site, e.g. "figures/temperature.svg"
    code: str
    line: int  # the line of the block's opening fence in the page
    key: str  # what the picture depends on: see page_figures


LIBRARY = ROOT / "src" / "llmbook"
USES = re.compile(r"^\s*(?:from|import)\s+llmbook\.(\w+)", re.M)


@functools.lru_cache(maxsize=64)
def _page_figures(markdown: str, library: str) -> tuple[FigureBlock, ...]:
    return tuple(_figures_of(markdown))


def page_figures(markdown: str) -> list[FigureBlock]:
    """The figure blocks of a page, in order: see `_figures_of`. Pages and library
    modules are parsed once per process (the snippet tests ask for every block)."""
    library = f"{LIBRARY}:" + "".join(  # changes when a module does
        f"{path.name}:{path.stat().st_mtime_ns}:{path.stat().st_size};"
        for path in sorted(LIBRARY.glob("*.py"))
    )
    return list(_page_figures(markdown, library))


def _figures_of(markdown: str) -> list[FigureBlock]:
    """The figure blocks of a page, in order. A figure block may use files that the
    page's earlier figure blocks wrote, so each key covers the code of those blocks
    too, and the sources of the library's modules that they import."""
    digest = hashlib.sha256()
    modules: set[str] = set()
    blocks = []
    for block in conventions.blocks(markdown):
        path = block.marker("figure")
        if path is None or block.language != "python" or block.end is None:
            continue
        modules |= set(USES.findall(block.code))
        digest.update(f"\0{path}\0{code_shape(block.code)}".encode())
        key = digest.copy()
        if modules:
            key.update(_library_fingerprint(modules).encode())
        blocks.append(FigureBlock(path, block.code, block.line, key.hexdigest()[:20]))
    return blocks


def _library_fingerprint(modules: set[str]) -> str:
    """The sources of the library's `modules` and of the library modules they
    import, and so on: what a figure drawn with those modules depends on."""
    seen: set[str] = set()
    todo = sorted(modules)
    while todo:
        name = todo.pop()
        path = LIBRARY / f"{name}.py"
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        todo += USES.findall(path.read_text(encoding="utf-8"))
    digest = hashlib.sha256()
    for name in sorted(seen):
        source = (LIBRARY / f"{name}.py").read_text(encoding="utf-8")
        digest.update(f"{name}\0{code_shape(source)}".encode())
    return digest.hexdigest()


DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@functools.lru_cache(maxsize=256)
def code_shape(source: str) -> str:
    """What `source` does, without what only explains it: its syntax tree with the
    docstrings left out. Comments, blank lines and formatting are not in the tree,
    so editing them changes no figure's key. Code that does not parse counts as it
    is written."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, DOCUMENTED) and body:
            first = body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False)


# --- the cache that the snippet tests fill ----------------------------------------


def _cache_file(figure: str, key: str) -> Path:
    """The cached SVG of one version of a figure: FIGURE_CACHE/<figure>/<key>.svg."""
    return FIGURE_CACHE / figure.removesuffix(".svg") / f"{key}.svg"


def cached_figure(figure: str, key: str) -> bytes | None:
    path = _cache_file(figure, key)
    return path.read_bytes() if path.is_file() else None


def store_figure(figure: str, key: str, fig) -> bytes:
    """Save `fig` as SVG (the same bytes wherever the same picture is drawn), keep
    it in the cache under `key`, drop this figure's older versions, return the SVG."""
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "llmbook", "svg.fonttype": "path"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buffer.getvalue()
    path = _cache_file(figure, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob("*.svg"):  # versions drawn from other code
        old.unlink(missing_ok=True)
    _write(path, svg)
    return svg


def _write(path: Path, data: bytes) -> None:
    """Write a file whole or not at all."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _draw(code: str, where: str):
    """Run a figure block in a fresh namespace and return the Figure it leaves in
    `fig` (what it prints is checked by the tests, not echoed here)."""
    import matplotlib

    matplotlib.use("Agg")
    namespace: dict = {"__name__": "__figure__"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, where, "exec"), namespace)
    fig = namespace.get("fig")
    if fig is None or not hasattr(fig, "savefig"):
        raise RuntimeError(
            f"{where}: a figure block must leave a matplotlib Figure in `fig`"
        )
    return fig


def draw_page_figures(markdown: str, page: str) -> dict[str, bytes]:
    """The SVG of every figure block of a page, from the cache where the tests (or
    an earlier run) drew it with the same code. Otherwise all the page's figure
    blocks run in order, in a scratch folder: files they write stay out of the
    repository and reach later blocks."""
    blocks = page_figures(markdown)
    cached = {block.path: cached_figure(block.path, block.key) for block in blocks}
    if all(svg is not None for svg in cached.values()):
        return {path: svg for path, svg in cached.items() if svg is not None}
    # The figures of training runs are those of the pinned tests, on any CPU, when
    # this process has not multiplied matrices yet (see numerics.py).
    numerics.pin()
    import matplotlib.pyplot as plt

    drawn = {}
    scratch = tempfile.TemporaryDirectory(prefix="llmbook-figures-")
    with scratch, contextlib.chdir(scratch.name):
        for block in blocks:
            before = set(plt.get_fignums())
            try:
                fig = _draw(block.code, f"{page} (figure {block.path})")
                drawn[block.path] = store_figure(block.path, block.key, fig)
            except FileNotFoundError as missing:
                raise FileNotFoundError(
                    f"{page}: the code of {block.path} reads {missing.filename}, which "
                    "another page writes; run both pages' snippets with pytest (in "
                    "order), which draws the figure into the cache, then try again"
                ) from missing
            finally:
                for number in set(plt.get_fignums()) - before:
                    plt.close(number)
    return drawn


# --- the committed figures ----------------------------------------------------------


def stamped(svg: bytes, key: str) -> bytes:
    """The SVG with the key of the code that drew it, after its XML declaration."""
    line = f"<!-- llmbook figure key: {key} -->\n".encode()
    head, newline, rest = svg.partition(b"\n")
    if not head.startswith(b"<?xml"):
        return line + svg
    return head + newline + line + rest


def committed_key(path: Path) -> str | None:
    """The key stamped on a committed figure; None if it is missing or unstamped."""
    if not path.is_file():
        return None
    with path.open("rb") as f:
        match = STAMP.search(f.read(4096))
    return match["key"].decode() if match else None


def figure_pages(docs: Path = DOCS) -> dict[Path, list[FigureBlock]]:
    """Every page of the book that has figure blocks, with its blocks."""
    pages = {}
    for page in sorted(docs.rglob("*.md")):
        blocks = page_figures(page.read_text(encoding="utf-8"))
        if blocks:
            pages[page] = blocks
    return pages


def out_of_date(page: Path, blocks: list[FigureBlock]) -> list[FigureBlock]:
    """The blocks of a page whose committed figure is missing or was drawn by
    other code."""
    folder = page.parent
    return [b for b in blocks if committed_key(folder / b.path) != b.key]


def problems(docs: Path = DOCS) -> list[str]:
    """What differs between the committed figures and the pages' figure code."""
    found = []
    wanted = set()
    for page, blocks in figure_pages(docs).items():
        wanted |= {(page.parent / b.path).resolve() for b in blocks}
        for block in out_of_date(page, blocks):
            where = f"{page.relative_to(docs.parent)}:{block.line}"
            state = "missing" if not (page.parent / block.path).is_file() else "stale"
            found.append(f"{block.path} ({where}): {state}")
    for svg in sorted((docs / "figures").glob("*.svg")):
        if svg.resolve() not in wanted:
            name = svg.relative_to(docs.parent)
            found.append(f"{name}: drawn by no figure block (delete it)")
    return found


def update(docs: Path = DOCS) -> list[str]:
    """Draw (or take from the cache) every figure that is out of date, write it
    stamped, delete figures that no block draws; return what changed."""
    changed = []
    wanted = set()
    for page, blocks in figure_pages(docs).items():
        wanted |= {(page.parent / b.path).resolve() for b in blocks}
        stale = out_of_date(page, blocks)
        if not stale:
            continue
        svgs = draw_page_figures(page.read_text(encoding="utf-8"), page.name)
        for block in stale:
            target = page.parent / block.path
            target.parent.mkdir(parents=True, exist_ok=True)
            _write(target, stamped(svgs[block.path], block.key))
            changed.append(f"wrote {target.relative_to(docs.parent)}")
    for svg in sorted((docs / "figures").glob("*.svg")):
        if svg.resolve() not in wanted:
            svg.unlink()
            changed.append(f"deleted {svg.relative_to(docs.parent)}")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="report figures out of date; draw none"
    )
    args = parser.parse_args(argv)
    if args.check:
        found = problems()
        for line in found:
            print(f"figure out of date: {line}", file=sys.stderr)
        if found:
            print("run: python tools/figures.py", file=sys.stderr)
            return 1
        print("figure check: docs/figures/ matches the chapters' figure code")
        return 0
    for line in update():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
