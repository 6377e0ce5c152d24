"""tools/conventions.py: the one reader of the book's Markdown conventions."""

import textwrap

from tools import conventions, mkdocs_hooks

PAGE = textwrap.dedent(
    """\
    # A page

    <!--pytest-codeblocks:cont-->
    <!--tangle: src/llmbook/x.py-->
    ```python
    X = 1
    ```

    <!--pytest-codeblocks:expected-output-->

    ```
    1
    ```

    <!--figure: figures/x.svg-->
    Some prose between a marker and a fence: the marker is not the fence's.

    ```python
    print("no marker")
    ```

    ??? success "Solution"

        <!--pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")-->
        ```python
        if True:
            y = 2
        ```

    ````markdown
    ```python
    inside = "a fence in a fence"
    ```
    ````

    ```python
    never = "closed"
    """
)


def test_blocks_come_with_the_markers_just_above_them():
    blocks = conventions.blocks(PAGE)
    assert [b.line for b in blocks] == [5, 11, 18, 25, 30, 36]
    tangled, output, plain, gpu, nested, unclosed = blocks
    assert tangled.marker("tangle") == "src/llmbook/x.py"
    assert tangled.marked("pytest-codeblocks:cont") and tangled.code == "X = 1"
    assert [m.line for m in tangled.markers] == [3, 4]
    assert output.is_output and output.language == "" and output.code == "1"
    assert plain.markers == () and plain.marker("figure") is None
    assert gpu.needs_gpu and gpu.indent == "    "
    assert gpu.code == "if True:\n    y = 2"  # without the admonition's indentation
    assert nested.ticks == "````" and "a fence in a fence" in nested.code
    assert nested.end == 34
    assert unclosed.end is None and unclosed.code == 'never = "closed"\n'


def test_markers_are_found_wherever_they_are():
    bodies = [m.body for m in conventions.markers(PAGE)]
    assert bodies[:4] == [
        "pytest-codeblocks:cont",
        "tangle: src/llmbook/x.py",
        "pytest-codeblocks:expected-output",
        "figure: figures/x.svg",
    ]


def test_a_tangled_block_that_continues_is_titled_with_its_file():
    """Both marks above one fence: the title names the library file (the hooks once
    titled chapter 2's files.py block "Continues the code above" instead)."""
    out = mkdocs_hooks.on_page_markdown(PAGE)
    assert '```python title="src/llmbook/x.py"\nX = 1' in out
    assert '```{.text .output title="Output"}\n1' in out
    assert '    ```python title="Needs a CUDA GPU (skipped on CPU)"' in out
    assert "<!--tangle" not in out and "expected-output" not in out
    assert "<!--figure: figures/x.svg-->" in out  # not a mark the hooks act on
