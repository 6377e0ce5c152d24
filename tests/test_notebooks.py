"""The chapters' notebooks (tools/notebooks.py): made from the pages, never drifting
from them, and running in Jupyter with the outputs the pages show."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools import notebooks

ROOT = Path(__file__).resolve().parent.parent

PAGE = """\
# 9. A chapter

Some prose with a [link](05-attention.md#masks), a [reference](references.md#x) and a
figure ![plot](figures/gelu-relu.svg).

## 9.1 Code

<!--tangle: src/llmbook/thing.py-->
```python
def double(x):
    return 2 * x
```

```python
print(1)
```

<!--pytest-codeblocks:cont-->
```python
print(2)
```

<!--pytest-codeblocks:expected-output-->
```
1
2
```

<!--pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="GPU")-->
```python
print("on the GPU")
```

```console
$ llmbook --help
```

## Exercises

### Exercise 9.1: Double

Double 21.

??? success "Solution"

    ```python
    print(2 * 21)
    ```

    <!--pytest-codeblocks:expected-output-->
    ```
    42
    ```
"""


def _code(cells: list[notebooks.Cell]) -> list[notebooks.Cell]:
    return [cell for cell in cells if cell.kind == "code"]


def test_a_page_becomes_prose_cells_and_code_cells_with_their_outputs():
    cells = notebooks.cells_of(PAGE, "page.md")
    assert [cell.kind for cell in cells][:2] == ["markdown", "markdown"]
    site = notebooks.site_url()
    assert f"]({site}05-attention/#masks)" in cells[0].source
    assert f"]({site}references/#x)" in cells[0].source
    # a figure that no cell of this page draws travels inside the notebook
    assert "](attachment:gelu-relu.svg)" in cells[0].source
    assert cells[0].attachments["gelu-relu.svg"].startswith("<?xml")
    library, first, second, gpu, solution = _code(cells)
    assert library.source.startswith("# Library code: src/llmbook/thing.py\n")
    assert library.tags == ["library"] and library.output is None
    assert (first.output, second.output) == (None, "1\n2")  # the chain's last cell
    assert second.tags == ["continued"]
    assert gpu.tags == ["gpu"] and gpu.source.startswith(notebooks.GPU_NOTE)
    assert solution.tags == ["solution"] and solution.hidden
    assert solution.source == "print(2 * 21)" and solution.output == "42"
    prose = "\n".join(cell.source for cell in cells if cell.kind == "markdown")
    assert "$ llmbook --help" in prose  # commands stay text
    assert "**Solution**" in prose and "???" not in prose and "<!--" not in prose
    assert "### Exercise 9.1: Double" in prose


def test_figures_are_in_the_notebooks_not_on_the_site():
    """Issue 39: the notebooks' figures were images on the published site (blank
    offline), chapter 1's notebook had no outputs, and its figure cells printed a
    stray `Text(7.0, 1.8, ...)` in Jupyter."""
    made = notebooks.render()
    shown = 0
    for name, text in made.items():
        nb = json.loads(text)
        for cell in nb["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "markdown":
                assert "figures/" not in source, (name, source[:80])
            elif "figure" in cell["metadata"].get("tags", []):
                assert source.endswith("\nplt.show()"), name
                kinds = [output["output_type"] for output in cell["outputs"]]
                assert kinds[-1] == "display_data", name
                shown += 1
    assert shown >= 20
    intro = json.loads(made["01-introduction.ipynb"])
    assert any(cell.get("outputs") for cell in intro["cells"])


def test_notebooks_match_the_chapters():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "notebooks.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_every_chapter_with_code_has_a_notebook_that_jupyter_reads():
    nbformat = pytest.importorskip("nbformat")
    made = notebooks.render()
    for page in notebooks.chapter_pages():
        if "```python" in page.read_text(encoding="utf-8"):
            assert f"{page.stem}.ipynb" in made, page.name
    for name, text in made.items():
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
        setup = [c for c in nb.cells if "setup" in c.metadata.get("tags", [])]
        assert len(setup) == 1, name
        assert "pip" in setup[0].source and notebooks.repo_url() in setup[0].source
    exercises = json.loads(made[notebooks.EXERCISES])
    solutions = [
        c for c in exercises["cells"] if "solution" in c["metadata"].get("tags", [])
    ]
    assert len(solutions) >= 30  # every chapter's exercises are there


def test_drift_is_reported(tmp_path, monkeypatch, capsys):
    nb_dir = tmp_path / notebooks.OUT_DIR
    nb_dir.mkdir(parents=True)
    (tmp_path / "mkdocs.yml").write_text((ROOT / "mkdocs.yml").read_text())
    monkeypatch.setattr(notebooks, "ROOT", tmp_path)
    assert notebooks.main(["--check"]) == 1  # nothing written yet
    assert "differs from the chapters" in capsys.readouterr().err
    assert notebooks.main([]) == 0
    assert notebooks.main(["--check"]) == 0
    first = sorted(nb_dir.glob("0*.ipynb"))[0]
    first.write_text(first.read_text().replace("Library code", "Library c0de"))
    (nb_dir / "stale.ipynb").write_text("{}")
    assert notebooks.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert first.name in err and "stale.ipynb has no chapter" in err


def _stdout(cell) -> str:
    return "".join(
        out.get("text", "")
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream" and out.get("name") == "stdout"
    )


# The notebook that runs in Jupyter: one chapter's is enough, since every notebook is
# made by the same code from its page (checked above) and the pages' snippets print
# their outputs in the book's own tests; this one has a cell of every kind.
RUN_CHAPTER = "05-attention"
CELL_KINDS = {"setup", "library", "continued", "figure", "solution"}


def test_a_chapter_notebook_runs_and_prints_what_the_page_shows(tmp_path):
    """Run the notebook in a Jupyter kernel, in an empty folder (the setup cell fetches
    the story), without the cells that need a GPU where there is none; each cell with a
    stored output must print it again (a chain of cells prints into its last one)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    import torch

    nb = nbformat.read(ROOT / notebooks.OUT_DIR / f"{RUN_CHAPTER}.ipynb", as_version=4)
    kinds = {tag for cell in nb.cells for tag in cell.metadata.get("tags", [])}
    assert kinds >= CELL_KINDS, f"{RUN_CHAPTER} lacks cells of {CELL_KINDS - kinds}"
    if not torch.cuda.is_available():
        nb.cells = [c for c in nb.cells if "gpu" not in c.metadata.get("tags", [])]
    stored = [_stdout(cell) for cell in nb.cells]
    assert sum(bool(text) for text in stored) >= 5
    client = nbclient.NotebookClient(
        nb, timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    printed = ""
    for cell, expected in zip(nb.cells, stored, strict=True):
        if cell.cell_type != "code":
            continue
        if "continued" not in cell.metadata.get("tags", []):
            printed = ""
        printed += _stdout(cell)
        if expected:
            assert printed.strip() == expected.strip(), cell.source
    assert (tmp_path / "the-verdict.txt").is_file()
