"""The book's Markdown conventions, read in one place.

A page marks a fenced code block with HTML comments on the lines just above its
opening fence (blank lines may come between):

    <!--tangle: src/llmbook/NAME.py-->       library code, tangled into that module
    <!--figure: figures/NAME.svg-->          a block whose code draws that figure
    <!--pytest-codeblocks:cont-->            continues the block before, same session
    <!--pytest-codeblocks:expected-output--> the block is what the code before prints
    <!--pytest.mark.skipif(... cuda ...)-->  the block needs a CUDA GPU

`blocks(markdown)` reads every fence of a page with its markers; `markers(markdown)`
every marker line, wherever it is. The tangler, the figures, the notebooks and the
MkDocs hooks all read pages through these two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MARKER = re.compile(r"^(?P<indent>[ \t]*)<!--\s*(?P<body>.*?)\s*-->\s*$")
FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<info>[^`]*)$")
GPU_MARK = re.compile(r"^pytest\.mark\.skipif\(.*cuda\.is_available\(\).*\)$")


@dataclass(frozen=True)
class Marker:
    line: int  # 1-based
    indent: str
    body: str  # what is between <!-- and -->, stripped


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its fence, its text and the markers above it."""

    line: int  # the opening fence's line, 1-based
    end: int | None  # the closing fence's line; None for a fence that never closes
    indent: str  # the opening fence's indentation (inside an admonition, say)
    ticks: str
    info: str  # what follows the ticks: "python", 'python title="x"', ""
    code: str  # the lines between the fences, without the fence's indentation
    markers: tuple[Marker, ...]  # the marker lines just above, top first

    @property
    def language(self) -> str:
        words = self.info.split()
        return words[0] if words else ""

    def marker(self, name: str) -> str | None:
        """The value of this block's marker `<!--name: value-->`, if it has one."""
        for marker in self.markers:
            key, colon, value = marker.body.partition(":")
            if colon and key.strip() == name:
                return value.strip()
        return None

    def marked(self, body: str) -> bool:
        """Whether a marker of this block is exactly `body` (a flag such as
        `pytest-codeblocks:cont`)."""
        return any(marker.body == body for marker in self.markers)

    @property
    def is_output(self) -> bool:
        return any(
            m.body.startswith("pytest-codeblocks:expected-output") for m in self.markers
        )

    @property
    def needs_gpu(self) -> bool:
        return any(GPU_MARK.match(m.body) for m in self.markers)

    @property
    def nearest(self) -> Marker | None:
        """The marker closest above the fence."""
        return self.markers[-1] if self.markers else None


def markers(markdown: str) -> list[Marker]:
    """Every marker line of a page, inside code blocks too."""
    found = []
    for number, text in enumerate(markdown.split("\n"), start=1):
        match = MARKER.match(text)
        if match:
            found.append(Marker(number, match["indent"], match["body"]))
    return found


def blocks(markdown: str) -> list[Block]:
    """Every fenced block of a page, in order. A fence closes at the first line that
    is its ticks alone (indentation aside); the code loses the opening fence's
    indentation (a line indented less loses all of its own)."""
    lines = markdown.split("\n")
    found: list[Block] = []
    above: list[Marker] = []  # markers since the last line of text
    i = 0
    while i < len(lines):
        text = lines[i]
        marker = MARKER.match(text)
        if marker:
            above.append(Marker(i + 1, marker["indent"], marker["body"]))
            i += 1
            continue
        fence = FENCE_OPEN.match(text)
        if not fence:
            if text.strip():
                above = []  # prose between a marker and a fence: not its marker
            i += 1
            continue
        indent, ticks = fence["indent"], fence["ticks"]
        end = i + 1
        while end < len(lines) and lines[end].strip() != ticks:
            end += 1
        body = [
            line[len(indent) :] if line.startswith(indent) else line.strip()
            for line in lines[i + 1 : end]
        ]
        closed = end < len(lines)
        found.append(
            Block(
                line=i + 1,
                end=end + 1 if closed else None,
                indent=indent,
                ticks=ticks,
                info=fence["info"],
                code="\n".join(body),
                markers=tuple(above),
            )
        )
        above = []
        i = end + 1
    return found
