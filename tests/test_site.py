"""The site as a reader gets it: built strictly, then opened page by page in Chromium.

The figures come from docs/figures/ (committed, checked against the code that draws
them: tools/figures.py), so the build runs no figure code. conftest.py runs this
module last, after the chapters' snippets. The browser tests need Chromium (Debian:
`apt-get install chromium`; set LLMBOOK_CHROMIUM to use another binary) and the Python
package playwright, which drives it; they are skipped, with the reason, where either is
missing.
The pages are served from localhost, and every request to another host fails the test:
the site must work with no network.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

from tools import figures, tangle

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = tangle.nav_chapters(ROOT)
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# Text that only TeX leaves: \( \) \[ \] delimiters, or a command inside dollars.
RAW_TEX = re.compile(r"\\[()\[\]]|\$[^$\n]*\\[a-zA-Z]+[^$\n]*\$")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """`mkdocs build --strict` into a scratch folder; the build must print no warning.

    A figure whose code changed since it was committed is drawn for the build, which
    then reads the data files through LLMBOOK_DATA_DIR and TIKTOKEN_CACHE_DIR (CI has
    no network). Nothing is written into the repository, but for the files that the
    chapters' snippets write there (.gitignore names each), which another worker may
    be writing during the build."""
    snippet_files = {
        line.strip("/")
        for line in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("/")
    }
    before = {p.name for p in ROOT.iterdir()} | snippet_files
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = tmp_path_factory.mktemp("site") / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr
    assert {p.name for p in ROOT.iterdir()} <= before | {".cache"}
    return out


def test_site_builds_strictly_without_warnings(site):
    built = [p.relative_to(site).as_posix() for p in site.rglob("*")]
    assert "02-tokenization/index.html" in built
    drawn = [
        block.path
        for chapter in CHAPTERS
        for block in figures.page_figures(chapter.read_text())
    ]
    assert len(drawn) >= 3
    for figure in drawn:  # drawn by the code on the page, committed in docs/figures
        assert figure in built
        svg = (site / figure).read_bytes()
        assert svg.startswith(b"<?xml") and figures.STAMP.search(svg)
    page = (site / "02-tokenization" / "index.html").read_text()
    assert 'class="filename">src/llmbook/tokenizer.py</span>' in page
    # the chapter offers its notebook, which the site serves
    assert 'href="../notebooks/02-tokenization.ipynb"' in page
    assert "notebooks/02-tokenization.ipynb" in built
    assert "exercises/index.html" in built  # made from the chapters at build time
    assert "notebooks/exercises.ipynb" in built  # and a notebook to download
    sitemap = (site / "sitemap.xml").read_text()
    assert "<loc>https://" in sitemap and "/05-attention/</loc>" in sitemap


def test_formulas_are_mathml_and_no_page_loads_anything_from_another_host(site):
    attention = (site / "05-attention" / "index.html").read_text()
    assert attention.count("<math ") >= 10
    assert "\\(" not in attention and "arithmatex" not in attention
    lora = (site / "appendix-e-lora" / "index.html").read_text()
    assert "<mn>12,288</mn>" in lora  # 12{,}288 is one number
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        # Issue 39: a thousands separator `{,}` spaced as a comma: "12, 288".
        spaced = re.search(r"<mo>&#x0002C;</mo></mrow><mn>\d{3}\b", text)
        assert spaced is None, f"{page.relative_to(site)}: {spaced and spaced[0]}"
        for tag in re.findall(r"<(?:script|link|img)\b[^>]*>", text):
            if 'rel="canonical"' in tag:  # the page's address, not a download
                continue
            source = re.search(r'\b(?:src|href)="(https?:)?//', tag)
            assert source is None, f"{page.relative_to(site)}: {tag}"


def test_the_search_index_splits_file_names():
    """`tokenizer.py` must find the page that shows `src/llmbook/tokenizer.py`: the
    search separator splits at dots and slashes (a check of mkdocs.yml's setting)."""
    text = (ROOT / "mkdocs.yml").read_text()
    separator = re.search(r"separator: '(.+)'", text)
    assert separator is not None
    words = [w for w in re.split(separator[1], "src/llmbook/tokenizer.py") if w]
    assert words == ["src", "llmbook", "tokenizer", "py"]


def test_no_link_leaves_for_the_published_site(site):
    """Issue 39: the exercises page linked its chapter headings, the notebooks page
    and references to the published host, which an offline reader cannot reach."""
    config = (ROOT / "mkdocs.yml").read_text()
    host = re.escape(config.split("site_url: ")[1].split()[0])
    for page in site.rglob("*.html"):
        for tag in re.findall(rf'<[^>]*\bhref="{host}[^"]*"[^>]*>', page.read_text()):
            assert 'rel="canonical"' in tag, f"{page.relative_to(site)}: {tag}"


def test_the_exercises_page_folds_every_solution_and_offers_its_notebook(site):
    page = (site / "exercises" / "index.html").read_text()
    folded = re.findall(r'<details class="success"( open)?>', page)
    assert len(folded) >= 40 and not any(folded), "a solution shows open"
    assert re.search(r'<a [^>]*\bdownload href="../notebooks/exercises.ipynb"', page)
    assert "colab.research.google.com/github/" in page and "exercises.ipynb" in page
    for chapter in ["02-tokenization", "10-modern-llm", "appendix-f-quantization"]:
        assert f'href="../{chapter}/"' in page  # each chapter's part links back


def test_a_reader_finds_the_way_in_and_back(site):
    """Issue 39: the home page had no way to start reading, the 404 page no way
    home, and the footer named no licence."""
    home = (site / "index.html").read_text()
    assert '<a class="md-button md-button--primary" href="01-introduction/">' in home
    missing = (site / "404.html").read_text()
    assert re.search(r'<a href="/[\w/-]*/" class="md-button', missing)
    assert "search" in missing.split("<article", 1)[-1].lower()
    assert "Apache License 2.0" in home


def test_the_search_index_has_no_pilcrows(site):
    """Issue 39: the exercises page's headings went into the index as "Exercises¶",
    and the search box suggested "attention¶"."""
    index = json.loads((site / "search" / "search_index.json").read_text())
    titles = [doc["title"] for doc in index["docs"] if "¶" in doc["title"]]
    assert titles == []


# --- in the browser ------------------------------------------------------------


def _chromium() -> str | None:
    wanted = os.environ.get("LLMBOOK_CHROMIUM")
    if wanted:
        return wanted
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"]:
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="module")
def served(site) -> Iterator[str]:
    """The built site on a local port, as `python -m http.server` would serve it."""
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002  (the base class's name)
        pass


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package playwright is not installed")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield chromium
        chromium.close()


def _pages(site: Path) -> list[str]:
    """Every page of the site, as a path below its root ('' for the home page)."""
    pages = []
    for index in sorted(site.rglob("index.html")):
        path = index.parent.relative_to(site).as_posix()
        if path.startswith(("assets", "search")):
            continue
        pages.append("" if path == "." else path + "/")
    return pages


class Visit:
    """What happens while one page loads: console errors, failed or outside requests."""

    def __init__(self, page, base: str):
        self.problems: list[str] = []
        self.base = base
        page.on("console", self.console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("requestfailed", self.failed)
        page.on("response", self.response)
        page.route("**/*", self.route)

    def console(self, message):
        if message.type == "error":
            self.problems.append(f"console error: {message.text}")

    def failed(self, request):
        self.problems.append(f"failed request: {request.url} ({request.failure})")

    def response(self, response):
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.url}")

    def route(self, route):
        url = route.request.url
        if url.startswith(self.base) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:  # the site must not need the network
            self.problems.append(f"request to another host: {url}")
            route.abort()


CHECK_PAGE = """() => {
  const broken = [...document.images]
    .filter(img => !img.complete || img.naturalWidth === 0)
    .map(img => img.src);
  const links = [...document.querySelectorAll("a[href]")].map(a => a.href);
  const ids = [...document.querySelectorAll("[id]")].map(e => e.id);
  const article = document.querySelector("article") || document.body;
  const scrolling = [...document.querySelectorAll(
      ".md-typeset pre > code, .jp-InputArea-editor pre")]
    .filter(code => code.scrollWidth > code.clientWidth + 1)
    .map(code => code.textContent.split("\\n")[0]);
  // Issue 39: a copy button over the end of a block's first line. (Material 9.8
  // names the button md-code__button; older versions, md-clipboard.)
  const COPY = ".md-clipboard, .md-code__button";
  const covered = [...document.querySelectorAll(".md-typeset pre")]
    .filter(pre => pre.querySelector(COPY) && pre.querySelector("code"))
    .filter(pre => {
      const code = pre.querySelector("code");
      const button = pre.querySelector(COPY).getBoundingClientRect();
      const range = document.createRange();
      range.selectNodeContents(code);
      const walker = document.createTreeWalker(code, NodeFilter.SHOW_TEXT);
      for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const end = node.textContent.indexOf("\\n");
        if (end >= 0) { range.setEnd(node, end); break; }
      }
      return [...range.getClientRects()].some(r =>
        r.width > 0 && button.left < r.right && button.right > r.left &&
        button.top < r.bottom && button.bottom > r.top);
    })
    .map(pre => pre.querySelector("code").textContent.split("\\n")[0]);
  // Issue 39: a figure wider than the column must open alone when tapped.
  const column = article.getBoundingClientRect().width;
  const unreachable = [...document.querySelectorAll(".md-typeset img")]
    .filter(img => img.getBoundingClientRect().width > column + 1)
    .filter(img => !img.closest("a[href]") ||
                   !img.closest("a[href]").href.endsWith(img.getAttribute("src")
                     .split("/").pop()))
    .map(img => img.getAttribute("src"));
  return {broken, links, ids, text: article.innerText, scrolling, covered, unreachable,
          h1: (document.querySelector("article h1") || {}).textContent || ""};
}"""


LATE_MS = 200  # how long a page stays open after it has loaded, for late errors


def _open(
    browser, url: str, base: str, viewport: dict, dark: bool = False, wait: bool = True
):
    context = browser.new_context(
        viewport=viewport, color_scheme="dark" if dark else "light"
    )
    page = context.new_page()
    visit = Visit(page, base)
    page.goto(url, wait_until="load")
    if wait:
        page.wait_for_timeout(LATE_MS)  # late scripts and their errors
    return context, page, visit


def test_every_page_loads_cleanly_in_chromium(browser, served, site):
    """Each page at desktop width: no console error, no failed request or request to
    another host, no raw TeX, no broken image, no link into the site that leads
    nowhere (page or anchor), and no code block that scrolls sideways."""
    problems: list[str] = []
    anchors: dict[str, set[str]] = {}
    links: dict[str, list[str]] = {}
    previous = None  # the page before stays open while the next one loads
    # One browser context for every page (making one takes 0.2 s); each page is a
    # tab of its own with its own Visit, and routing keeps the HTTP cache off, so
    # every page loads all that it needs, as a first visit does.
    context = browser.new_context(viewport=DESKTOP, color_scheme="light")

    def close(where, page, visit):
        page.close()
        problems.extend(f"{where}: {p}" for p in visit.problems)

    try:
        for path in _pages(site):
            page = context.new_page()
            visit = Visit(page, served)
            page.goto(served + path, wait_until="load")
            found = page.evaluate(CHECK_PAGE)
            where = path or "home"
            if previous:  # it has had this page's load time for late errors
                close(*previous)
            previous = (where, page, visit)
            problems += [f"{where}: broken image {src}" for src in found["broken"]]
            problems += [
                f"{where}: code scrolls: {line}" for line in found["scrolling"]
            ]
            problems += [
                f"{where}: the copy button covers {line!r}" for line in found["covered"]
            ]
            tex = RAW_TEX.search(found["text"])
            if tex:
                problems.append(f"{where}: raw TeX {tex[0]!r}")
            anchors[served + path] = set(found["ids"])
            links[where] = found["links"]
        assert previous is not None, "the site has no pages"
        previous[1].wait_for_timeout(LATE_MS)
        close(*previous)
    finally:
        context.close()
    published = (ROOT / "mkdocs.yml").read_text().split("site_url: ")[1].split()[0]
    for where, hrefs in links.items():
        for href in hrefs:
            if href.startswith(published):  # issue 39: offline, it leads nowhere
                problems.append(f"{where}: link to the published site {href}")
            if not href.startswith(served):
                continue
            target, _, anchor = href.partition("#")
            relative = urlparse(target).path.lstrip("/")
            on_disk = site / relative
            if on_disk.is_dir():
                on_disk = on_disk / "index.html"
            if not on_disk.is_file():
                problems.append(f"{where}: link to a missing page {href}")
            elif anchor and target in anchors and anchor not in anchors[target]:
                problems.append(f"{where}: link to a missing anchor {href}")
    assert problems == [], "\n".join(problems)


def test_menu_labels_are_the_page_headings(browser, served, site):
    context, page, _ = _open(browser, served, served, DESKTOP)
    items = page.evaluate(
        """() => [...document.querySelectorAll("nav.md-nav--primary a.md-nav__link")]
          .map(a => [a.getAttribute("href"), a.textContent.trim()])"""
    )
    context.close()
    checked = 0
    for href, label in items:
        target = urljoin(served, href)
        if target == served or "#" in href:
            continue  # the home page is "Home"
        relative = urlparse(target).path.lstrip("/")
        html = (site / relative / "index.html").read_text(encoding="utf-8")
        heading = re.search(r"<h1[^>]*>(.*?)(?:<a class=\"headerlink\".*?)?</h1>", html)
        assert heading is not None, relative
        text = re.sub(r"<[^>]+>", "", heading[1]).replace("&para;", "")
        text = text.replace("¶", "").strip()  # the anchor links of a notebook page
        assert label == text.replace("&amp;", "&"), relative
        checked += 1
    assert checked >= 14


def test_search_ranks_first_the_chapter_that_teaches_it(browser, served):
    """Issue 39: "tokenizer.py" ranked appendix A and the notebooks page above the
    chapters, and "attention" the exercises page above chapter 5."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    context, page, visit = _open(browser, served, served, DESKTOP)
    search = page.locator("input.md-search__input")  # in the header at this width
    first = """name => {
        const top = document.querySelector(".md-search-result__item a");
        return top !== null && top.href.includes(name);
    }"""
    for query, page_name in [
        ("tokenizer.py", "/02-tokenization/"),
        ("attention", "/05-attention/"),
        ("KV cache", "/appendix-c-making-it-fast/"),
        ("LoRA", "/appendix-e-lora/"),
    ]:
        search.fill("")
        # Typed key by key, as a reader types: the theme searches on each key's
        # release (and once its index is built, which takes a while on a busy machine).
        search.press_sequentially(query)
        try:
            page.wait_for_function(first, arg=page_name, timeout=120_000)
            page.wait_for_timeout(1000)  # the last key's results have replaced others
            page.wait_for_function(first, arg=page_name, timeout=5_000)
        except PlaywrightTimeout:
            results = page.eval_on_selector_all(
                ".md-search-result__item a", "links => links.map(a => a.href)"
            )
            pytest.fail(f"searching {query!r} ranks first {results[:3]}")
        page.keyboard.press("Escape")
    context.close()
    assert visit.problems == []


def test_every_figure_can_be_seen_whole_on_a_phone(browser, served, site):
    """Issue 39: 18 of 21 figures were wider than a phone's column, cut at its
    right edge with no hint. One wider than the column must open alone on a tap."""
    paths = [p for p in _pages(site) if "figures/" in _html(site, p)]
    assert len(paths) >= 8
    context = browser.new_context(viewport=PHONE)
    try:
        for path in paths:
            page = context.new_page()
            page.goto(served + path, wait_until="load")
            found = page.evaluate(CHECK_PAGE)
            page.close()
            assert found["unreachable"] == [], path
    finally:
        context.close()


def _html(site: Path, path: str) -> str:
    return (site / path / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_chapters_read_well_on_a_phone(browser, served, dark):
    """On a 390-pixel phone, light and dark: the page does not scroll sideways (wide
    code and figures scroll inside themselves), figures keep a readable size, and the
    copy button sits clear of the code's first line."""
    for path in ["05-attention/", "07-pretraining/", "exercises/"]:
        context, page, visit = _open(browser, served + path, served, PHONE, dark)
        found = page.evaluate(
            """() => {
              const doc = document.documentElement;
              const figures = [...document.querySelectorAll(".md-typeset img")]
                .map(img => [img.getAttribute("src"),
                             img.getBoundingClientRect().width / img.naturalWidth]);
              const overlaps = [...document.querySelectorAll(".md-typeset pre")]
                .filter(pre => pre.querySelector(".md-clipboard, .md-code__button"))
                .filter(pre => {
                  const button = pre.querySelector(".md-clipboard, .md-code__button")
                    .getBoundingClientRect();
                  const code = pre.querySelector("code").getBoundingClientRect();
                  const style = getComputedStyle(pre.querySelector("code"));
                  const top = code.top + parseFloat(style.paddingTop);
                  const lineEnd = top + parseFloat(style.lineHeight);
                  return button.bottom > top && button.top < lineEnd
                    && button.left < code.right - parseFloat(style.paddingRight);
                }).length;
              return {wide: doc.scrollWidth > doc.clientWidth, figures, overlaps};
            }"""
        )
        context.close()
        assert visit.problems == [], path
        assert not found["wide"], f"{path} scrolls sideways"
        assert found["overlaps"] == 0, path
        for src, scale in found["figures"]:
            if src.endswith(".svg"):
                assert scale >= 0.6, (path, src, scale)
