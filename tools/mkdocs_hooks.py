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

GPU_TITLE = "Needs a CUDA GPU (skipped on CPU)"
CONTINUED = "Continues the code above, in the same session"

# What pymdownx.arithmatex (generic mode) leaves of a formula in the page's HTML.
MATH = re.compile(
    r'<span class="arithmatex">\\\((?P<inline>.*?)\\\)</span>(?P<after>[.,;:!?)]*)'
    r'|<div class="arithmatex">\\\[(?P<display>.*?)\\\]</div>',
    re.S,
)

ROOT = Path(__file__).resolve().parent.parent


def _tools() -> ModuleType:
    """This folder as the package `tools`. MkDocs loads this file by its path, and
    the repository's root is on sys.path only when MkDocs was started from it with
    `python -m mkdocs`; otherwise the package is loaded from its folder."""
    here = Path(__file__).resolve().parent
    try:
        package = importlib.import_module("tools")
        if Path(package.__file__ or "").resolve().parent == here:
            return package
    except ModuleNotFoundError:
        pass
    spec = importlib.util.spec_from_file_location(
        "tools", here / "__init__.py", submodule_search_locations=[str(here)]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules["tools"] = package
    spec.loader.exec_module(package)
    return package


def _neighbour(name: str) -> ModuleType:
    """tools/NAME.py, as the module `tools.NAME`."""
    _tools()
    return importlib.import_module(f"tools.{name}")


conventions = _neighbour("conventions")
figures = _neighbour("figures")
notebooks = _neighbour("notebooks")


def _title_of(block) -> tuple[str, str] | None:
    """A fence's title and CSS class, by its markers: the library file a block is
    tangled into, "Output", a GPU cell's note, or that it continues the code above."""
    target = block.marker("tangle")
    if target is not None:
        return target, ""
    if block.is_output:
        return "Output", "output"
    if block.needs_gpu:
        return GPU_TITLE, ""
    if block.marked("pytest-codeblocks:cont"):
        return CONTINUED, ""
    return None


def titled_fences(markdown: str) -> str:
    """The page with each marked fence titled (superfences shows the title above
    the code) and its markers, which have done their work, taken out."""
    lines = markdown.split("\n")
    for block in reversed(conventions.blocks(markdown)):
        titled = _title_of(block)
        if titled is None:
            continue
        title, css_class = titled
        info = block.info.strip() or "text"
        opening = block.indent + block.ticks
        if css_class:  # superfences' attribute form: {.lang .class title="..."}
            fence = f'{opening}{{.{info} .{css_class} title="{title}"}}'
        else:
            fence = f'{opening}{info} title="{title}"'
        lines[block.markers[0].line - 1 : block.line] = [fence]
    return "\n".join(lines)


def notebook_links(markdown: str, page_path: str) -> str:
    """The page with a line under its heading that offers the page's notebook."""
    name = Path(page_path).stem + ".ipynb"
    if not (ROOT / notebooks.OUT_DIR / name).is_file():
        return markdown
    what = "them" if name == notebooks.EXERCISES else "this chapter"
    links = (
        f"[:material-download: Download {what} as a notebook]"
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


# Search: a word is best found where it is taught. The pages that gather or repeat
# what the chapters teach (the exercises, the notebooks, the command line) rank after
# the chapters that teach it (the theme multiplies a page's score by its boost).
EXERCISES_PAGE = "exercises.md"  # made by exercises_page(), below
SEARCH_BOOSTS = {
    "02-tokenization.md": 5.0,  # where tokenizer.py begins, before chapter 10 grows it
    EXERCISES_PAGE: 0.2,
    "notebooks.md": 0.2,
    "using-the-library.md": 0.5,
    "references.md": 0.5,
}


def on_page_markdown(markdown: str, page=None, **kwargs) -> str:
    if page is not None:
        markdown = notebook_links(markdown, page.file.src_uri)
        boost = SEARCH_BOOSTS.get(page.file.src_uri)
        if boost is not None:
            page.meta.setdefault("search", {})["boost"] = boost
    table = re.compile(r"^<!--\s*notebook-table\s*-->$", re.M)
    markdown = table.sub(lambda m: notebook_table(), markdown)
    return titled_fences(markdown)


def mathml(tex: str, display: bool = False) -> str:
    """One TeX formula as MathML, with the TeX kept in `alttext` for copying."""
    from latex2mathml.converter import convert

    try:
        markup = convert(tex, display="block" if display else "inline")
    except Exception as error:  # a formula the converter cannot read fails the build
        message = f"cannot turn the formula {tex!r} into MathML: {error}"
        raise ValueError(message) from None
    alt = html.escape(tex, quote=True)
    markup = THOUSANDS.sub(lambda m: m[0].replace(m["comma"], ","), markup)
    markup = re.sub(r"</mn>,<mn>", ",", markup)  # 50{,}257: one number, 50,257
    return markup.replace("<math ", f'<math alttext="{alt}" ', 1)


# A thousands separator written `{,}` in TeX, which the converter makes a comma
# operator between two numbers, spaced like a list: "50, 257".
THOUSANDS = re.compile(
    r"</mn>(?P<comma><mrow><mo>&#x0002C;</mo></mrow>)(?=<mn>\d{3}</mn>)"
)


# The drawn width of each figure in CSS pixels, by its path in the site (on_files).
FIGURE_WIDTHS: dict[str, float] = {}
FIGURE_IMG = re.compile(
    r'<img (?P<attrs>[^>]*?)src="(?P<src>[^"]*?(?P<path>figures/[^"/]+\.svg))"'
    r"[^>]*>"
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
        if match["display"] is not None:  # in a box that scrolls on a narrow screen
            block = mathml(html.unescape(match["display"]).strip(), display=True)
            return f'<div class="math-display">{block}</div>'
        formula = mathml(html.unescape(match["inline"]).strip())
        if not match["after"]:
            return formula
        # The punctuation after a formula stays on its line (issue 39).
        return f'<span class="nowrap">{formula}{match["after"]}</span>'

    def sized(match: re.Match) -> str:
        """The figure with its drawn width, for the phone CSS, in a link to itself:
        a tap on a phone opens it whole, to zoom into (issue 39)."""
        image, width = match[0], FIGURE_WIDTHS.get(match["path"])
        if width is not None:
            image = f'<img style="--figure-width: {width:.0f}px" {image[5:]}'
        link = f'<a class="figure-zoom" href="{match["src"]}" title="The figure alone">'
        return f"{link}{image}</a>"

    content = FIRST_LINE.sub(clear_of_the_copy_button, content)
    return FIGURE_IMG.sub(sized, MATH.sub(replace, content))


# A code block's first line, up to the line's end or the block's.
FIRST_LINE = re.compile(
    r"<pre>(?P<code>(?:<span></span>)?<code[^>]*>(?P<line>.*?))(?=\n|</code>)"
)
# The copy button sits in the top right corner of a block, over the last few of the
# 80-odd characters that fit on a desktop's line: a first line this long starts
# below it (on a phone every first line does, see extra.css).
COVERED_AFTER = 74


def clear_of_the_copy_button(match: re.Match) -> str:
    text = html.unescape(re.sub(r"<[^>]+>", "", match["line"]))
    if len(text) < COVERED_AFTER:
        return match[0]
    return f'<pre class="long-first-line">{match["code"]}'


def exercises_page() -> str:
    """The Markdown of the site's page of all exercises, made at build time from the
    chapters' Exercises sections: the same text, its solutions folded as they are in
    the chapters, and links within the site. (The notebook of them is a download.)"""
    parts = [
        "# Exercises\n",
        "The exercises of every chapter on one page, each with the solution that the "
        "book's tests check, folded: try first. Each builds on its chapter's library "
        "code; a few read files that a chapter writes, as their text says. The same "
        "exercises are a notebook, to download or to open in Colab (above).\n",
    ]
    for page in notebooks.chapter_pages():
        markdown = page.read_text(encoding="utf-8")
        section = notebooks.exercises_section(markdown)
        if section is None:
            continue
        title = notebooks._title(markdown)
        parts.append(f"## {title}\n\nFrom [{title}]({page.name}).\n{section}")
    return "\n".join(parts)


def on_files(files: Files, config, **kwargs) -> Files:
    files.append(File.generated(config, EXERCISES_PAGE, content=exercises_page()))
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
