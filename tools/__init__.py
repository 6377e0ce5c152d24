"""The book's tools: the tangler, the notebooks, the figures and the MkDocs hooks.

Each runs as a script (`python tools/tangle.py`) and imports as a module of this
package from the repository's root (`from tools import tangle`), as the tests do.
"""
