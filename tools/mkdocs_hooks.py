"""MkDocs hooks: show the book's literate markers to the reader, and draw its figures.

- A ```python fence under `<!--tangle: src/llmbook/NAME.py-->` gets the target path as
  its title, so the reader sees which module the code belongs to.
- The fence after `<!--pytest-codeblocks:expected-output-->` is titled "Output".
- A fence under the CUDA skip mark is titled as needing a GPU.
- A ```python fence under `<!--figure: figures/NAME.svg-->` is run at build time in a
  fresh namespace; the matplotlib figure it leaves in the variable `fig` is saved as
  that file of the site. The same block runs under pytest like every other snippet.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re

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

_figure_cache: dict[str, bytes] = {}


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


def _draw(code: str, where: str) -> bytes:
    """Run a figure block and return its `fig` as SVG bytes (cached by code)."""
    key = hashlib.sha256(code.encode()).hexdigest()
    if key in _figure_cache:
        return _figure_cache[key]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    namespace: dict = {"__name__": "__figure__"}
    try:  # what the block prints is checked by the tests, not echoed by the build
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, where, "exec"), namespace)
    finally:
        figures = plt.get_fignums()
    fig = namespace.get("fig")
    if fig is None or not hasattr(fig, "savefig"):
        raise RuntimeError(
            f"{where}: a figure block must leave a matplotlib Figure in `fig`"
        )
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "llmbook", "svg.fonttype": "path"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    for number in figures:
        plt.close(number)
    _figure_cache[key] = buffer.getvalue()
    return _figure_cache[key]


def on_files(files: Files, config, **kwargs) -> Files:
    for page in list(files.documentation_pages()):
        text = page.content_string
        for match in FIGURE.finditer(text):
            indent = match["indent"]
            code = "\n".join(
                line[len(indent) :] if line.startswith(indent) else line
                for line in match["code"].split("\n")
            )
            where = f"{page.src_uri} (figure {match['path']})"
            svg = _draw(code, where)
            src_uri = match["path"]
            if files.get_file_from_path(src_uri) is None:
                files.append(File.generated(config, src_uri, content=svg))
                log.debug("drew %s", src_uri)
    return files
