"""Make a Jupyter notebook of every chapter of the book, and one of all its exercises.

Each chapter in docs/ that has Python snippets becomes docs/notebooks/<chapter>.ipynb:

- the prose becomes Markdown cells, one per section, with links to other pages
  pointing at the published site (the notebook has no site beside it); the figures
  travel inside the notebook: a figure block's cell has the committed figure as its
  output (and ends with plt.show()), and any other figure is a cell attachment;
- each ```python snippet becomes a code cell, and the output the page shows for it
  (checked by the tests) becomes the cell's output, so an unrun notebook reads like
  the page; a chain of `cont` blocks prints into its last cell, as on the page;
- library blocks (the ones under a `tangle` marker) start with a comment naming their
  file in `src/llmbook/`; cells that need a CUDA GPU say so and carry the tag `gpu`;
  figure blocks carry `figure`, exercise solutions `solution` (and start folded), and
  a cell that continues the one before (a `cont` block) `continued`;
- a setup cell after the title installs the `llmbook` package where it is missing
  (Colab, a fresh Jupyter) and fetches the story the chapters read.

docs/notebooks/exercises.ipynb collects the exercises of every chapter (the site's
Exercises page, made by tools/mkdocs_hooks.py, shows the same). The notebooks are
committed, so that Colab can open them
from the repository, and like src/ they must not drift from the chapters:

    python tools/notebooks.py           write docs/notebooks/ from the chapters
    python tools/notebooks.py --check   exit 1 and name each notebook that differs

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:
    from tools import conventions
except ImportError:  # run as a script, `python tools/notebooks.py`: tools/ on the path
    import conventions  # type: ignore[no-redef, import-not-found]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OUT_DIR = "docs/notebooks"
EXERCISES = "exercises.ipynb"

ADMONITION = re.compile(
    r"^(?P<indent>[ \t]*)(?:!!!|\?\?\?\+?)\s+(?P<kind>\w+)"
    r'(?:\s+"(?P<title>[^"]*)")?\s*$'
)
HEADING = re.compile(r"^#{1,6} ")
# A relative link or image in Markdown: ](target) with no scheme.
LINK = re.compile(r"\]\((?!https?:|mailto:|attachment:|#)(?P<target>[^)\s]+)\)")
GPU_NOTE = "# Needs a CUDA GPU; a cell beside it runs the same code on a CPU, smaller."


def _config_value(name: str) -> str:
    """A top-level `name: value` of mkdocs.yml (read without a YAML library)."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    match = re.search(rf"^{name}:\s*(\S+)\s*$", text, re.M)
    if match is None:
        raise SystemExit(f"mkdocs.yml has no {name}")
    return match[1]


def site_url() -> str:
    return _config_value("site_url").rstrip("/") + "/"


def repo_url() -> str:
    return _config_value("repo_url").rstrip("/")


def colab_url(notebook: str) -> str:
    """The address at which Colab opens a notebook of docs/notebooks/ from GitHub."""
    owner_repo = repo_url().removeprefix("https://github.com/")
    return (
        f"https://colab.research.google.com/github/{owner_repo}/blob/main/"
        f"{OUT_DIR}/{notebook}"
    )


def setup_code() -> str:
    return f"""\
# Setup: install the book's library where it is missing (Colab, a fresh
# Jupyter), and put the story the chapters read in the working folder.
import importlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

if importlib.util.find_spec("llmbook") is None:
    package = "llmbook[notebooks] @ git+{repo_url()}"
    pip = [sys.executable, "-m", "pip", "install", "-q", package]
    subprocess.run(pip, check=True)
    importlib.invalidate_caches()
if not Path("the-verdict.txt").exists():
    from llmbook.data import data_file

    shutil.copyfile(data_file("the-verdict.txt"), "the-verdict.txt")"""


@dataclass
class Line:
    text: str
    box: str | None  # the title of the admonition the line is in, if any


@dataclass
class Cell:
    kind: str  # "markdown" or "code"
    source: str
    tags: list[str] = field(default_factory=list)
    output: str | None = None  # what the page shows the cell (or its chain) print
    hidden: bool = False
    figure: str | None = None  # the figure a figure cell draws: "figures/NAME.svg"
    attachments: dict[str, str] = field(default_factory=dict)  # name: SVG text


def flatten(markdown: str) -> list[Line]:
    """The page's lines with admonitions opened up: the header becomes a bold title
    and the body loses its indentation (notebooks know no admonitions)."""
    lines: list[Line] = []
    box: tuple[int, str] | None = None  # (indentation of the body, title)
    for raw in markdown.split("\n"):
        if box is not None:
            indent, title = box
            if not raw.strip():
                lines.append(Line("", title))
                continue
            if raw.startswith(" " * indent):
                lines.append(Line(raw[indent:], title))
                continue
            box = None
        match = ADMONITION.match(raw)
        if match:
            title = match["title"] or match["kind"].capitalize()
            box = (len(match["indent"]) + 4, title)
            lines.append(Line(f"**{title}**", title))
            lines.append(Line("", title))
            continue
        lines.append(Line(raw, None))
    return lines


def _absolute_links(text: str) -> str:
    """Links to the book's pages and figures, as addresses on the published site."""

    def replace(match: re.Match) -> str:
        target = match["target"]
        path, _, anchor = target.partition("#")
        if path.endswith(".md"):
            page = path.removesuffix(".md")
            url = site_url() if page == "index" else f"{site_url()}{page}/"
        else:
            url = site_url() + path
        return f"]({url}{'#' + anchor if anchor else ''})"

    return LINK.sub(replace, text)


# A figure block's marker, and an image of a figure in the prose.
FIGURE_MARKER = re.compile(r"<!--figure: (?P<path>\S+)\s*-->")
FIGURE_IMAGE = re.compile(r"!\[[^\]]*\]\((?P<path>figures/[\w.-]+\.svg)\)(\{[^}]*\})?")


def _figure_images(text: str, drawn: set[str]) -> tuple[str, dict[str, str]]:
    """The prose without the figures that a cell of the notebook draws (its output
    shows them) and with every other figure attached to the cell, so that a
    notebook shows them with no site beside it: the text and its attachments."""
    attachments: dict[str, str] = {}

    def replace(match: re.Match) -> str:
        if match["path"] in drawn:
            return ""
        name = Path(match["path"]).name
        attachments[name] = (DOCS / match["path"]).read_text(encoding="utf-8")
        return match[0].split("](")[0] + f"](attachment:{name})"

    return FIGURE_IMAGE.sub(replace, text), attachments


def cells_of(markdown: str, where: str) -> list[Cell]:
    """The notebook cells of one page, in order."""
    lines = flatten(markdown)
    cells: list[Cell] = []
    prose: list[str] = []
    last_code: Cell | None = None
    drawn = {m["path"] for m in FIGURE_MARKER.finditer(markdown)}

    def flush() -> None:
        text, attachments = _figure_images("\n".join(prose), drawn)
        text = text.strip("\n")
        if text.strip():
            cell = Cell("markdown", _absolute_links(text), attachments=attachments)
            cells.append(cell)
        prose.clear()

    fences = {
        block.line - 1: block
        for block in conventions.blocks("\n".join(line.text for line in lines))
    }
    i = 0
    while i < len(lines):
        line = lines[i]
        block = fences.get(i)
        if block is None:
            if not conventions.MARKER.match(line.text):  # markers go with their fence
                if HEADING.match(line.text):
                    flush()
                if line.text.strip() or prose:
                    prose.append(line.text)
            i += 1
            continue
        if block.end is None:
            raise SystemExit(f"{where}:{i + 1}: a code fence that never closes")
        end = block.end - 1
        markers = [marker.body for marker in block.markers]
        if block.is_output:
            if last_code is None:
                raise SystemExit(f"{where}:{i + 1}: an output with no code before it")
            last_code.output = block.code
        elif block.info.strip() == "python":
            flush()
            source = block.code
            tags, figure = [], None
            for m in markers:
                if m.startswith("tangle:"):
                    target = m.removeprefix("tangle:").strip()
                    source = f"# Library code: {target}\n{source}"
                    tags.append("library")
                elif m.startswith("figure:"):
                    tags.append("figure")
                    figure = m.removeprefix("figure:").strip()
                    if "import matplotlib.pyplot as plt" in source:
                        source = source.rstrip("\n") + "\nplt.show()"  # not a Text(...)
            if block.needs_gpu:
                source = f"{GPU_NOTE}\n{source}"
                tags.append("gpu")
            if block.marked("pytest-codeblocks:cont"):
                tags.append("continued")  # prints into the chain's last cell
            solution = line.box == "Solution"
            if solution:
                tags.append("solution")
            last_code = Cell("code", source, tags, hidden=solution, figure=figure)
            cells.append(last_code)
        else:  # commands and other text the page shows as it is
            prose.extend(line.text for line in lines[i : end + 1])
        i = end + 1
    flush()
    return cells


def _title(markdown: str) -> str:
    match = re.search(r"^# (.+)$", markdown, re.M)
    return match[1].strip() if match else "?"


def _intro(page: str, title: str) -> Cell:
    url = f"{site_url()}{page.removesuffix('.md')}/"
    return Cell(
        "markdown",
        f"This notebook is [{title}]({url}) of *Build a GPT-style LLM from scratch*, "
        "made from the page: the same prose, the same code and, under each cell, the "
        "output that the book's tests checked. Run the cells from the top; the first "
        "one installs the book's library `llmbook` if it is missing. Library cells "
        "(marked `# Library code`) define the code of the package's modules here as "
        "well, so you can change them and see what happens. Cells marked as needing a "
        "CUDA GPU are followed by a smaller version that runs on a CPU.",
    )


def chapter_notebook(page: Path) -> dict | None:
    markdown = page.read_text(encoding="utf-8")
    cells = cells_of(markdown, f"docs/{page.name}")
    if not any(cell.kind == "code" for cell in cells):
        return None
    head, rest = cells[0], cells[1:]
    setup = Cell("code", setup_code(), ["setup"])
    return notebook([head, _intro(page.name, _title(markdown)), setup, *rest])


def exercises_notebook(pages: list[Path]) -> dict:
    cells = [
        Cell(
            "markdown",
            "# Exercises\n\nThe exercises of every chapter in one notebook, each with "
            "the solution the book checks (folded in Jupyter: try first). Each "
            "chapter's exercises build on that chapter's library code, which the "
            "setup cell below installs; a few read files that a chapter writes, as "
            "their text says. The chapters themselves are notebooks too: see "
            f"[Notebooks]({site_url()}notebooks/).",
        ),
        Cell("code", setup_code(), ["setup"]),
    ]
    for page in pages:
        markdown = page.read_text(encoding="utf-8")
        section = exercises_section(markdown)
        if section is None:
            continue
        url = f"{site_url()}{page.stem}/"
        heading = f"## [{_title(markdown)}]({url})"
        cells.append(Cell("markdown", heading))
        cells.extend(cells_of(section, f"docs/{page.name}"))
    return notebook(cells)


def exercises_section(markdown: str) -> str | None:
    """What a page's `## Exercises` section holds, up to the next `## ` heading (the
    site's Exercises page is made of these too); None for a page without one."""
    start = re.search(r"^## Exercises\s*$", markdown, re.M)
    if start is None:
        return None
    section = markdown[start.end() :]
    following = re.search(r"^## ", section, re.M)
    return section[: following.start()] if following else section


def notebook(cells: list[Cell]) -> dict:
    def cell_json(index: int, cell: Cell) -> dict:
        data: dict = {
            "cell_type": cell.kind,
            "id": f"cell-{index}",
            "metadata": {},
            "source": cell.source.splitlines(keepends=True),
        }
        if cell.tags:
            data["metadata"]["tags"] = cell.tags
        if cell.hidden:
            data["metadata"]["jupyter"] = {"source_hidden": True}
        if cell.attachments:
            data["attachments"] = {
                name: {"image/svg+xml": svg.splitlines(keepends=True)}
                for name, svg in cell.attachments.items()
            }
        if cell.kind == "code":
            data["execution_count"] = None
            data["outputs"] = []
            if cell.output is not None:
                text = cell.output + "\n"
                data["outputs"].append(
                    {
                        "name": "stdout",
                        "output_type": "stream",
                        "text": text.splitlines(keepends=True),
                    }
                )
            if cell.figure is not None:  # the figure as the book drew it
                svg = (DOCS / cell.figure).read_text(encoding="utf-8")
                data["outputs"].append(
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {
                            "image/svg+xml": svg.splitlines(keepends=True),
                            "text/plain": [f"<the figure {cell.figure}>"],
                        },
                    }
                )
        return data

    return {
        "cells": [cell_json(i, cell) for i, cell in enumerate(cells)],
        "metadata": {
            "kernelspec": {
                "display_name": "Python 3",
                "language": "python",
                "name": "python3",
            },
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def chapter_pages() -> list[Path]:
    return sorted(DOCS.glob("[0-9][0-9]-*.md")) + sorted(DOCS.glob("appendix-*.md"))


def render() -> dict[str, str]:
    """Every notebook's file name and its text."""
    out: dict[str, str] = {}
    pages = chapter_pages()
    for page in pages:
        nb = chapter_notebook(page)
        if nb is not None:
            out[page.stem + ".ipynb"] = _dump(nb)
    out[EXERCISES] = _dump(exercises_notebook(pages))
    return out


def _dump(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="report notebooks that differ; write none"
    )
    args = parser.parse_args(argv)
    wanted = render()
    out_dir = ROOT / OUT_DIR
    present = {p.name for p in out_dir.glob("*.ipynb")} if out_dir.is_dir() else set()
    differ = [
        name
        for name, text in wanted.items()
        if not (out_dir / name).is_file()
        or (out_dir / name).read_text(encoding="utf-8") != text
    ]
    extra = sorted(present - set(wanted))
    if args.check:
        for name in differ:
            print(f"{OUT_DIR}/{name} differs from the chapters", file=sys.stderr)
        for name in extra:
            print(f"{OUT_DIR}/{name} has no chapter", file=sys.stderr)
        if differ or extra:
            print("run: python tools/notebooks.py", file=sys.stderr)
            return 1
        print(f"notebook check: {OUT_DIR}/ matches the chapters")
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in differ:
        (out_dir / name).write_text(wanted[name], encoding="utf-8")
        print(f"wrote {OUT_DIR}/{name}")
    for name in extra:
        (out_dir / name).unlink()
        print(f"removed {OUT_DIR}/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
