"""The book as a whole: snippet conventions, the MkDocs hooks, the strict site build."""

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from xml.etree import ElementTree

import pytest
import pytest_codeblocks
import torch

from tools import conventions, figures, mkdocs_hooks, tangle

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = tangle.nav_chapters(ROOT)
GPU_MARK = (
    '<!--pytest.mark.skipif(not __import__("torch").cuda.is_available(), '
    'reason="needs a CUDA GPU")-->'
)


def run_codeblocks(pytester, markdown: str):
    pytester.makefile(".md", page=textwrap.dedent(markdown))
    return pytester.runpytest_subprocess(
        "--codeblocks", "-p", "no:cacheprovider", "-rs"
    )


# A snippet whose shown output is wrong: the tests must fail on it.
WRONG_OUTPUT = """\
```python
print(6 * 7)
```

<!--pytest-codeblocks:expected-output-->
```
41
```
"""
# Exercise solutions sit indented inside `??? success` blocks; their fences are
# collected, run and checked like any other, so a wrong output fails (and a right one,
# with a blank line inside its code, passes).
RIGHT_SOLUTION = """\
```python
for n in range(3):

    print(n * n)
```

<!--pytest-codeblocks:expected-output-->
```
0
1
4
```
"""
PAGES = {
    "gpu": f"""\
{GPU_MARK}
```python
import torch
print(torch.ones(1, device="cuda").item())
```

```python
print("cpu sibling")
```
""",
    "wrong": WRONG_OUTPUT,
    "exercise": "### An exercise\n"
    + "".join(
        '\n??? success "Solution"\n\n' + textwrap.indent(solution, "    ")
        for solution in [RIGHT_SOLUTION, WRONG_OUTPUT]
    ),
}


@pytest.fixture(scope="module")
def snippet_run(tmp_path_factory) -> dict[str, list[tuple[str, str]]]:
    """One run of pytest-codeblocks, as the book's tests run it, over the small
    PAGES: for each page, the outcome of each snippet and its report."""
    folder = tmp_path_factory.mktemp("snippets")
    for name, page in PAGES.items():
        (folder / f"{name}.md").write_text(page, encoding="utf-8")
    subprocess.run(
        [sys.executable, "-m", "pytest", "--codeblocks", "-p", "no:cacheprovider"]
        + ["-p", "no:xdist", "--junitxml", "results.xml", "--rootdir", ".", "."],
        capture_output=True,
        cwd=folder,
    )
    found: dict[str, list[tuple[str, str]]] = {name: [] for name in PAGES}
    for case in ElementTree.parse(folder / "results.xml").iter("testcase"):
        outcome = next(iter(case), None)  # <failure>, <skipped> or nothing
        report = "" if outcome is None else f"{outcome.get('message')}"
        found[case.get("classname", "").removesuffix(".md")].append(
            ("passed" if outcome is None else outcome.tag, report)
        )
    return found


def test_gpu_cells_are_skipped_with_their_reason_on_cpu(snippet_run):
    (gpu, reason), (cpu, _) = snippet_run["gpu"]
    assert cpu == "passed"
    if torch.cuda.is_available():
        assert gpu == "passed"
    else:
        assert gpu == "skipped" and "needs a CUDA GPU" in reason


def test_a_wrong_expected_output_fails(snippet_run):
    [(outcome, report)] = snippet_run["wrong"]
    assert outcome == "failure" and re.search(r"but got\n```\n42\n", report)


def test_a_wrong_solution_in_a_collapsed_block_fails(snippet_run):
    (right, _), (wrong, report) = snippet_run["exercise"]
    assert right == "passed"
    assert wrong == "failure" and re.search(r"but got\n```\n42\n", report)


def solution_blocks(chapter: Path) -> list[tuple[int, list[int]]]:
    """(line of each `??? success "Solution"`, lines of the python fences inside)."""
    lines = chapter.read_text(encoding="utf-8").splitlines()
    found = []
    for number, line in enumerate(lines, 1):
        if line.startswith('??? success "Solution"'):
            fences, body = [], number
            while body < len(lines) and (
                not lines[body].strip() or lines[body].startswith("    ")
            ):
                if lines[body].strip() == "```python":
                    fences.append(body + 1)
                body += 1
            found.append((number, fences))
    return found


EXERCISE_CHAPTERS = [c for c in CHAPTERS if re.match(r"(0[2-9]|appendix)", c.name)]


@pytest.mark.parametrize("chapter", EXERCISE_CHAPTERS, ids=lambda p: p.name)
def test_every_chapter_ends_with_exercises_whose_solutions_run(chapter):
    text = chapter.read_text(encoding="utf-8")
    exercises = text.split("\n## Exercises\n", 1)[-1]
    assert "\n## Exercises\n" in text, f"{chapter.name} has no exercises"
    assert "\n## " not in exercises, "the exercises end the chapter"
    count = len(re.findall(r"^### ", exercises, re.M))
    solutions = solution_blocks(chapter)
    assert 2 <= count <= 5 and len(solutions) == count
    blocks = {
        block.lineno: block
        for block in pytest_codeblocks.extract_from_file(chapter)
        if block.syntax == "python"
    }
    for line, fences in solutions:
        assert fences, f"{chapter.name}:{line}: a solution without code"
        assert all(fence in blocks for fence in fences), f"{chapter.name}:{line}"
        checked = [blocks[fence].expected_output for fence in fences]
        assert any(checked), f"{chapter.name}:{line}: no output is checked"


def test_every_reference_is_cited_and_links_to_a_copy():
    # `mkdocs build --strict` (validation.anchors) fails on a citation whose anchor
    # is missing; this checks the other direction and the entries themselves.
    entries = (ROOT / "docs" / "references.md").read_text(encoding="utf-8")
    keys = re.findall(r"^\{#([a-z0-9-]+)\}$", entries, re.M)
    cited = {
        key
        for page in CHAPTERS
        if page.name != "references.md"
        for key in re.findall(r"\]\(references\.md#([a-z0-9-]+)\)", page.read_text())
    }
    assert len(keys) == len(set(keys)) >= 30
    assert sorted(set(keys) - cited) == [], "entries that no page cites"
    assert sorted(cited - set(keys)) == [], "citations without an entry"
    for entry in entries.split("\n\n"):
        if re.search(r"^\{#", entry, re.M):
            assert re.search(r"\]\(https://", entry), entry


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_every_python_fence_runs(chapter):
    """pytest-codeblocks runs only fences whose info string is exactly `python`."""
    bad = [
        f"{chapter.name}:{block.line}: {block.ticks}{block.info}"
        for block in conventions.blocks(chapter.read_text())
        if re.match(r"\s*\{?\.?py(thon)?\b", block.info)
        and block.info.strip() != "python"
    ]
    assert bad == []


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_gpu_marks_never_sit_above_a_continued_block(chapter):
    """A skip mark (GPU, weights, judge) sits directly above the ```python fence
    it skips, and a skipped block continues no other."""
    text = chapter.read_text()
    skipped = [
        block
        for block in conventions.blocks(text)
        if any(m.body.startswith("pytest.mark.skipif") for m in block.markers)
    ]
    for block in skipped:
        where = f"{chapter.name}:{block.line}"
        assert not block.marked("pytest-codeblocks:cont"), where
        assert block.info.strip() == "python", where
        assert block.nearest is not None, where
        assert block.nearest.body.startswith("pytest.mark.skipif"), where
        assert block.nearest.line == block.line - 1, where
    marks = [m for m in conventions.markers(text) if m.body.startswith("pytest.mark")]
    assert len(marks) == len(skipped), chapter.name  # none is left without a fence


def test_hook_titles_tangled_blocks_outputs_and_gpu_cells():
    markdown = textwrap.dedent(
        f"""\
        <!--tangle: src/llmbook/x.py-->
        ```python
        X = 1
        ```

        <!--pytest-codeblocks:expected-output-->
        ```
        1
        ```

        {GPU_MARK}
        ```python
        Y = 2
        ```
        """
    )
    out = mkdocs_hooks.on_page_markdown(markdown)
    assert '```python title="src/llmbook/x.py"' in out
    assert '```{.text .output title="Output"}' in out
    assert '```python title="Needs a CUDA GPU (skipped on CPU)"' in out


def test_hook_keeps_indentation_inside_admonitions():
    markdown = "!!! note\n\n    <!--tangle: src/llmbook/x.py-->\n    ```python\n"
    out = mkdocs_hooks.on_page_markdown(markdown)
    assert '\n    ```python title="src/llmbook/x.py"\n' in out


def test_figure_blocks_must_leave_a_figure():
    code = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2])"
    assert hasattr(figures._draw(code, "test"), "savefig")
    with pytest.raises(RuntimeError, match="must leave a matplotlib Figure in `fig`"):
        figures._draw("x = 1", "page.md (figure figures/x.svg)")


FIGURE_PAGE = """\
# Figures

Two figure blocks; the second reads the file the first one wrote.

<!--figure: figures/one.svg-->
```python
import matplotlib.pyplot as plt

with open("numbers.txt", "w") as f:
    f.write("1 4 9")
fig, ax = plt.subplots()
ax.plot([1, 2, 3])
```

!!! note

    <!--figure: figures/two.svg-->
    ```python
    import matplotlib.pyplot as plt

    numbers = [int(n) for n in open("numbers.txt").read().split()]

    fig, ax = plt.subplots()
    ax.plot(numbers)
    ```
"""


def test_a_page_draws_its_figures_in_order_in_a_scratch_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "FIGURE_CACHE", tmp_path / "cache")
    monkeypatch.chdir(tmp_path)
    svgs = figures.draw_page_figures(FIGURE_PAGE, "page.md")
    assert list(svgs) == ["figures/one.svg", "figures/two.svg"]
    assert all(svg.startswith(b"<?xml") for svg in svgs.values())
    assert svgs["figures/one.svg"] != svgs["figures/two.svg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # nothing else
    # Drawn once, then cached: a second build runs no figure code.
    monkeypatch.setattr(figures, "_draw", lambda *args: pytest.fail("redrawn"))
    assert figures.draw_page_figures(FIGURE_PAGE, "page.md") == svgs


def test_a_figure_that_needs_another_pages_file_says_how_to_draw_it(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(figures, "FIGURE_CACHE", tmp_path / "cache")
    page = FIGURE_PAGE.split("!!! note")[1].replace("\n    ", "\n")  # block two only
    with pytest.raises(FileNotFoundError, match="reads numbers.txt, which another"):
        figures.draw_page_figures(page, "page.md")


def test_a_figure_key_changes_with_its_code_and_earlier_figures():
    keys = [block.key for block in figures.page_figures(FIGURE_PAGE)]
    assert keys == [block.key for block in figures.page_figures(FIGURE_PAGE)]
    first = FIGURE_PAGE.replace("[1, 2, 3]", "[3, 2, 1]")
    changed = [block.key for block in figures.page_figures(first)]
    assert changed[0] != keys[0] and changed[1] != keys[1]  # the second depends on it
    assert len(set(keys)) == 2


def test_comments_and_docstrings_leave_every_figure_key(tmp_path, monkeypatch):
    """Explaining code draws nothing: a comment or a docstring, in a figure's block
    or in any library module, keeps every figure current."""
    pages = {
        p.name: p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md")
    }
    keys = {n: [b.key for b in figures.page_figures(t)] for n, t in pages.items()}
    assert sum(map(len, keys.values())) >= 15
    library = tmp_path / "llmbook"
    shutil.copytree(figures.LIBRARY, library)
    for module in library.glob("*.py"):
        source = module.read_text(encoding="utf-8")
        source = source.replace('"""', '"""Reworded. ', 1)  # the module's docstring
        module.write_text(f"# a new comment\n{source}\n# and one more\n")
    monkeypatch.setattr(figures, "LIBRARY", library)
    for name, text in pages.items():
        text = text.replace(
            "fig, ax = plt.subplots(", "# drawn here\nfig, ax = plt.subplots("
        )
        assert [b.key for b in figures.page_figures(text)] == keys[name], name
    (library / "model.py").write_text(
        (library / "model.py").read_text(encoding="utf-8") + "\nNEW = 1\n"
    )
    changed = [b.key for b in figures.page_figures(pages["07-pretraining.md"])]
    assert all(a != b for a, b in zip(changed, keys["07-pretraining.md"], strict=True))


def test_the_snippet_run_caches_the_figure_the_site_shows(pytester, monkeypatch):
    cache = pytester.path / "cache"
    monkeypatch.setenv("LLMBOOK_FIGURE_CACHE", str(cache))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # for `from tools import figures`
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    result = run_codeblocks(pytester, FIGURE_PAGE)
    result.assert_outcomes(passed=2)
    cached = sorted(
        p.relative_to(cache).parent.as_posix() for p in cache.rglob("*.svg")
    )
    assert cached == ["figures/one", "figures/two"]
    monkeypatch.setattr(figures, "FIGURE_CACHE", cache)
    monkeypatch.setattr(figures, "_draw", lambda *args: pytest.fail("redrawn"))
    svgs = figures.draw_page_figures(FIGURE_PAGE, "page.md")
    monkeypatch.undo()
    monkeypatch.chdir(pytester.path)
    monkeypatch.setattr(figures, "FIGURE_CACHE", pytester.path / "fresh")
    assert figures.draw_page_figures(FIGURE_PAGE, "page.md") == svgs  # same bytes


def test_committed_figures_match_the_code_that_draws_them():
    """Like src/, docs/figures/ is made from the pages: `python tools/figures.py`."""
    assert figures.problems() == []


def test_figures_are_committed_stamped_and_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "FIGURE_CACHE", tmp_path / "cache")
    monkeypatch.chdir(tmp_path)
    docs = tmp_path / "docs"
    docs.mkdir()
    page = docs / "page.md"
    page.write_text(FIGURE_PAGE)
    assert figures.problems(docs) == [
        "figures/one.svg (docs/page.md:6): missing",
        "figures/two.svg (docs/page.md:18): missing",
    ]
    assert figures.update(docs) == [
        "wrote docs/figures/one.svg",
        "wrote docs/figures/two.svg",
    ]
    assert figures.problems(docs) == []
    keys = [block.key for block in figures.page_figures(FIGURE_PAGE)]
    one = (docs / "figures" / "one.svg").read_bytes()
    assert (
        one.startswith(b"<?xml")
        and figures.committed_key(docs / "figures" / "one.svg") == keys[0]
    )
    assert figures.update(docs) == []  # nothing to do: nothing drawn
    # New code for the second figure: it alone is stale, and redrawn.
    page.write_text(
        FIGURE_PAGE.replace("ax.plot(numbers)", "ax.bar([0, 1, 2], numbers)")
    )
    assert figures.problems(docs) == ["figures/two.svg (docs/page.md:18): stale"]
    (docs / "figures" / "old.svg").write_bytes(one)
    assert (
        figures.problems(docs)[-1]
        == "docs/figures/old.svg: drawn by no figure block (delete it)"
    )
    assert figures.update(docs) == [
        "wrote docs/figures/two.svg",
        "deleted docs/figures/old.svg",
    ]
    assert figures.problems(docs) == []
    assert (docs / "figures" / "one.svg").read_bytes() == one


def test_a_figure_depends_on_the_library_modules_it_uses_and_theirs(
    tmp_path, monkeypatch
):
    library = tmp_path / "llmbook"
    library.mkdir()
    (library / "model.py").write_text("from llmbook.attention import Attention\n")
    (library / "attention.py").write_text("Attention = object\n")
    (library / "cli.py").write_text("from llmbook.model import GPTModel\n")
    monkeypatch.setattr(figures, "LIBRARY", library)
    uses = FIGURE_PAGE.replace(
        "    numbers = [int(n)",
        "    from llmbook.model import GPTModel\n\n    numbers = [int(n)",
    )

    def keys():
        return [
            [b.key for b in figures.page_figures(page)] for page in (FIGURE_PAGE, uses)
        ]

    before = keys()
    assert before[0][0] == before[1][0] and before[0][1] != before[1][1]
    (library / "cli.py").write_text("# a module the figure does not import\n")
    assert keys() == before
    (library / "attention.py").write_text("Attention = type\n")  # model imports it
    after = keys()
    assert after[0] == before[0]  # neither block imports llmbook
    assert after[1][0] == before[1][0] and after[1][1] != before[1][1]


def _chapter_table(page: Path) -> dict[str, tuple[str, set[str]]]:
    """A page's table of chapters: link target -> (what it builds, its modules)."""
    rows = {}
    for line in page.read_text(encoding="utf-8").splitlines():
        row = re.match(r"\| \[[^\]]+\]\(([\w-]+\.md)\) \| (.+?) \| (.+?) \|$", line)
        if row:
            names = re.findall(r"`([\w./]+)`", row[3])  # tokenizer.py, or cli/
            modules = {m.removesuffix(".py").removesuffix("/") for m in names}
            rows[row[1]] = (row[2], modules)
    return rows


def test_the_chapter_tables_agree_with_each_other_and_with_the_chapters():
    """The home page and chapter 1 list the chapters alike, and each row names the
    modules that the chapter's library blocks go into."""
    home = _chapter_table(ROOT / "docs" / "index.md")
    plan = _chapter_table(ROOT / "docs" / "01-introduction.md")
    assert len(home) >= 14
    assert {
        page: row for page, row in home.items() if page != "01-introduction.md"
    } == plan
    listed = set(home)
    for chapter in CHAPTERS:
        targets = [  # a module, or the package a module is in
            package or module
            for package, module in re.findall(
                r"<!--tangle: src/llmbook/(?:(\w+)/)?(\w+)\.py-->", chapter.read_text()
            )
        ]
        if chapter.name in listed:
            assert home[chapter.name][1] == set(targets), chapter.name
        elif chapter.name not in {"index.md", "notebooks.md"}:
            pytest.fail(f"the home page's table leaves out {chapter.name}")


def fake_setup(
    tmp_path: Path,
    env: dict[str, str],
    uv_status: int | None = None,
    command: str = "test",
):
    """Run `tools/book.sh COMMAND` in a copy of the repository whose .venv is a
    fake: its `python` logs its arguments and has no torch, its `ruff` and `mypy`
    log theirs, and its `uv` (absent when `uv_status` is None) logs its arguments
    and exits with `uv_status`. Returns the finished process and the logged
    commands."""
    import os
    import subprocess

    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "book.sh").write_text(
        (ROOT / "tools" / "book.sh").read_text()
    )
    (tmp_path / "the-verdict.txt").write_text("")
    bin_ = tmp_path / ".venv" / "bin"
    bin_.mkdir(parents=True)
    log = tmp_path / "calls.log"
    (bin_ / "python").write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" >> "{log}"\n'
        'case "$*" in "-c import torch") exit 1;; esac\n'
        'case "$*" in "-m pytest"*)\n'
        f'  echo "env $OMP_NUM_THREADS $GLIBC_TUNABLES" >> "{log}";; esac\n'
    )
    for tool in ["ruff", "mypy"]:
        (bin_ / tool).write_text(f'#!/bin/sh\nprintf "{tool} %s\\n" "$*" >> "{log}"\n')
    if uv_status is not None:
        (bin_ / "uv").write_text(
            f'#!/bin/sh\nprintf "uv %s\\n" "$*" >> "{log}"\nexit {uv_status}\n'
        )
    for script in bin_.iterdir():
        script.chmod(0o755)
    done = subprocess.run(
        ["bash", str(tmp_path / "tools" / "book.sh"), command],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return done, calls


def test_the_workflows_environment_installs_torch_from_its_index(tmp_path):
    import yaml
    from packaging.requirements import Requirement

    workflow = yaml.safe_load((ROOT / ".github/workflows/tests.yml").read_text())
    step = next(
        s
        for s in workflow["jobs"]["test"]["steps"]
        if "book.sh test" in s.get("run", "")
    )
    done, calls = fake_setup(tmp_path, step["env"])
    assert done.returncode == 0, done.stderr
    install = next(c for c in calls if c.startswith("-m pip install") and "-e" not in c)
    words = install.split()
    # pip's own reading of a requirement: the old value "torch --index-url URL" was
    # one word for pip, an "Invalid requirement"
    assert Requirement(words[-1]).name == "torch"
    assert (
        words[words.index("--index-url") + 1] == step["env"]["LLMBOOK_TORCH_INDEX_URL"]
    )


@pytest.mark.parametrize(
    "installer, uv_status, tools_by",
    [("", 0, "uv"), ("", 1, "pip"), ("pip", 0, "pip")],
    ids=["uv", "pip-when-uv-fails", "pip-when-asked"],
)
def test_uv_installs_the_tools_and_pip_takes_over_when_it_cannot(
    tmp_path, installer, uv_status, tools_by
):
    env = {"LLMBOOK_INSTALLER": installer} if installer else {}
    done, calls = fake_setup(tmp_path, env, uv_status=uv_status)
    assert done.returncode == 0, done.stderr
    by_uv = "uv pip install --quiet --python .venv/bin/python -e .[test]"
    by_pip = "-m pip install --quiet -e .[test]"
    assert "-m pip install --quiet torch" in calls  # PyTorch: always pip
    assert (by_uv in calls) == (installer != "pip")
    assert (by_pip in calls) == (tools_by == "pip")
    assert ("pip does it instead" in done.stderr) == (uv_status != 0)


def test_pytest_runs_one_thread_a_process_and_keeps_freed_memory(tmp_path):
    done, calls = fake_setup(tmp_path, {}, uv_status=0)
    assert done.returncode == 0, done.stderr
    run = next(c for c in calls if c.startswith("-m pytest"))
    assert run.split()[2:7] == [
        "-n",
        "auto",
        "--dist",
        "loadfile",
        "--no-loadscope-reorder",
    ]
    threads, tunables = calls[calls.index(run) + 1].split()[1:]
    assert threads == "1"  # exported: the tests' subprocesses inherit it
    assert "glibc.malloc.trim_threshold=1073741824" in tunables


def test_an_option_inside_the_torch_requirement_is_refused_before_pip(tmp_path):
    done, calls = fake_setup(
        tmp_path, {"LLMBOOK_TORCH": "torch --index-url https://example.org/whl"}
    )
    assert done.returncode == 2
    assert "LLMBOOK_TORCH_INDEX_URL" in done.stderr
    assert not any(c.startswith("-m pip") for c in calls)


def test_the_run_starts_with_the_longest_pages_and_keeps_every_file_whole(request):
    """The order that conftest.py gives the run (the one `pytest -n` dispatches in):
    chapters 8 and 9 first, then the other pages, a page after the pages whose files it
    reads, then the test modules, the long ones first; every file in one piece
    (`--dist loadfile` keeps a file on one worker, in this order)."""
    root = next(  # the repository's conftest.py, a plugin of this run
        plugin
        for plugin in request.config.pluginmanager.get_plugins()
        if getattr(plugin, "__file__", None) == str(ROOT / "conftest.py")
    )
    items = request.session.items
    order = [item.path.name for item in items]
    runs = [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name]
    assert len(runs) == len(set(runs))  # no file comes back after another
    if set(root.LONGEST_PAGES) <= set(runs):
        assert runs[:2] == root.LONGEST_PAGES
    for page, needs in root.PAGE_NEEDS.items():
        for need in needs:
            if page in runs and need in runs:
                assert runs.index(need) < runs.index(page)
    pages = [name.endswith(".md") for name in runs]
    assert pages == sorted(pages, reverse=True)  # every page before every module
    modules = [name for name in runs if not name.endswith(".md")]
    long = [name in root.LONG_MODULES for name in modules]
    assert long == sorted(long, reverse=True)


def test_fix_regenerates_code_figures_notebooks_and_formatting_in_order(tmp_path):
    """The notebooks come after the figures, which they carry (issue 39)."""
    done, calls = fake_setup(tmp_path, {}, command="fix")
    assert done.returncode == 0, done.stderr
    steps = [c for c in calls if c.startswith(("tools/", "ruff"))]
    assert steps == [
        "tools/tangle.py",
        "tools/figures.py",
        "tools/notebooks.py",
        "ruff check --fix --quiet src tools tests bench conftest.py",
        "ruff format --quiet src tools tests bench conftest.py",
    ]
