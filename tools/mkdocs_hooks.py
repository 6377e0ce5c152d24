"""MkDocs hooks: show the book's literate markers to the reader, and draw its figures.

- A ```python fence under `<!--tangle: src/llmbook/NAME.py-->` gets the target path as
  its title, so the reader sees which module the code belongs to.
- The fence after `<!--pytest-codeblocks:expected-output-->` is titled "Output".
- A fence under the CUDA skip mark is titled as needing a GPU, and one that continues
  the block before it (`pytest-codeblocks:cont`) says so.
- A chapter with a notebook (docs/notebooks/, made by tools/notebooks.py) links to it
  under its heading: a download, and the same file opened in Colab. The line
  `<!--notebook-table-->` becomes a table of all the notebooks.
- Formulas (`$...$` and `$$...$$`, which pymdownx.arithmatex keeps away from Markdown)
  become MathML when the site is built, so pages show them with no script and no
  network: every current browser draws MathML itself.
- A figure's image, `figures/NAME.svg`, is drawn by the ```python block under
  `<!--figure: figures/NAME.svg-->` and committed (see tools/figures.py). One whose
  code changed since is drawn again for the build, which says so.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import logging
import re
import sys
from pathlib import Path
from types import ModuleType

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.llmbook")

FENCE = r"(?P<indent>[ \t]*)(?P<fence>`{3,}[^\n`]*)\n"
TANGLE = re.compile(r"^[ \t]*<!--\s*tangle:\s*(?P<path>\S+?)\s*-->\n" + FENCE, re.M)
OUTPUT = re.compile(
    r"^[ \t]*<!--\s*pytest-codeblocks:expected-output(?:-ignore-whitespace)?\s*-->"
    r"\n(?:[ \t]*\n)*" + FENCE,
    re.M,
)
CONT = re.compile(r"^[ \t]*<!--\s*pytest-codeblocks:cont\s*-->\n" + FENCE, re.M)
GPU = re.compile(
    r"^[ \t]*<!--\s*pytest\.mark\.skipif\(.*cuda\.is_available\(\).*-->\n" + FENCE, re.M
)

# What pymdownx.arithmatex (generic mode) leaves of a formula in the page's HTML.
MATH = re.compile(
    r'<span class="arithmatex">\\\((?P<inline>.*?)\\\)</span>'
    r'|<div class="arithmatex">\\\[(?P<display>.*?)\\\]</div>',
    re.S,
)

ROOT = Path(__file__).resolve().parent.parent


def _neighbour(name: str) -> ModuleType:
    """tools/NAME.py as the module `tools.NAME`. MkDocs loads this file by its path,
    and the repository's root is on sys.path only when MkDocs was started from it
    with `python -m mkdocs`; otherwise the module is loaded from its file."""
    try:
        return importlib.import_module(f"tools.{name}")
    except ModuleNotFoundError:
        pass
    spec = importlib.util.spec_from_file_location(
        f"tools.{name}", Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


figures = _neighbour("figures")
notebooks = _neighbour("notebooks")


def _titled(match: re.Match, title: str, css_class: str = "") -> str:
    fence = match["fence"].rstrip()
    ticks = len(fence) - len(fence.lstrip("`"))
    info = fence[ticks:].strip() or "text"
    opening = match["indent"] + "`" * ticks
    if css_class:  # superfences' attribute form: {.lang .class title="..."}
        return f'{opening}{{.{info} .{css_class} title="{title}"}}\n'
    return f'{opening}{info} title="{title}"\n'


def notebook_links(markdown: str, page_path: str) -> str:
    """The page with a line under its heading that offers the page's notebook."""
    name = Path(page_path).stem + ".ipynb"
    if not (ROOT / notebooks.OUT_DIR / name).is_file():
        return markdown
    links = (
        f"[:material-download: Download this chapter as a notebook]"
        f"(notebooks/{name}){{ download .notebook-link }} "
        f"[:material-google: Open it in Colab]({notebooks.colab_url(name)})"
        "{ .notebook-link }"
    )
    heading = re.search(r"^# .*\n", markdown, re.M)
    if heading is None:
        return markdown
    end = heading.end()
    return f"{markdown[:end]}\n{links}\n{markdown[end:]}"


def notebook_table() -> str:
    """A Markdown table of the chapters' notebooks: title, download, Colab."""
    rows = ["| chapter | notebook | Colab |", "|---|---|---|"]
    for page in notebooks.chapter_pages():
        name = page.stem + ".ipynb"
        if not (ROOT / notebooks.OUT_DIR / name).is_file():
            continue
        title = re.search(r"^# (.+)$", page.read_text(encoding="utf-8"), re.M)
        rows.append(
            f"| [{title[1] if title else page.stem}]({page.name}) "
            f"| [{name}](notebooks/{name}){{ download }} "
            f"| [open in Colab]({notebooks.colab_url(name)}) |"
        )
    return "\n".join(rows)


def on_page_markdown(markdown: str, page=None, **kwargs) -> str:
    if page is not None:
        markdown = notebook_links(markdown, page.file.src_uri)
    table = re.compile(r"^<!--\s*notebook-table\s*-->$", re.M)
    markdown = table.sub(lambda m: notebook_table(), markdown)
    markdown = TANGLE.sub(lambda m: _titled(m, m["path"]), markdown)
    markdown = OUTPUT.sub(lambda m: _titled(m, "Output", "output"), markdown)
    gpu_title = "Needs a CUDA GPU (skipped on CPU)"
    markdown = GPU.sub(lambda m: _titled(m, gpu_title), markdown)
    continued = "Continues the code above, in the same session"
    markdown = CONT.sub(lambda m: _titled(m, continued), markdown)
    return markdown


def mathml(tex: str, display: bool = False) -> str:
    """One TeX formula as MathML, with the TeX kept in `alttext` for copying."""
    from latex2mathml.converter import convert

    try:
        markup = convert(tex, display="block" if display else "inline")
    except Exception as error:  # a formula the converter cannot read fails the build
        message = f"cannot turn the formula {tex!r} into MathML: {error}"
        raise ValueError(message) from None
    alt = html.escape(tex, quote=True)
    return markup.replace("<math ", f'<math alttext="{alt}" ', 1)


# The drawn width of each figure in CSS pixels, by its path in the site (on_files).
FIGURE_WIDTHS: dict[str, float] = {}
FIGURE_IMG = re.compile(
    r'<img (?P<attrs>[^>]*?)src="(?P<src>[^"]*?(?P<path>figures/[^"/]+\.svg))"'
)


def svg_width(svg: bytes) -> float | None:
    """The width of a matplotlib SVG in CSS pixels (it is written in points)."""
    match = re.search(rb'<svg[^>]*?\swidth="(?P<value>[\d.]+)(?P<unit>pt|px)?"', svg)
    if match is None:
        return None
    value = float(match["value"])
    return value * 4 / 3 if match["unit"] == b"pt" else value


def on_page_content(content: str, **kwargs) -> str:
    def replace(match: re.Match) -> str:
        if match["display"] is not None:
            return mathml(html.unescape(match["display"]).strip(), display=True)
        return mathml(html.unescape(match["inline"]).strip())

    def sized(match: re.Match) -> str:  # the figure's drawn width, for the phone CSS
        width = FIGURE_WIDTHS.get(match["path"])
        if width is None:
            return match[0]
        return f'<img style="--figure-width: {width:.0f}px" {match[0][5:]}'

    return FIGURE_IMG.sub(sized, MATH.sub(replace, content))


# What nbconvert (under mkdocs-jupyter) puts on a notebook's page besides the cells: a
# MathJax loader and a Mermaid loader that fetch from CDNs. Math is MathML here instead.
NOTEBOOK_SCRIPTS = re.compile(
    r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->"
    r'|<script type="module">(?:(?!</script>).)*?cdnjs\.cloudflare\.com.*?</script>',
    re.S,
)
# Parts of an HTML page whose text is not prose: formulas are never looked for there.
NOT_PROSE = re.compile(
    r"(<(pre|code|script|style|math|textarea)\b.*?</\2>|<[^>]*>)", re.S | re.I
)
DOLLAR_MATH = re.compile(
    r"\$\$(?P<display>[^$<]+?)\$\$"
    r"|(?<![\\$\w])\$(?P<inline>[^\s$<](?:[^$<]*?[^\s$<\\])?)\$(?![\w$])"
)


def notebook_math(content: str) -> str:
    """A rendered notebook's `$...$` formulas (nbconvert leaves them to MathJax) as
    MathML, outside code, tags and scripts; and no script fetched from a CDN."""
    content = NOTEBOOK_SCRIPTS.sub("", content)

    def formulas(text: str) -> str:
        def replace(match: re.Match) -> str:
            if match["display"] is not None:
                return mathml(html.unescape(match["display"]).strip(), display=True)
            return mathml(html.unescape(match["inline"]))

        return DOLLAR_MATH.sub(replace, text)

    parts = NOT_PROSE.split(content)
    # split() returns text, then the two groups of each match; only text is prose
    out = []
    for index, part in enumerate(parts):
        kind = index % 3
        if kind == 0:
            out.append(formulas(part))
        elif kind == 1:
            out.append(part)
    return "".join(out)


def on_post_page(output: str, page=None, **kwargs) -> str:
    if page is not None and page.file.src_uri.endswith(".ipynb"):
        return notebook_math(output)
    return output


def on_files(files: Files, config, **kwargs) -> Files:
    for page in list(files.documentation_pages()):
        text = page.content_string
        blocks = figures.page_figures(text)
        if not blocks:
            continue
        source = Path(page.abs_src_path or Path(config["docs_dir"]) / page.src_path)
        folder = source.parent
        stale = figures.out_of_date(source, blocks)
        drawn = figures.draw_page_figures(text, page.src_uri) if stale else {}
        for block in blocks:
            src_uri = (Path(page.src_uri).parent / block.path).as_posix()
            if block in stale:
                log.info(
                    "%s: %s is out of date, drawn for this build; "
                    "commit it with: python tools/figures.py",
                    page.src_uri,
                    block.path,
                )
                svg = drawn[block.path]
                old = files.get_file_from_path(src_uri)
                if old is not None:
                    files.remove(old)
                files.append(File.generated(config, src_uri, content=svg))
            else:
                svg = (folder / block.path).read_bytes()
            width = svg_width(svg)
            if width is not None:
                FIGURE_WIDTHS[src_uri] = width
    return files
