"""MkDocs hooks: show the book's literate markers to the reader, and draw its figures.

- A ```python fence under `<!--tangle: src/llmbook/NAME.py-->` gets the target path as
  its title, so the reader sees which module the code belongs to.
- The fence after `<!--pytest-codeblocks:expected-output-->` is titled "Output".
- A fence under the CUDA skip mark is titled as needing a GPU.
- A ```python fence under `<!--figure: figures/NAME.svg-->` draws that file of the
  site: the matplotlib figure it leaves in the variable `fig`. The same block runs
  under pytest like every other snippet, and the figure that run draws is cached
  (see conftest.py); the build runs the page's figure blocks only when a figure is
  not in the cache, in a scratch folder, so nothing is written into the repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.llmbook")

FENCE = r"(?P<indent>[ \t]*)(?P<fence>`{3,}[^\n`]*)\n"
TANGLE = re.compile(r"^[ \t]*<!--\s*tangle:\s*(?P<path>\S+?)\s*-->\n" + FENCE, re.M)
OUTPUT = re.compile(
    r"^[ \t]*<!--\s*pytest-codeblocks:expected-output(?:-ignore-whitespace)?\s*-->"
    r"\n(?:[ \t]*\n)*" + FENCE,
    re.M,
)
GPU = re.compile(
    r"^[ \t]*<!--\s*pytest\.mark\.skipif\(.*cuda\.is_available\(\).*-->\n" + FENCE, re.M
)
FIGURE = re.compile(
    r"^[ \t]*<!--\s*figure:\s*(?P<path>\S+?)\s*-->\n"
    r"(?P<indent>[ \t]*)(?P<ticks>`{3,})python\n"
    r"(?P<code>.*?)\n(?P=indent)(?P=ticks)\s*$",
    re.M | re.S,
)

ROOT = Path(__file__).resolve().parent.parent
# Drawn figures, by a key over their code and the library: the snippet tests leave
# theirs here (see conftest.py), so building the site does not train models again.
FIGURE_CACHE = Path(os.environ.get("LLMBOOK_FIGURE_CACHE", ROOT / ".cache" / "figures"))


def _titled(match: re.Match, title: str, css_class: str = "") -> str:
    fence = match["fence"].rstrip()
    ticks = len(fence) - len(fence.lstrip("`"))
    info = fence[ticks:].strip() or "text"
    opening = match["indent"] + "`" * ticks
    if css_class:  # superfences' attribute form: {.lang .class title="..."}
        return f'{opening}{{.{info} .{css_class} title="{title}"}}\n'
    return f'{opening}{info} title="{title}"\n'


def on_page_markdown(markdown: str, **kwargs) -> str:
    markdown = TANGLE.sub(lambda m: _titled(m, m["path"]), markdown)
    markdown = OUTPUT.sub(lambda m: _titled(m, "Output", "output"), markdown)
    gpu_title = "Needs a CUDA GPU (skipped on CPU)"
    markdown = GPU.sub(lambda m: _titled(m, gpu_title), markdown)
    return markdown


class FigureBlock(NamedTuple):
    path: str  # the figure's path in the site, e.g. "figures/temperature.svg"
    code: str
    line: int  # the line of the block's opening fence in the page
    key: str  # the cache key: see page_figures


def page_figures(markdown: str) -> list[FigureBlock]:
    """The figure blocks of a page, in order. A figure block may use files that the
    page's earlier figure blocks wrote, so each cache key covers the code of those
    blocks too, as well as the library's sources and PyTorch's version."""
    digest = hashlib.sha256(_library_fingerprint().encode())
    blocks = []
    for match in FIGURE.finditer(markdown):
        indent = match["indent"]
        code = "\n".join(
            line[len(indent) :] if line.startswith(indent) else line
            for line in match["code"].split("\n")
        )
        digest.update(f"\0{match['path']}\0{code}".encode())
        fence_line = markdown.count("\n", 0, match.start("indent")) + 1
        key = digest.hexdigest()[:20]
        blocks.append(FigureBlock(match["path"], code, fence_line, key))
    return blocks


def _library_fingerprint() -> str:
    """What a figure's picture depends on besides its code: the library's sources
    and the versions of PyTorch and matplotlib."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "src" / "llmbook").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for package in ["torch", "matplotlib"]:
        try:
            digest.update(f"{package}={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{package}=none".encode())
    return digest.hexdigest()


def _cache_file(figure: str, key: str) -> Path:
    """The cached SVG of one version of a figure: FIGURE_CACHE/<figure>/<key>.svg."""
    return FIGURE_CACHE / figure.removesuffix(".svg") / f"{key}.svg"


def cached_figure(figure: str, key: str) -> bytes | None:
    path = _cache_file(figure, key)
    return path.read_bytes() if path.is_file() else None


def store_figure(figure: str, key: str, fig) -> bytes:
    """Save `fig` as SVG (the same bytes wherever it is drawn), keep it in the
    cache under `key`, drop this figure's older versions, and return the SVG."""
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "llmbook", "svg.fonttype": "path"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buffer.getvalue()
    path = _cache_file(figure, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob("*.svg"):  # versions drawn from other code
        old.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(svg)
    os.replace(tmp, path)
    return svg


def _draw(code: str, where: str):
    """Run a figure block in a fresh namespace and return the Figure it leaves in
    `fig` (what it prints is checked by the tests, not echoed by the build)."""
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
    an earlier build) drew it with the same code and library. Otherwise all the
    page's figure blocks run in order, in a scratch folder: files they write (a
    trained model, say) stay out of the repository and reach later blocks."""
    blocks = page_figures(markdown)
    cached = {block.path: cached_figure(block.path, block.key) for block in blocks}
    if all(svg is not None for svg in cached.values()):
        return {path: svg for path, svg in cached.items() if svg is not None}
    import matplotlib.pyplot as plt

    drawn = {}
    scratch = tempfile.TemporaryDirectory(prefix="llmbook-figures-")
    with scratch, contextlib.chdir(scratch.name):
        for block in blocks:
            before = set(plt.get_fignums())
            try:
                fig = _draw(block.code, f"{page} (figure {block.path})")
                drawn[block.path] = store_figure(block.path, block.key, fig)
                log.debug("drew %s", block.path)
            finally:
                for number in set(plt.get_fignums()) - before:
                    plt.close(number)
    return drawn


def on_files(files: Files, config, **kwargs) -> Files:
    for page in list(files.documentation_pages()):
        text = page.content_string
        if not FIGURE.search(text):
            continue
        for src_uri, svg in draw_page_figures(text, page.src_uri).items():
            if files.get_file_from_path(src_uri) is None:
                files.append(File.generated(config, src_uri, content=svg))
    return files
